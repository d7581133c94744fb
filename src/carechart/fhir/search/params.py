"""Parsing of search parameter values: escapes, OR lists, prefixes and typed values.

http://hl7.org/fhir/R4/search.html §3.1.1.4 "Escaping Search Parameters" (``\\,`` ``\\|``
``\\$`` ``\\\\``), §3.1.1.5.1 "prefix" (eq ne gt lt ge le sa eb ap), §3.1.1.5.3 "number"
(implicit precision), §3.1.1.5.4 "quantity", §3.1.1.5.5 "token" ([system]|[code]).
Invalid values raise :class:`BadRequest` naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from carechart.errors import BadRequest
from carechart.fhir.search.normalize import DateRange, parse_date

__all__ = [
    "PREFIXES",
    "NumberValue",
    "QuantityValue",
    "TokenValue",
    "parse_date_value",
    "parse_number",
    "parse_quantity",
    "parse_token",
    "split_escaped",
    "split_prefix",
    "unescape",
]

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` except where escaped by a backslash, then unescape each part."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            if nxt == sep:
                current.append(nxt)
            else:
                current.append(ch + nxt)
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    out, chars = [], iter(value)
    for ch in chars:
        out.append(next(chars, "") if ch == "\\" else ch)
    return "".join(out)


def split_prefix(value: str) -> tuple[str, str]:
    """("ge", "2020") from "ge2020"; ("eq", v) when there is no prefix."""
    head = value[:2]
    if head in PREFIXES and len(value) > 2 and (value[2].isdigit() or value[2] in "-+."):
        return head, value[2:]
    return "eq", value


def parse_date_value(name: str, value: str) -> DateRange:
    parsed = parse_date(value)
    if parsed is None:
        raise BadRequest(
            f"search parameter {name}: {value!r} is not a date "
            "(expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.sss]][Z|±hh:mm])"
        )
    return parsed


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A search number: its exact value and the range its precision implies
    ("100" is [99.5, 100.5), §3.1.1.5.3)."""

    exact: float
    low: float
    high: float


def parse_number(name: str, text: str) -> NumberValue:
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or text.strip() != text or not text:
        raise BadRequest(f"search parameter {name}: {text!r} is not a number")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return NumberValue(float(number), float(number - half), float(number + half))


@dataclass(frozen=True, slots=True)
class QuantityValue:
    number: NumberValue
    system: str | None
    code: str | None


def parse_quantity(name: str, text: str) -> QuantityValue:
    """``number``, ``number|system|code`` or ``number||code`` (code matches code or unit)."""
    parts = split_escaped(text, "|")
    if len(parts) not in (1, 3):
        raise BadRequest(
            f"search parameter {name}: {text!r} must be [prefix]number or [prefix]number|system|code"
        )
    number = parse_number(name, parts[0])
    if len(parts) == 1:
        return QuantityValue(number, None, None)
    return QuantityValue(number, unescape(parts[1]) or None, unescape(parts[2]) or None)


@dataclass(frozen=True, slots=True)
class TokenValue:
    """``code`` (any system), ``system|code``, ``|code`` (no system) or ``system|``."""

    #: None: any system; "": no system.
    system: str | None
    code: str | None


def parse_token(name: str, text: str) -> TokenValue:
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return TokenValue(None, unescape(parts[0]))
    if len(parts) != 2:
        raise BadRequest(
            f"search parameter {name}: a token is [system]|[code], with at most one '|'"
        )
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise BadRequest(f"search parameter {name}: '|' needs a system or a code")
    return TokenValue(system, code or None)
