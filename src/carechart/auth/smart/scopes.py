"""Which SMART scopes a token gets (SMART App Launch v2 scopes-and-launch-context; SECURITY B7).

Granted = requested ∩ the client's registration ∩ what fits the user. A resource scope is
narrowed to what both allow (``user/*.cruds`` asked by an app registered for ``user/*.rs
user/Observation.c`` becomes those two); v1 suffixes come out as their v2 letters. The role x permission
matrix is not folded in here: the policy point intersects every request with it anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from carechart.access.scopes import ResourceScope, letters_for, parse_scope, parse_scopes
from carechart.auth.principal import Role

LAUNCH = "launch"
LAUNCH_PATIENT = "launch/patient"
OFFLINE_ACCESS = "offline_access"
ONLINE_ACCESS = "online_access"
CONTEXT_SCOPES = frozenset({LAUNCH, LAUNCH_PATIENT})
REFRESH_SCOPES = frozenset({OFFLINE_ACCESS, ONLINE_ACCESS})
NON_RESOURCE_SCOPES = CONTEXT_SCOPES | REFRESH_SCOPES
MAX_SCOPES = 100
# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")


class ScopeError(ValueError):
    """The scope parameter is malformed (not merely unknown scopes, which are dropped)."""


def split_scope(text: str) -> list[str]:
    """The scope tokens of a scope parameter, deduplicated, in order."""
    tokens = [t for t in text.split(" ") if t]
    if len(tokens) > MAX_SCOPES:
        raise ScopeError("too many scopes")
    if any(_SCOPE_TOKEN.fullmatch(t) is None for t in tokens):
        raise ScopeError("a scope contains characters RFC 6749 does not allow")
    return list(dict.fromkeys(tokens))


def render(scope: ResourceScope) -> str:
    return f"{scope.context}/{scope.resource_type}.{scope.letters}"


def is_registrable(scope: str) -> bool:
    """Whether a client registration may list ``scope``."""
    return scope in NON_RESOURCE_SCOPES or parse_scope(scope) is not None


def _narrowed(scope: ResourceScope, allowed: tuple[ResourceScope, ...]) -> list[str]:
    """The intersection of one requested resource scope with the allowed ones: a wildcard
    request meets each allowed type it covers; a typed request meets the allowed letters for
    its type (``*`` included)."""
    if scope.resource_type != "*":
        granted = letters_for(allowed, scope.resource_type, (scope.context,))
        letters = "".join(c for c in scope.letters if c in granted)
        return (
            [render(ResourceScope(scope.context, scope.resource_type, letters))] if letters else []
        )
    result = []
    for other in allowed:
        if other.context != scope.context:
            continue
        letters = "".join(c for c in scope.letters if c in other.letters)
        if letters:
            result.append(render(ResourceScope(scope.context, other.resource_type, letters)))
    return result


def within(requested: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """``requested`` narrowed to ``allowed`` (a registration, or an earlier grant). Context
    scopes are requests for context, always admissible; refresh scopes must be allowed."""
    allowed = list(allowed)
    allowed_resources = parse_scopes(allowed)
    result: list[str] = []
    for scope in requested:
        if scope in CONTEXT_SCOPES:
            result.append(scope)
        elif scope in REFRESH_SCOPES:
            if scope in allowed:
                result.append(scope)
        else:
            parsed = parse_scope(scope)
            if parsed is not None:
                result.extend(_narrowed(parsed, allowed_resources))
    return list(dict.fromkeys(result))


def for_user(scopes: Iterable[str], role: Role, *, patient_context: bool) -> list[str]:
    """What of ``scopes`` fits the signed-in user: a patient gets ``patient/`` scopes only;
    staff get ``user/`` scopes, and ``patient/`` scopes only with a patient in context;
    nobody signing in gets ``system/`` scopes."""
    kept: list[str] = []
    for scope in scopes:
        if scope in NON_RESOURCE_SCOPES:
            if scope == LAUNCH_PATIENT and not patient_context:
                continue
            kept.append(scope)
            continue
        parsed = parse_scope(scope)
        if parsed is None or parsed.context == "system":
            continue
        if parsed.context == "patient" and not patient_context:
            continue
        if parsed.context == "user" and role is Role.patient:
            continue
        kept.append(scope)
    return kept


def has_resource_scope(scopes: Iterable[str]) -> bool:
    return any(parse_scope(s) is not None for s in scopes)


def wants_refresh(scopes: Iterable[str]) -> bool:
    return any(s in REFRESH_SCOPES for s in scopes)


def joined(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))
