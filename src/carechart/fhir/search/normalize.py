"""Value normalisation shared by extraction (write) and querying (read).

String matching per http://hl7.org/fhir/R4/search.html §3.1.1.5.7 "string" is case- and
accent-insensitive; dates per §3.1.1.5.1 "date" are ranges given by their precision.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta

__all__ = ["DateRange", "normalize_text", "parse_date", "phone_digits", "soundex"]


def normalize_text(value: str) -> str:
    """Casefolded, accent-stripped, whitespace-collapsed text ("Érdős  Pál" -> "erdos pal")."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def phone_digits(value: str) -> str:
    """A phone number as its digits (and a leading +): "+1 (555) 123-4567" -> "+15551234567"."""
    digits = "".join(ch for ch in value if ch.isdigit())
    return ("+" + digits) if value.strip().startswith("+") else digits


_SOUNDEX = {
    **dict.fromkeys("bfpv", "1"),
    **dict.fromkeys("cgjkqsxz", "2"),
    **dict.fromkeys("dt", "3"),
    "l": "4",
    **dict.fromkeys("mn", "5"),
    "r": "6",
}


def soundex(value: str) -> str:
    """American Soundex of the first word ("Robert" and "Rupert" -> "r163"); "" if no letter."""
    letters = [ch for ch in normalize_text(value) if "a" <= ch <= "z"]
    if not letters:
        return ""
    out, last = [letters[0]], _SOUNDEX.get(letters[0], "")
    for ch in letters[1:]:
        code = _SOUNDEX.get(ch, "")
        if code and code != last:
            out.append(code)
        if ch not in "hw":
            last = code
    return ("".join(out) + "000")[:4]


_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_EPOCH = date(1970, 1, 1).toordinal()
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class DateRange:
    """An inclusive range of UTC epoch milliseconds: the whole span a value's precision covers
    ("2020-03" is 2020-03-01T00:00:00.000 .. 2020-03-31T23:59:59.999)."""

    low: int
    high: int


def parse_date(text: str) -> DateRange | None:
    """Parse a FHIR date, dateTime or instant (or a search date value); None if malformed.

    A time without a zone is read as UTC (search.html §3.1.1.5.1: the server's zone).
    """
    m = _DATE.fullmatch(text.strip())
    if m is None:
        return None
    year = int(m["y"])
    month = int(m["m"] or 1)
    day = int(m["d"] or 1)
    try:
        start_day = date(year, month, day)
    except ValueError:
        return None
    low_day = start_day.toordinal() - _EPOCH
    if m["d"] is None:
        span_days = (
            (366 if calendar.isleap(year) else 365)
            if m["m"] is None
            else calendar.monthrange(year, month)[1]
        )
        return DateRange(low_day * _DAY_MS, (low_day + span_days) * _DAY_MS - 1)
    if m["H"] is None:
        return DateRange(low_day * _DAY_MS, (low_day + 1) * _DAY_MS - 1)
    hour, minute, second = int(m["H"]), int(m["M"]), int(m["S"] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    offset = 0
    if m["tz"] and m["tz"] != "Z":
        sign = -1 if m["tz"][0] == "-" else 1
        offset = sign * (int(m["tz"][1:3]) * 60 + int(m["tz"][4:6])) * 60_000
    low = low_day * _DAY_MS + ((hour * 60 + minute) * 60 + second) * 1000 - offset
    if m["S"] is None:
        return DateRange(low, low + 60_000 - 1)
    fraction = m["f"] or ""
    if not fraction:
        return DateRange(low, low + 999)
    digits = min(len(fraction), 3)
    unit = 10 ** (3 - digits)
    low += int(fraction[:digits]) * unit
    return DateRange(low, low + unit - 1)


def days_ms(days: float) -> int:
    return int(timedelta(days=days).total_seconds() * 1000)
