"""``_include`` and ``_revinclude`` (http://hl7.org/fhir/R4/search.html §3.1.1.6.4
"Including other resources in result"), answered from the reference index.

``_include=Source:param[:Target]`` adds the resources the matches reference through
``param``; ``_include=*`` (or ``Source:*``) through every reference parameter;
``_revinclude=Source:param[:Target]`` adds the ``Source`` resources that reference a match.
The ``:iterate`` modifier (R4; STU3's ``:recurse`` is accepted as a synonym) applies a
specification to included resources too, for at most :data:`MAX_ROUNDS` rounds. Deleted
resources are never included. The caller applies access control to what comes back
(SECURITY B3): this module finds candidates for inclusion, it does not authorise them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.crypto.keys import KeyRing
from carechart.db.schema import resource
from carechart.db.search_schema import search_reference
from carechart.errors import BadRequest
from carechart.fhir.definitions import load_definitions
from carechart.fhir.search.extract import plan_for

__all__ = [
    "MAX_ROUNDS",
    "IncludeSpec",
    "includes",
    "parse_include",
    "parse_include_params",
]

#: Rounds of ``:iterate`` after the first (the matches) one: the include depth limit (E5).
MAX_ROUNDS = 3
_CHUNK = 500
_NAMES = {"_include": False, "_revinclude": True}
_ITERATE = ("iterate", "recurse")


@dataclass(frozen=True, slots=True)
class IncludeSpec:
    """One ``_include``/``_revinclude`` value."""

    #: The resource type holding the reference (for _revinclude, the type added).
    source_type: str
    #: The reference parameter; None for ``*`` (every reference parameter, _include only).
    code: str | None
    #: Only references to this type (the optional third part); None: any.
    target_type: str | None
    iterate: bool
    reverse: bool


def parse_include(name: str, value: str) -> IncludeSpec:
    """Parse one ``_include[:iterate]`` or ``_revinclude[:iterate]`` parameter; a malformed
    one raises :class:`BadRequest` saying what is wrong."""
    base, _, modifier = name.partition(":")
    if base not in _NAMES:
        raise BadRequest(f"{name} is not _include or _revinclude")
    if modifier and modifier not in _ITERATE:
        raise BadRequest(f"{name}: the only modifier is :iterate")
    reverse = _NAMES[base]
    iterate = bool(modifier)
    if value == "*" and not reverse:
        return IncludeSpec("*", None, None, iterate, reverse)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadRequest(f"{base}={value!r}: expected SourceType:parameter[:TargetType]")
    definitions = load_definitions()
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not definitions.is_resource_type(source):
        raise BadRequest(f"{base}={value!r}: {source} is not a resource type")
    if code == "*":
        if reverse:
            raise BadRequest(f"{base}={value!r}: _revinclude needs a parameter, not *")
        return IncludeSpec(source, None, target, iterate, reverse)
    plan = plan_for(source).get(code)
    if plan is None or plan.type != "reference":
        raise BadRequest(f"{base}={value!r}: {code} is not a reference parameter of {source}")
    if target is not None:
        allowed = plan.definition.target
        if not definitions.is_resource_type(target) or (allowed and target not in allowed):
            raise BadRequest(f"{base}={value!r}: {target} is not a target type of {code}")
    return IncludeSpec(source, code, target, iterate, reverse)


def parse_include_params(
    params: Iterable[tuple[str, str]],
) -> tuple[list[IncludeSpec], list[IncludeSpec]]:
    """The ``_include`` and ``_revinclude`` specifications among raw query parameters."""
    found: tuple[list[IncludeSpec], list[IncludeSpec]] = ([], [])
    for name, value in params:
        base = name.partition(":")[0]
        if base in _NAMES:
            spec = parse_include(name, value)
            found[1 if spec.reverse else 0].append(spec)
    return found


def includes(
    conn: Connection,
    keyring: KeyRing,
    tenant: str,
    resource_type: str,
    match_ids: Sequence[str],
    include_specs: Sequence[IncludeSpec],
    revinclude_specs: Sequence[IncludeSpec],
    *,
    max_results: int,
) -> list[tuple[str, str]]:
    """(type, id) of the resources to include with the matches ``match_ids`` (of
    ``resource_type``), in discovery order, without the matches themselves, at most
    ``max_results``. Non-iterate specifications apply to the matches, iterate ones to the
    matches and then to what each round added, for :data:`MAX_ROUNDS` rounds."""
    del keyring  # the reference index is plaintext: no blind tokens to compute
    for spec in include_specs:
        if not spec.iterate and spec.source_type not in ("*", resource_type):
            raise BadRequest(
                f"_include={spec.source_type}:{spec.code or '*'} starts from "
                f"{spec.source_type}, not the {resource_type} searched; use _include:iterate"
            )
    seen: set[tuple[str, str]] = {(resource_type, rid) for rid in match_ids}
    found: list[tuple[str, str]] = []
    frontier: dict[str, list[str]] = {resource_type: list(dict.fromkeys(match_ids))}
    specs = [*include_specs, *revinclude_specs]
    for round_no in range(MAX_ROUNDS + 1):
        active = specs if round_no == 0 else [s for s in specs if s.iterate]
        if not active or not frontier:
            break
        added: dict[str, list[str]] = {}
        for spec in active:
            for pair in _apply(conn, tenant, spec, frontier):
                if pair in seen:
                    continue
                seen.add(pair)
                found.append(pair)
                added.setdefault(pair[0], []).append(pair[1])
                if len(found) >= max_results:
                    return found
        frontier = added
    return found


def _apply(
    conn: Connection, tenant: str, spec: IncludeSpec, frontier: dict[str, list[str]]
) -> list[tuple[str, str]]:
    ref, r = search_reference.c, resource.c
    out: list[tuple[str, str]] = []
    if spec.reverse:
        # Resources of spec.source_type that reference a frontier resource.
        for target_type, ids in frontier.items():
            if spec.target_type not in (None, target_type):
                continue
            for chunk in _chunks(ids):
                query = (
                    sa.select(ref.resource_type, ref.resource_id)
                    .distinct()
                    .join(
                        resource,
                        sa.and_(
                            r.tenant_id == ref.tenant_id,
                            r.resource_type == ref.resource_type,
                            r.id == ref.resource_id,
                        ),
                    )
                    .where(
                        ref.tenant_id == tenant,
                        ref.resource_type == spec.source_type,
                        ref.code == spec.code,
                        ref.target_type == target_type,
                        ref.target_id.in_(chunk),
                        r.deleted == sa.false(),
                    )
                    .order_by(ref.resource_type, ref.resource_id)
                )
                out.extend((t, i) for t, i in conn.execute(query).all())
        return out
    for source_type, ids in frontier.items():
        if spec.source_type not in ("*", source_type):
            continue
        conds = [
            ref.tenant_id == tenant,
            ref.resource_type == source_type,
            ref.grp.is_(None),
            ref.target_id.is_not(None),
            r.deleted == sa.false(),
        ]
        if spec.code is not None:
            conds.append(ref.code == spec.code)
        if spec.target_type is not None:
            conds.append(ref.target_type == spec.target_type)
        for chunk in _chunks(ids):
            query = (
                sa.select(ref.target_type, ref.target_id)
                .distinct()
                .join(
                    resource,
                    sa.and_(
                        r.tenant_id == ref.tenant_id,
                        r.resource_type == ref.target_type,
                        r.id == ref.target_id,
                    ),
                )
                .where(*conds, ref.resource_id.in_(chunk))
                .order_by(ref.target_type, ref.target_id)
            )
            out.extend((t, i) for t, i in conn.execute(query).all())
    return out


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
