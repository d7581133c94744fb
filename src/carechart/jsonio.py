"""JSON in and out, keeping what FHIR needs kept.

FHIR JSON (http://hl7.org/fhir/R4/json.html): decimals keep their precision ("1.50" stays
"1.50"), so numbers with a fraction or exponent parse to ``decimal.Decimal``; duplicate keys,
NaN and Infinity are not JSON FHIR accepts.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from carechart.errors import BadRequest


class JsonError(BadRequest):
    """The body is not acceptable JSON."""


class JsonDecimal(Decimal):
    """A decimal that remembers the text it was read from, so it is written back verbatim
    (``Decimal("0.0000000")`` alone would print as ``0E-7``)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> JsonDecimal:
        value = super().__new__(cls, text)
        value.text = text
        return value


def _reject_constant(name: str) -> Any:
    raise JsonError(f"JSON value {name} is not allowed")


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError(f"duplicate JSON property {key!r}")
            seen.add(key)
    return result


_decoder = json.JSONDecoder(
    parse_float=JsonDecimal, parse_constant=_reject_constant, object_pairs_hook=_pairs_to_dict
)


def nesting_depth(value: Any) -> int:
    """Deepest level of objects/arrays, computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, (dict, list))
            )
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return deepest


def loads(data: bytes | str, *, max_depth: int = 64) -> Any:
    """Parse JSON text; any problem raises :class:`JsonError` (a 400), never anything else."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JsonError(f"body is not valid UTF-8 (byte {exc.start})") from None
    else:
        text = data
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise JsonError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise JsonError(f"JSON nesting deeper than {max_depth} levels") from None
    except ValueError as exc:
        # e.g. an integer literal past Python's digit limit, or an invalid number
        raise JsonError(f"malformed JSON: {exc}") from None
    if nesting_depth(value) > max_depth:
        raise JsonError(f"JSON nesting deeper than {max_depth} levels")
    return value


def _default(value: Any) -> Any:
    if isinstance(value, JsonDecimal):
        return orjson.Fragment(value.text)
    if isinstance(value, Decimal):
        # Computed decimals: positional notation keeps every significant digit.
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(value, default=_default, option=option)
