"""Search: parameters -> SQL over the index tables -> ordered ids of current resources.

Implements http://hl7.org/fhir/R4/search.html: §3.1.1.5 parameter types (string, token,
date, number, quantity, reference, uri) with their modifiers (§3.1.1.5.x) and prefixes
(§3.1.1.5.1 "prefix"), §3.1.1.3 AND (repeated parameters) and OR (comma lists),
§3.1.1.5.5 ``:missing``, §3.1.1.5.6 ``_id``/``_lastUpdated``/``_tag``/``_profile``/
``_security``/``_source`` (3.1.1.5.x "Parameters for all resources"), §3.1.1.7 "_sort" and
§3.1.1.8 "_count" (plus ``_offset`` for paging), §3.1.1.5.8 composite parameters,
§3.1.1.6 chained parameters (``subject:Patient.name``, ``subject.name``, several links),
§3.1.1.6.1 reverse chaining (``_has``, nested) and the reference ``:identifier`` and
``:below`` modifiers. Deleted resources never match, nor are they chained through.
Chains and ``_has`` are ``IN`` subqueries over the reference index, one SQL statement.

Blind-indexed parameters (PHI, see :mod:`carechart.fhir.search.extract`) match on truncated
HMAC tokens, so their results are *candidates*: a non-matching resource whose value shares
the 32-bit token may be returned (odds in :data:`carechart.fhir.search.indexer.BLIND_BITS`).
A caller that must be exact confirms each candidate against the unsealed body with
:func:`confirm_blind_match`. Blind values reached through a chain (``subject:Patient.name``),
``_has`` or ``:identifier`` are candidates too; :func:`blind_params` lists the parameters
whose results need confirming, and :func:`chain_blind_params` the chained ones (confirmed
against the referenced resources, see its docstring).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from carechart.crypto.keys import KeyRing
from carechart.db.schema import resource, resource_compartment
from carechart.db.search_schema import INDEX_TABLES, search_blind, search_reference
from carechart.errors import BadRequest
from carechart.fhir.definitions import load_definitions
from carechart.fhir.search.buckets import blind_bits
from carechart.fhir.search.extract import (
    PREFIX_MAX,
    CompositePlan,
    ParamPlan,
    blind_keys_for_values,
    blind_token_value,
    composite_plans,
    identifier_index_code,
    plan_for,
    reference_identifiers,
)
from carechart.fhir.search.indexer import BLIND_BITS, blind_key, blind_token_bits
from carechart.fhir.search.normalize import normalize_text, parse_date, soundex
from carechart.fhir.search.params import (
    parse_date_value,
    parse_number,
    parse_quantity,
    parse_token,
    split_escaped,
    split_prefix,
    unescape,
)

__all__ = [
    "CONTROL_PARAMS",
    "MAX_CHAIN_DEPTH",
    "SearchResult",
    "blind_params",
    "blind_query_keys",
    "chain_blind_params",
    "confirm_blind_match",
    "confirm_candidate",
    "search",
    "search_ids_for_condition",
]

#: Result parameters handled here (§3.1.1.7, §3.1.1.8).
_PAGING = frozenset({"_count", "_offset", "_sort"})
#: Result and format parameters the router handles (§3.1.1.5.x "Summary", "Elements",
#: "Total", _include/_revinclude §3.1.1.6.4): known, never unknown, no constraint here.
CONTROL_PARAMS = frozenset(
    {"_include", "_revinclude", "_summary", "_elements", "_total", "_format", "_pretty"}
)
#: Links of a chain plus levels of ``_has`` nesting one parameter may use (E5 limits).
MAX_CHAIN_DEPTH = 4
#: A chain without a type modifier over a reference with more candidate target types than
#: this must name the type (``subject:Patient.name``) instead of fanning out.
_MAX_CHAIN_TARGETS = 8
#: Modifiers each type accepts (beyond :missing), §3.1.1.5.x.
_MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"", "exact", "contains"}),
    "token": frozenset({"", "not", "text", "of-type"}),
    "date": frozenset({""}),
    "number": frozenset({""}),
    "quantity": frozenset({""}),
    "reference": frozenset({"", "identifier", "below"}),
    "uri": frozenset({"", "below", "above"}),
}
_AP_FRACTION = 0.1


@dataclass(slots=True)
class SearchResult:
    #: Matching ids in result order (one page when _count/_offset are given).
    ids: list[str]
    #: All matches, regardless of paging.
    total: int
    #: Parameters not understood or not supported, ignored (lenient handling).
    unknown_params: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Context:
    conn: Connection
    keyring: KeyRing
    tenant: str
    resource_type: str
    #: The resource rows being filtered: the ``resource`` table at the top level, a fresh
    #: alias inside each chain or _has subquery (so nothing correlates by accident).
    r: Any = resource
    depth: int = 0
    #: Recorded blind-index bits per resource type, read once per search.
    bits: dict[str, dict[str, int]] = field(default_factory=dict)
    restrict: Restriction | None = None

    def nested(self, resource_type: str) -> _Context:
        if self.depth >= MAX_CHAIN_DEPTH:
            raise BadRequest(
                f"a chained or _has parameter may go at most {MAX_CHAIN_DEPTH} levels deep"
            )
        return _Context(
            self.conn,
            self.keyring,
            self.tenant,
            resource_type,
            resource.alias(),
            self.depth + 1,
            self.bits,
            self.restrict,
        )

    def alive_ids(self, cond: Cond) -> sa.Select[Any]:
        """Ids of current (not deleted) resources of this type satisfying ``cond``."""
        r = self.r.c
        query = sa.select(r.id).where(
            r.tenant_id == self.tenant,
            r.resource_type == self.resource_type,
            r.deleted == sa.false(),
            cond,
        )
        if self.restrict is not None:
            allowed = self.restrict(self.resource_type, r.patient_id)
            if allowed is not None:
                query = query.where(allowed)
        return query

    def blind_bits(self, code: str) -> int:
        if self.resource_type not in self.bits:
            self.bits[self.resource_type] = blind_bits(self.conn, self.tenant, self.resource_type)
        return self.bits[self.resource_type].get(code, BLIND_BITS)


class _UnknownParam(Exception):
    """A parameter (or a link of a chain) this type does not have: reported, or refused
    under strict handling."""


Cond = ColumnElement[bool]
#: The access restriction of a search (the policy point's): for a resource type and the
#: ``patient_id`` column of the rows being filtered, a condition, or None for none. It
#: applies at the top level and inside every chain and ``_has`` (SECURITY B3).
Restriction = Callable[[str, Any], "Cond | None"]


def search(
    conn: Connection,
    keyring: KeyRing,
    tenant: str,
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    strict: bool = False,
    patient_compartment: str | None = None,
    restrict: Restriction | None = None,
) -> SearchResult:
    """Run a type-level search, or a compartment search (search.html#3.1.1.6.1) within the
    Patient compartment of ``patient_compartment`` when given. ``strict`` (Prefer: handling=strict, §3.1.1.2) turns
    unknown or unsupported parameters into :class:`BadRequest` instead of reporting them.

    :data:`CONTROL_PARAMS` (``_include``, ``_revinclude``, ``_summary``, ``_elements``,
    ``_total``, ``_format``, ``_pretty``, with any modifier) are known and place no
    constraint: the router applies them (:func:`carechart.fhir.search.includes`)."""
    ctx = _Context(conn, keyring, tenant, resource_type, restrict=restrict)
    plans = plan_for(resource_type)
    r = resource.c
    where: list[Cond] = [
        r.tenant_id == tenant,
        r.resource_type == resource_type,
        r.deleted == sa.false(),
    ]
    if restrict is not None:
        allowed = restrict(resource_type, r.patient_id)
        if allowed is not None:
            where.append(allowed)
    if patient_compartment is not None:
        c = resource_compartment.c
        where.append(
            sa.select(c.resource_id)
            .where(
                c.tenant_id == tenant,
                c.patient_id == patient_compartment,
                c.resource_type == r.resource_type,
                c.resource_id == r.id,
            )
            .exists()
        )
    unknown: list[str] = []
    count: int | None = None
    offset = 0
    sort: list[str] = []
    for name, value in params:
        if name in _PAGING:
            if name == "_sort":
                sort.extend(key for key in value.split(",") if key)
            else:
                number = _non_negative(name, value)
                count, offset = (number, offset) if name == "_count" else (count, number)
            continue
        if name.partition(":")[0] in CONTROL_PARAMS:
            continue
        try:
            where.append(_param_condition(ctx, name, value))
        except _UnknownParam:
            unknown.append(name)
    if unknown and strict:
        raise BadRequest(
            f"unknown or unsupported search parameter(s) for {resource_type}: " + ", ".join(unknown)
        )
    order = _order_by(ctx, plans, sort)
    ids: list[str] = []
    if count != 0:
        query = sa.select(r.id).where(*where).order_by(*order).offset(offset)
        if count is not None:
            query = query.limit(count)
        ids = list(conn.execute(query).scalars())
    short_page = count is None or len(ids) < count
    if short_page and (ids or offset == 0):
        # The page came back short: it holds the last match, so the total is known
        # without a second pass over the same rows.
        total = offset + len(ids)
    else:
        total = conn.execute(
            sa.select(sa.func.count()).select_from(resource).where(*where)
        ).scalar_one()
    return SearchResult(ids=ids, total=total, unknown_params=unknown)


def search_ids_for_condition(
    conn: Connection,
    keyring: KeyRing,
    tenant: str,
    resource_type: str,
    query_string: str,
    restrict: Restriction | None = None,
) -> list[str]:
    """Ids matching a conditional create/update/delete criterion (http.html#ccreate), e.g.
    ``identifier=http://x|123``. Unknown parameters are errors here: ignoring one would
    widen the match. Blind parameters give candidates (see the module docstring)."""
    params = parse_qsl(query_string.lstrip("?"), keep_blank_values=True)
    params = [
        (k, v) for k, v in params if k not in _PAGING and k.partition(":")[0] not in CONTROL_PARAMS
    ]
    if not params:
        raise BadRequest("a conditional interaction needs search criteria")
    return search(conn, keyring, tenant, resource_type, params, strict=True, restrict=restrict).ids


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise BadRequest(f"{name}={value!r} must be a non-negative integer")
    return int(value)


def _or_values(value: str) -> list[str]:
    return [v for v in split_escaped(value, ",") if v != ""]


# -- conditions ------------------------------------------------------------------------


def _param_condition(ctx: _Context, name: str, value: str) -> Cond:
    """The condition on ``ctx.r`` of one ``name=value`` pair (a parameter, possibly with a
    modifier, a chain or a _has); raises :class:`_UnknownParam` for what the type lacks."""
    if name.startswith("_has:"):
        return _has_condition(ctx, name, value)
    if "." in name:
        return _chain_condition(ctx, name, value)
    code, _, modifier = name.partition(":")
    if code == "_id":
        return _id_condition(ctx, name, modifier, value)
    composite = composite_plans(ctx.resource_type).get(code)
    if composite is not None:
        return _composite_condition(ctx, composite, name, modifier, value)
    plan = plan_for(ctx.resource_type).get(code)
    if plan is None:
        raise _UnknownParam(name)
    if value == "":
        return sa.true()  # an empty value places no constraint
    return _condition(ctx, plan, name, modifier, value)


def _id_condition(ctx: _Context, name: str, modifier: str, value: str) -> Cond:
    """_id (§3.1.1.5.6): token match on the logical id."""
    ids = [unescape(v) for v in _or_values(value)]
    if not ids:
        return sa.true()
    if modifier == "not":
        return ctx.r.c.id.not_in(ids)  # type: ignore[no-any-return]
    if modifier:
        raise BadRequest(f"search parameter {name}: modifier :{modifier} is not supported on _id")
    return ctx.r.c.id.in_(ids)  # type: ignore[no-any-return]


def _type_has_parameter(resource_type: str, code: str) -> bool:
    """Whether ``code`` (the next link of a chain) is searchable on ``resource_type``."""
    return (
        code in ("_id", "_has")
        or code in plan_for(resource_type)
        or code in composite_plans(resource_type)
    )


def _reference_plan(resource_type: str, code: str, name: str) -> ParamPlan:
    plan = plan_for(resource_type).get(code)
    if plan is None:
        raise _UnknownParam(name)
    if plan.type != "reference":
        raise BadRequest(
            f"search parameter {name}: {resource_type}.{code} is a {plan.type} parameter, "
            "not a reference, so it cannot be chained"
        )
    return plan


def _chain_condition(ctx: _Context, name: str, value: str) -> Cond:
    """Chained parameters (§3.1.1.6): ``ref[:Type].param``, links nested to any depth up to
    :data:`MAX_CHAIN_DEPTH`. Without ``:Type`` the target is the reference's single target
    type, else every target type that has the next parameter (the index row's target type
    then tells them apart)."""
    head, _, rest = name.partition(".")
    code, _, target = head.partition(":")
    if not rest or not code:
        raise BadRequest(f"search parameter {name}: a chain is reference[:Type].parameter")
    plan = _reference_plan(ctx.resource_type, code, name)
    allowed = plan.definition.target
    definitions = load_definitions()
    if target:
        if not definitions.is_resource_type(target) or (allowed and target not in allowed):
            raise BadRequest(f"search parameter {name}: {target} is not a target type of {code}")
        targets = [target]
    else:
        candidates = list(allowed) if allowed else sorted(definitions.resource_types)
        next_code = rest.partition(".")[0].partition(":")[0]
        targets = [t for t in candidates if _type_has_parameter(t, next_code)]
        if not targets:
            raise _UnknownParam(name)
        if len(targets) > _MAX_CHAIN_TARGETS:
            raise BadRequest(
                f"search parameter {name}: {code} may reference {len(targets)} types that have "
                f"{next_code}; name one ({code}:Type.{rest})"
            )
    ref = search_reference.alias()
    branches: list[Cond] = []
    for target_type in targets:
        sub = ctx.nested(target_type)
        inner = _param_condition(sub, rest, value)
        branches.append(
            sa.and_(ref.c.target_type == target_type, ref.c.target_id.in_(sub.alive_ids(inner)))
        )
    owners = sa.select(ref.c.resource_id).where(
        ref.c.tenant_id == ctx.tenant,
        ref.c.resource_type == ctx.resource_type,
        ref.c.code == code,
        sa.or_(sa.false(), *branches),
    )
    return ctx.r.c.id.in_(owners)  # type: ignore[no-any-return]


def _has_condition(ctx: _Context, name: str, value: str) -> Cond:
    """Reverse chaining (§3.1.1.6.1): ``_has:Type:reference:parameter`` matches resources
    that a current ``Type`` with ``parameter`` refers to through ``reference``; the
    parameter may itself be a ``_has`` (nesting) or a chain."""
    parts = name.split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise BadRequest(f"search parameter {name}: _has is _has:Type:reference:parameter")
    _, source, code, rest = parts
    if not load_definitions().is_resource_type(source):
        raise BadRequest(f"search parameter {name}: {source} is not a resource type")
    plan = _reference_plan(source, code, name)
    if plan.definition.target and ctx.resource_type not in plan.definition.target:
        raise BadRequest(
            f"search parameter {name}: {source}.{code} cannot refer to a {ctx.resource_type}"
        )
    sub = ctx.nested(source)
    inner = _param_condition(sub, rest, value)
    ref = search_reference.alias()
    targets = sa.select(ref.c.target_id).where(
        ref.c.tenant_id == ctx.tenant,
        ref.c.resource_type == source,
        ref.c.code == code,
        ref.c.target_type == ctx.resource_type,
        ref.c.resource_id.in_(sub.alive_ids(inner)),
    )
    return ctx.r.c.id.in_(targets)  # type: ignore[no-any-return]


def _composite_condition(
    ctx: _Context, plan: CompositePlan, name: str, modifier: str, value: str
) -> Cond:
    """composite (§3.1.1.5.8): ``a$b`` matches when every component matches *within the
    same focus element* (same Observation.component, say): component rows are joined on
    the owner and the group ordinal recorded at extraction."""
    if modifier:
        raise BadRequest(
            f"search parameter {name}: modifier :{modifier} is not supported on a composite"
        )
    if value == "":
        return sa.true()
    alternatives: list[sa.Select[Any]] = []
    for raw in _or_values_keeping(value):
        parts = split_escaped(raw, "$")
        if len(parts) != len(plan.components):
            raise BadRequest(
                f"search parameter {name}: expected {len(plan.components)} components "
                "separated by '$'"
            )
        aliases = [INDEX_TABLES[c.type].alias() for c in plan.components]
        first = aliases[0]
        conds: list[Cond] = []
        for index, (component, table, part) in enumerate(
            zip(plan.components, aliases, parts, strict=True)
        ):
            conds += [
                table.c.tenant_id == ctx.tenant,
                table.c.resource_type == ctx.resource_type,
                table.c.code == f"{plan.code}${index}",
                _component_predicate(component.type, table, name, part),
            ]
            if index:
                conds += [table.c.resource_id == first.c.resource_id, table.c.grp == first.c.grp]
        alternatives.append(sa.select(first.c.resource_id).where(*conds))
    return ctx.r.c.id.in_(sa.union_all(*alternatives))  # type: ignore[no-any-return]


def _component_predicate(kind: str, table: sa.FromClause, name: str, raw: str) -> Cond:
    if kind == "reference":
        return _reference_predicate(table, name, "", raw)
    return _BUILDERS[kind](table, name, "", raw)


def _or_values_keeping(value: str) -> list[str]:
    r"""Comma-separated alternatives, keeping escapes other than ``\,`` for later splits."""
    return [v for v in split_escaped(value, ",") if v != ""]


def _owned(
    ctx: _Context, table: sa.FromClause, code: str, predicate: Cond | None
) -> sa.Select[Any]:
    """Ids of resources of this type with an index row of ``code`` satisfying ``predicate``."""
    conds: list[Cond] = [
        table.c.tenant_id == ctx.tenant,
        table.c.resource_type == ctx.resource_type,
        table.c.code == code,
    ]
    if predicate is not None:
        conds.append(predicate)
    return sa.select(table.c.resource_id).where(*conds)


def _blind_lookup(ctx: _Context, index_code: str, keys: list[str]) -> sa.Select[Any]:
    """Owners of blind tokens of ``keys`` under ``index_code``, at the recorded width."""
    key = blind_key(ctx.keyring, ctx.tenant, ctx.resource_type, index_code)
    bits = ctx.blind_bits(index_code)
    tokens = sorted({blind_token_bits(key, k, bits) for k in keys})
    table = search_blind.alias()
    return _owned(ctx, table, index_code, table.c.token.in_(tokens))


def _condition(ctx: _Context, plan: ParamPlan, name: str, modifier: str, value: str) -> Cond:
    table = (search_blind if plan.blind else INDEX_TABLES[plan.type]).alias()
    rid = ctx.r.c.id
    if modifier == "missing":
        if value not in ("true", "false"):
            raise BadRequest(f"search parameter {name}: :missing takes true or false")
        present = _owned(ctx, table, plan.code, None)
        return rid.not_in(present) if value == "true" else rid.in_(present)  # type: ignore[no-any-return]
    if plan.type == "reference":
        return _reference_condition(ctx, plan, name, modifier, value)
    if modifier not in _MODIFIERS[plan.type]:
        raise BadRequest(
            f"search parameter {name}: modifier :{modifier} is not supported on a {plan.type} parameter"
        )
    values = _or_values(value)
    if not values:
        raise BadRequest(f"search parameter {name} has no value")
    if plan.blind:
        keys = [key for v in values for key in blind_query_keys(plan, name, modifier, v)]
        subquery = _blind_lookup(ctx, plan.code, keys)
    else:
        builder = _BUILDERS[plan.type]
        predicate = sa.or_(*(builder(table, name, modifier, v) for v in values))
        subquery = _owned(ctx, table, plan.code, predicate)
    if modifier == "not":
        return rid.not_in(subquery)  # type: ignore[no-any-return]
    return rid.in_(subquery)  # type: ignore[no-any-return]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_predicate(table: sa.FromClause, name: str, modifier: str, raw: str) -> Cond:
    """string (§3.1.1.5.7): starts-with, case- and accent-insensitive; :exact; :contains."""
    value = unescape(raw)
    if modifier == "exact":
        return table.c.value_exact == value
    norm = _like_escape(normalize_text(value))
    pattern = f"%{norm}%" if modifier == "contains" else f"{norm}%"
    return table.c.value_norm.like(pattern, escape="\\")


def _token_predicate(table: sa.FromClause, name: str, modifier: str, raw: str) -> Cond:
    """token (§3.1.1.5.5): code, system|code, |code, system|; :not, :text, :of-type."""
    c = table.c
    if modifier == "text":
        return c.text_norm.like(_like_escape(normalize_text(unescape(raw))) + "%", escape="\\")
    if modifier == "of-type":
        type_system, type_code, ident = _of_type_parts(name, raw)
        return sa.and_(c.type_system == type_system, c.type_code == type_code, c.value == ident)
    token = parse_token(name, raw)
    conds: list[Cond] = []
    if token.system == "":
        conds.append(c.system.is_(None))
    elif token.system is not None:
        conds.append(c.system == token.system)
    if token.code is not None:
        conds.append(c.value == token.code)
    return sa.and_(*conds)


def _of_type_parts(name: str, raw: str) -> tuple[str, str, str]:
    parts = [unescape(p) for p in split_escaped(raw, "|")]
    if len(parts) != 3 or not all(parts):
        raise BadRequest(f"search parameter {name}: :of-type takes type-system|type-code|value")
    return parts[0], parts[1], parts[2]


def _range_predicate(
    c: Any, prefix: str, low: Any, high: Any, exact: Any, *, fuzz: Any, half_open: bool
) -> Cond:
    """The prefixes of §3.1.1.5.1 over a stored inclusive range [c.low, c.high] and a search
    range [low, high] (dates: the precision's span; numbers: [low, high) and exact value)."""
    # A number finer than a double (66.899999999999991) has a range that collapses onto
    # its value: then the upper bound is inclusive, or nothing could equal it.
    open_top = half_open and high > exact
    within = sa.and_(c.low >= low, c.high < high if open_top else c.high <= high)
    if prefix == "eq":
        return within
    if prefix == "ne":
        return sa.not_(within)
    if prefix == "ap":
        return sa.and_(c.low <= high + fuzz, c.high >= low - fuzz)
    ordering: dict[str, Cond]
    if half_open:  # numbers: ordering prefixes compare with the exact value
        ordering = {
            "gt": c.high > exact, "lt": c.low < exact, "ge": c.high >= exact,
            "le": c.low <= exact, "sa": c.low > exact, "eb": c.high < exact,
        }  # fmt: skip
    else:
        ordering = {
            "gt": c.high > high,
            "lt": c.low < low,
            "ge": sa.or_(c.high > high, within),
            "le": sa.or_(c.low < low, within),
            "sa": c.low > high,
            "eb": c.high < low,
        }
    return ordering[prefix]


def _date_predicate(table: sa.FromClause, name: str, modifier: str, raw: str) -> Cond:
    """date (§3.1.1.5.1 "date"): the value's precision defines a range; times without a
    zone are UTC. ap: within 10% of the distance between now and the value."""
    prefix, text = split_prefix(raw)
    span = parse_date_value(name, text)
    fuzz = int(abs(time.time() * 1000 - span.low) * _AP_FRACTION)
    return _range_predicate(table.c, prefix, span.low, span.high, None, fuzz=fuzz, half_open=False)


def _number_predicate(table: sa.FromClause, name: str, modifier: str, raw: str) -> Cond:
    """number (§3.1.1.5.3): eq/ne use the implicit precision range; ap is ±10%."""
    prefix, text = split_prefix(raw)
    number = parse_number(name, text)
    fuzz = abs(number.exact) * _AP_FRACTION
    return _range_predicate(
        table.c, prefix, number.low, number.high, number.exact, fuzz=fuzz, half_open=True
    )


def _quantity_predicate(table: sa.FromClause, name: str, modifier: str, raw: str) -> Cond:
    """quantity (§3.1.1.5.4): number with prefix, then system and code (no unit conversion;
    with no system the code matches the unit code or the unit text)."""
    prefix, text = split_prefix(raw)
    quantity = parse_quantity(name, text)
    number = quantity.number
    fuzz = abs(number.exact) * _AP_FRACTION
    conds = [
        _range_predicate(
            table.c, prefix, number.low, number.high, number.exact, fuzz=fuzz, half_open=True
        )
    ]
    if quantity.system is not None:
        conds.append(table.c.system == quantity.system)
    if quantity.code is not None:
        if quantity.system is not None:
            conds.append(table.c.unit_code == quantity.code)
        else:
            conds.append(sa.or_(table.c.unit_code == quantity.code, table.c.unit == quantity.code))
    return sa.and_(*conds)


def _uri_predicate(table: sa.FromClause, name: str, modifier: str, raw: str) -> Cond:
    """uri (§3.1.1.5.9): exact; :below (the value is a prefix); :above (a prefix of it)."""
    value = unescape(raw)
    if modifier == "below":
        return table.c.uri.like(_like_escape(value) + "%", escape="\\")
    if modifier == "above":
        cuts = [value[:i] for i, ch in enumerate(value) if ch == "/" and value[i - 1 : i] != "/"]
        return table.c.uri.in_([value, *(c for c in cuts if "://" in c or not c.endswith(":"))])
    return table.c.uri == value


_BUILDERS: dict[str, Callable[[sa.FromClause, str, str, str], Cond]] = {
    "string": _string_predicate,
    "token": _token_predicate,
    "date": _date_predicate,
    "number": _number_predicate,
    "quantity": _quantity_predicate,
    "uri": _uri_predicate,
}


def _reference_condition(
    ctx: _Context, plan: ParamPlan, name: str, modifier: str, value: str
) -> Cond:
    """reference (§3.1.1.5.6): ``id``, ``Type/id``, an absolute URL, ``:Type`` with an id;
    ``:identifier`` (Reference.identifier, blind-indexed: candidates); ``:below`` (a
    canonical or absolute URL under the value)."""
    definitions = load_definitions()
    if modifier == "identifier":
        keys = [key for raw in _or_values(value) for key in identifier_query_keys(name, raw)]
        return ctx.r.c.id.in_(  # type: ignore[no-any-return]
            _blind_lookup(ctx, identifier_index_code(plan.code), keys)
        )
    if modifier and modifier != "below" and not definitions.is_resource_type(modifier):
        raise BadRequest(
            f"search parameter {name}: modifier :{modifier} is not supported on a reference"
        )
    if (
        modifier not in ("", "below")
        and plan.definition.target
        and modifier not in plan.definition.target
    ):
        raise BadRequest(f"search parameter {name}: {modifier} is not a target type of {plan.code}")
    table = INDEX_TABLES["reference"].alias()
    preds = [_reference_predicate(table, name, modifier, raw) for raw in _or_values(value)]
    return ctx.r.c.id.in_(_owned(ctx, table, plan.code, sa.or_(sa.false(), *preds)))  # type: ignore[no-any-return]


def _reference_predicate(table: sa.FromClause, name: str, modifier: str, raw: str) -> Cond:
    definitions = load_definitions()
    c = table.c
    ref = unescape(raw)
    if modifier == "below":
        if "://" not in ref and not ref.startswith("urn:"):
            raise BadRequest(f"search parameter {name}: :below takes a canonical or absolute URL")
        return c.url.like(_like_escape(ref.split("|", 1)[0]) + "%", escape="\\")
    if "://" in ref or ref.startswith("urn:"):
        return c.url == ref.split("|", 1)[0]
    parts = ref.split("/")
    if len(parts) == 1 and ref:
        conds = [c.target_id == ref]
        if modifier:
            conds.append(c.target_type == modifier)
        return sa.and_(*conds)
    if len(parts) == 2 and definitions.is_resource_type(parts[0]) and parts[1]:
        if modifier and modifier != parts[0]:
            raise BadRequest(f"search parameter {name}: {ref!r} is not a {modifier} reference")
        return sa.and_(c.target_type == parts[0], c.target_id == parts[1])
    raise BadRequest(f"search parameter {name}: {ref!r} is not an id, Type/id or absolute URL")


def identifier_query_keys(name: str, raw: str) -> list[str]:
    """Blind keys a ``ref:identifier`` value looks up (``system|value``, ``value``)."""
    token = parse_token(name, raw)
    if token.code is None:
        raise BadRequest(f"search parameter {name}: :identifier needs a value ([system]|value)")
    if token.system is None:
        return ["v:" + token.code]
    return [f"sv:{token.system}|{token.code}"]


# -- blind parameters ------------------------------------------------------------------


def blind_query_keys(plan: ParamPlan, name: str, modifier: str, raw: str) -> list[str]:
    """The plaintext blind keys a value of a PHI parameter looks up (before HMAC); the
    counterpart of :func:`carechart.fhir.search.extract.blind_keys_for_values`."""
    value = unescape(raw)
    if plan.type == "string":
        if modifier == "contains":
            raise BadRequest(
                f"search parameter {name}: :contains is not available on a blind-indexed parameter"
            )
        if modifier == "exact":
            return ["x:" + value]
        if plan.code == "phonetic":
            code = soundex(value)
            if not code:
                raise BadRequest(f"search parameter {name}: the value has no letters")
            return ["s:" + code]
        norm = normalize_text(value)
        if not norm:
            raise BadRequest(f"search parameter {name}: the value is empty after normalisation")
        return ["p:" + norm[:PREFIX_MAX]]
    if plan.type == "token":
        if modifier == "text":
            raise BadRequest(
                f"search parameter {name}: :text is not available on a blind-indexed parameter"
            )
        if modifier == "of-type":
            type_system, type_code, ident = _of_type_parts(name, raw)
            return [f"t:{type_system}|{type_code}|{blind_token_value(plan.code, ident)}"]
        token = parse_token(name, raw)
        if token.code is None:
            return ["s:" + (token.system or "")]
        ident = blind_token_value(plan.code, token.code)
        if token.system is None:
            return ["v:" + ident]
        return [f"sv:{token.system}|{ident}"]
    if plan.type == "date":
        prefix, text = split_prefix(value)
        if prefix != "eq" or len(text) not in (4, 7, 10) or parse_date(text) is None:
            raise BadRequest(
                f"search parameter {name}: a blind-indexed date matches by equality only, "
                "as YYYY, YYYY-MM or YYYY-MM-DD"
            )
        return ["d:" + text]
    raise BadRequest(f"search parameter {name}: unsupported on a blind-indexed parameter")


def confirm_blind_match(resource_type: str, body: dict[str, Any], name: str, value: str) -> bool:
    """Whether an unsealed ``body`` really matches ``name=value`` for a blind-indexed
    parameter: the exact check behind a blind-index candidate (no truncation, no HMAC).
    ``name`` may carry a modifier (``family:exact``); OR lists are honoured."""
    code, _, modifier = name.partition(":")
    plan = plan_for(resource_type).get(code)
    if plan is not None and plan.type == "reference" and modifier == "identifier":
        have = blind_keys_for_values(
            "token", "identifier", reference_identifiers(plan.path.evaluate(body))
        )
        return any(
            key in have for raw in _or_values(value) for key in identifier_query_keys(name, raw)
        )
    if plan is None or not plan.blind:
        raise BadRequest(f"{name} is not a blind-indexed parameter of {resource_type}")
    have = blind_keys_for_values(plan.type, code, plan.path.evaluate(body))
    exact_parts = [normalize_text(k[2:]) for k in have if k.startswith("x:")]
    found = False
    for raw in _or_values(value):
        for key in blind_query_keys(plan, name, modifier, raw):
            if key.startswith("p:") and len(key) - 2 >= PREFIX_MAX:
                # Longer than the indexed prefixes: confirm on the full text.
                full = normalize_text(unescape(raw))
                found = found or any(part.startswith(full) for part in exact_parts)
            else:
                found = found or key in have
    return not found if modifier == "not" else found


# -- sorting ---------------------------------------------------------------------------


_SORT_COLUMNS: dict[str, tuple[str, str]] = {
    "string": ("value_norm", "value_norm"),
    "token": ("value", "value"),
    "date": ("low", "high"),
    "number": ("low", "high"),
    "quantity": ("low", "high"),
    "uri": ("uri", "uri"),
    "reference": ("target_id", "target_id"),
}


def _order_by(ctx: _Context, plans: dict[str, ParamPlan], keys: Sequence[str]) -> list[Any]:
    """_sort (§3.1.1.7): keys in priority order, ``-`` for descending. A resource with several
    values sorts by its lowest (ascending) or highest (descending); missing values last."""
    r = resource.c
    order: list[Any] = []
    for key in keys:
        descending = key.startswith("-")
        code = key.removeprefix("-")
        expr: Any
        if code == "_id":
            expr = r.id
        elif code == "_lastUpdated":
            expr = r.last_updated
        else:
            plan = plans.get(code)
            if plan is None:
                raise BadRequest(
                    f"_sort: {code!r} is not a search parameter of {ctx.resource_type}"
                )
            if plan.blind:
                raise BadRequest(f"_sort: {code} is blind-indexed and cannot be sorted on")
            table = INDEX_TABLES[plan.type]
            column = table.c[_SORT_COLUMNS[plan.type][1 if descending else 0]]
            agg = sa.func.max(column) if descending else sa.func.min(column)
            expr = (
                sa.select(agg)
                .where(
                    table.c.tenant_id == r.tenant_id,
                    table.c.resource_type == r.resource_type,
                    table.c.resource_id == r.id,
                    table.c.code == code,
                )
                .scalar_subquery()
            )
        order.append(expr.is_(None))
        order.append(expr.desc() if descending else expr.asc())
    order.extend([r.last_updated.asc(), r.id.asc()])
    return order


def blind_params(resource_type: str, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The parameters of ``params`` that are answered from blind indexes (candidates only)."""
    plans = plan_for(resource_type)
    found: list[tuple[str, str]] = []
    for name, value in params:
        if "." in name or name.startswith("_has:"):
            continue
        code, _, modifier = name.partition(":")
        plan = plans.get(code)
        if plan is None or modifier == "missing" or value == "":
            continue
        if plan.blind or (plan.type == "reference" and modifier == "identifier"):
            found.append((name, value))
    return found


def chain_blind_params(resource_type: str, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Chained and ``_has`` parameters of ``params`` that end in a blind-indexed parameter
    (``subject:Patient.name``, ``_has:Observation:patient:subject:identifier``): their
    matches are candidates, like blind parameters, but the exact check is against the
    resource at the far end of the chain, not the matched one. A router that must be exact
    resolves those resources and applies :func:`confirm_blind_match` to them, or treats
    the result as candidates (what it does for page sizes and totals either way)."""
    return [
        (n, v)
        for n, v in params
        if ("." in n or n.startswith("_has:")) and _ends_blind(resource_type, n)
    ]


def _ends_blind(resource_type: str, name: str) -> bool:
    if name.startswith("_has:"):
        parts = name.split(":", 3)
        return len(parts) == 4 and _ends_blind(parts[1], parts[3])
    if "." not in name:
        code, _, modifier = name.partition(":")
        plan = plan_for(resource_type).get(code)
        return plan is not None and (
            plan.blind or (plan.type == "reference" and modifier == "identifier")
        )
    head, _, rest = name.partition(".")
    code, _, target = head.partition(":")
    plan = plan_for(resource_type).get(code)
    if plan is None:
        return False
    targets = [target] if target else list(plan.definition.target)
    return any(_ends_blind(t, rest) for t in targets if load_definitions().is_resource_type(t))


def confirm_candidate(
    resource_type: str, body: dict[str, Any], params: list[tuple[str, str]]
) -> bool:
    """Whether a blind-index candidate truly matches every blind parameter of ``params``."""
    return all(
        confirm_blind_match(resource_type, body, name, value)
        for name, value in blind_params(resource_type, params)
    )
