"""Reference ranges as labs write them (HL7 v2 OBX-7, v2.5.1 section 7.4.2.7).

Accepted shapes: ``70-100``, ``3.5 - 5.1 mmol/L``, ``0.5 to 1.0``, ``-2 - 2``, ``<5.0``,
``<=5``, ``> 40``, ``>=40`` (and the ``≤``/``≥`` signs), and qualitative normals such as
``negative``, ``Non-reactive``, ``Not detected``. The scanner is hand-written (no
regular expressions) so it is linear in the input. Maps to FHIR
``Observation.referenceRange`` (https://hl7.org/fhir/R4/observation.html#ObservationReferenceRange).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from carechart.labs.units import normalize_unit

MAX_RANGE_TEXT = 200

# Qualitative normals, keyed by a normalised spelling (lower case, no spaces or hyphens).
QUALITATIVE_NORMALS = {
    "negative": "negative",
    "neg": "negative",
    "nonreactive": "non-reactive",
    "notreactive": "non-reactive",
    "notdetected": "not detected",
    "nonedetected": "not detected",
    "undetected": "not detected",
    "absent": "absent",
    "normal": "normal",
    "none": "none",
}


def qualitative_key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


@dataclass(frozen=True, slots=True)
class ReferenceRange:
    """A parsed range. Bounds are ``None`` when open; ``*_inclusive`` says whether the
    bound value itself is normal (``<5`` excludes 5, ``<=5`` and ``3-5`` include it)."""

    text: str
    low: Decimal | None = None
    high: Decimal | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    unit: str | None = None
    qualitative: str | None = None

    @property
    def is_numeric(self) -> bool:
        return self.low is not None or self.high is not None

    def contains(self, value: Decimal) -> bool:
        if self.low is not None and (
            value < self.low or (value == self.low and not self.low_inclusive)
        ):
            return False
        return not (
            self.high is not None
            and (value > self.high or (value == self.high and not self.high_inclusive))
        )

    def to_fhir(self, unit: str | None = None) -> dict[str, Any]:
        """FHIR referenceRange; ``unit`` (the result's unit) fills in a unit-less range."""
        out: dict[str, Any] = {"text": self.text}
        code = self.unit or normalize_unit(unit)
        for key, bound in (("low", self.low), ("high", self.high)):
            if bound is None:
                continue
            quantity: dict[str, Any] = {"value": bound}
            if code:
                quantity.update(unit=code, system="http://unitsofmeasure.org", code=code)
            out[key] = quantity
        return out


def _number_prefix(text: str, pos: int) -> tuple[Decimal, int] | None:
    """Parse a decimal number starting at ``pos``; returns it and the index after it."""
    start = pos
    n = len(text)
    if pos < n and text[pos] in "+-\u2212":
        pos += 1
    digits_start = pos
    seen_dot = False
    while pos < n and (
        (text[pos].isdigit() and text[pos].isascii()) or (text[pos] == "." and not seen_dot)
    ):
        seen_dot = seen_dot or text[pos] == "."
        pos += 1
    body = text[digits_start:pos]
    if not body or body == "." or not any(c.isdigit() for c in body):
        return None
    sign = "-" if text[start] in "-\u2212" else ""
    try:
        return Decimal(sign + body), pos
    except InvalidOperation:  # pragma: no cover - the loop admits only digits and one dot
        return None


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


_OPERATORS = (
    ("<=", "high", True),
    ("=<", "high", True),
    ("\u2264", "high", True),
    (">=", "low", True),
    ("=>", "low", True),
    ("\u2265", "low", True),
    ("<", "high", False),
    (">", "low", False),
)


def _unit(rest: str) -> str | None:
    rest = rest.strip()
    return normalize_unit(rest) if rest else None


def parse_reference_range(text: str | None) -> ReferenceRange | None:
    """Parse ``text``; ``None`` when it is not a range we understand (never guesses)."""
    if text is None:
        return None
    original = text.strip()
    if not original or len(original) > MAX_RANGE_TEXT:
        return None
    qual = QUALITATIVE_NORMALS.get(qualitative_key(original))
    if qual is not None:
        return ReferenceRange(text=original, qualitative=qual)
    pos = _skip_spaces(original, 0)
    for op, side, inclusive in _OPERATORS:
        if original.startswith(op, pos):
            parsed = _number_prefix(original, _skip_spaces(original, pos + len(op)))
            if parsed is None:
                return None
            value, end = parsed
            unit = _unit(original[end:])
            if side == "high":
                return ReferenceRange(original, high=value, high_inclusive=inclusive, unit=unit)
            return ReferenceRange(original, low=value, low_inclusive=inclusive, unit=unit)
    first = _number_prefix(original, pos)
    if first is None:
        return None
    low, end = first
    pos = _skip_spaces(original, end)
    if original.startswith(("-", "\u2013", "\u2212"), pos):
        pos += 1
    elif original[pos : pos + 2].lower() == "to":
        pos += 2
    else:
        return None
    second = _number_prefix(original, _skip_spaces(original, pos))
    if second is None:
        return None
    high, end = second
    if high < low:
        return None
    return ReferenceRange(original, low=low, high=high, unit=_unit(original[end:]))
