"""SMART on FHIR resource scopes (SMART App Launch v2, scopes-and-launch-context.html).

v2 grammar: ``(patient|user|system)/(Type|*).[c][r][u][d][s]`` with the letters in that
order; v1 suffixes are read as their v2 equivalents (``read`` = ``rs``, ``write`` = ``cud``,
``*`` = ``cruds``). Scopes carrying search constraints (``?category=...``) are not honoured
yet and grant nothing: refusing more than asked is safe, granting more is not (B7).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Context = Literal["patient", "user", "system"]

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)$")
_V2_LETTERS = re.compile(r"^c?r?u?d?s?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True, slots=True)
class ResourceScope:
    context: Context
    resource_type: str  # or "*"
    letters: str

    def covers(self, resource_type: str, letter: str) -> bool:
        return self.resource_type in ("*", resource_type) and letter in self.letters


def parse_scope(scope: str) -> ResourceScope | None:
    """A resource scope, or None for anything else (openid, launch/patient, granular, junk)."""
    match = _SCOPE.fullmatch(scope)
    if match is None:
        return None
    context, resource_type, action = match.groups()
    letters = _V1.get(action, action)
    if not letters or not _V2_LETTERS.fullmatch(letters):
        return None
    return ResourceScope(context, resource_type, letters)  # type: ignore[arg-type]


def parse_scopes(scopes: Iterable[str]) -> tuple[ResourceScope, ...]:
    return tuple(parsed for s in scopes if (parsed := parse_scope(s)) is not None)


def letters_for(
    scopes: Iterable[ResourceScope], resource_type: str, contexts: Iterable[Context]
) -> str:
    """The letters the scopes of the given contexts grant on ``resource_type``."""
    wanted = set(contexts)
    granted = {
        letter
        for scope in scopes
        if scope.context in wanted and scope.resource_type in ("*", resource_type)
        for letter in scope.letters
    }
    return "".join(letter for letter in "cruds" if letter in granted)
