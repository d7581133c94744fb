"""Queries over the audit trail for auditors (SECURITY C6; ONC 170.315(d)(2), (d)(3), (d)(10);
HIPAA 45 CFR 164.528 accounting of disclosures, 164.312(b) audit controls).

One query, :func:`query_events`, serves every report: filters on the C1 columns, a half-open
time window on ``recorded_at``, and keyset paging on ``chain_index`` (dense and monotonic per
tenant, so a page boundary never skips or repeats a record while new ones are appended). The
named reports (by patient, by user, by period, break-glass review, failed logins) are fixed
filters composed with whatever else the auditor narrows by.

:class:`Classifier` names events by their action and resource type (e.g. the FHIR AuditEvent
type and action codes): the same rules classify a row in Python and filter in SQL, so what a
search matches and what it renders cannot disagree.

The table holds identifiers only (C1: never PHI values), and so does everything returned here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from carechart.audit.chain import RECORD_FIELDS, AuditRecord, StoredEvent
from carechart.db.auth_schema import as_utc, audit_event
from carechart.errors import BadRequest

Order = Literal["asc", "desc"]
ORDERS: tuple[Order, ...] = ("asc", "desc")
DEFAULT_LIMIT = 100
MAX_LIMIT = 500

BREAK_GLASS_PURPOSE = "BTG"  # v3 ActReason "break the glass"
BREAK_GLASS_ACTION = "break-glass"
LOGIN_ACTIONS = frozenset({"login", "mfa"})
FAILED_OUTCOMES = frozenset({"failure", "denied"})

_CURSOR_VERSION = "c1"


class InvalidCursor(BadRequest):
    code = "INVALID_CURSOR"

    def __init__(self) -> None:
        # Deliberately one message: which check failed tells a prober nothing useful.
        super().__init__("cursor is not one this query returned; start again without it")


@dataclass(frozen=True, slots=True)
class Rule:
    """Matches events whose action is one of ``actions`` and whose resource type is one of
    ``resource_types``; None leaves that column unconstrained."""

    code: str
    actions: frozenset[str] | None = None
    resource_types: frozenset[str] | None = None

    def matches(self, action: str, resource_type: str | None) -> bool:
        return (self.actions is None or action in self.actions) and (
            self.resource_types is None or resource_type in self.resource_types
        )

    def condition(self) -> sa.ColumnElement[bool]:
        t = audit_event
        parts: list[sa.ColumnElement[bool]] = []
        if self.actions is not None:
            parts.append(t.c.action.in_(sorted(self.actions)))
        if self.resource_types is not None:
            parts.append(t.c.resource_type.in_(sorted(self.resource_types)))
        return sa.and_(sa.true(), *parts)


@dataclass(frozen=True, slots=True)
class Classifier:
    """Names an event by the first matching rule, else ``default`` (None: unclassified).

    ``name`` identifies the classifier in paging cursors; rules are data so that
    :meth:`classify` and :meth:`column` are two readings of one table.
    """

    name: str
    rules: tuple[Rule, ...]
    default: str | None = None

    def classify(self, action: str, resource_type: str | None) -> str | None:
        for rule in self.rules:
            if rule.matches(action, resource_type):
                return rule.code
        return self.default

    def column(self) -> sa.ColumnElement[str]:
        whens = [(rule.condition(), sa.literal(rule.code)) for rule in self.rules]
        default = sa.null() if self.default is None else sa.literal(self.default)
        return sa.case(*whens, else_=default)


def _narrow(current: frozenset[str] | None, wanted: Iterable[str]) -> frozenset[str]:
    """Both constraints at once: "any of these" and "any of those" is their intersection."""
    values = frozenset(wanted)
    return values if current is None else current & values


@dataclass(frozen=True, slots=True)
class EventFilters:
    """What to select. A set means "any of these" (an empty set matches nothing); None does
    not filter. ``since`` is inclusive and ``until`` exclusive, so consecutive periods neither
    overlap nor leave gaps. ``break_glass`` keeps emergency accesses: purpose BTG or an
    explicit break-glass event. ``classes`` keeps events a classifier names one of the codes."""

    patient_ids: frozenset[str] | None = None
    user_ids: frozenset[str] | None = None
    actions: frozenset[str] | None = None
    outcomes: frozenset[str] | None = None
    resource_types: frozenset[str] | None = None
    purposes: frozenset[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    break_glass: bool = False
    classes: tuple[tuple[Classifier, frozenset[str]], ...] = field(default=())

    @classmethod
    def of(
        cls,
        *,
        patient_id: str | None = None,
        user_id: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        resource_type: str | None = None,
        purpose_of_use: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> EventFilters:
        """Single-valued filters, named after the columns."""

        def one(value: str | None) -> frozenset[str] | None:
            return None if value is None else frozenset({value})

        return cls(
            patient_ids=one(patient_id),
            user_ids=one(user_id),
            actions=one(action),
            outcomes=one(outcome),
            resource_types=one(resource_type),
            purposes=one(purpose_of_use),
            since=since,
            until=until,
        )

    def narrowed_to_class(self, classifier: Classifier, codes: Iterable[str]) -> EventFilters:
        return replace(self, classes=(*self.classes, (classifier, frozenset(codes))))

    def canonical(self) -> dict[str, Any]:
        """A stable JSON-able form: what a paging cursor is bound to."""

        def values(value: frozenset[str] | None) -> list[str] | None:
            return None if value is None else sorted(value)

        def moment(value: datetime | None) -> str | None:
            return None if value is None else as_utc(value).isoformat()

        return {
            "patient": values(self.patient_ids),
            "user": values(self.user_ids),
            "action": values(self.actions),
            "outcome": values(self.outcomes),
            "type": values(self.resource_types),
            "purpose": values(self.purposes),
            "since": moment(self.since),
            "until": moment(self.until),
            "btg": self.break_glass,
            "classes": sorted([c.name, sorted(codes)] for c, codes in self.classes),
        }


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    # Opaque; None on the last page.
    next_cursor: str | None


def _membership(column: sa.Column[Any], values: frozenset[str] | None) -> sa.ColumnElement[bool]:
    if values is None:
        return sa.true()
    if not values:
        return sa.false()
    if len(values) == 1:
        return column == next(iter(values))
    return column.in_(sorted(values))


def _conditions(tenant: str, filters: EventFilters) -> list[sa.ColumnElement[bool]]:
    t = audit_event
    conditions: list[sa.ColumnElement[bool]] = [
        t.c.tenant_id == tenant,
        _membership(t.c.patient_id, filters.patient_ids),
        _membership(t.c.user_id, filters.user_ids),
        _membership(t.c.action, filters.actions),
        _membership(t.c.outcome, filters.outcomes),
        _membership(t.c.resource_type, filters.resource_types),
        _membership(t.c.purpose_of_use, filters.purposes),
    ]
    if filters.since is not None:
        conditions.append(t.c.recorded_at >= as_utc(filters.since))
    if filters.until is not None:
        conditions.append(t.c.recorded_at < as_utc(filters.until))
    if filters.break_glass:
        conditions.append(
            sa.or_(
                t.c.purpose_of_use == BREAK_GLASS_PURPOSE,
                t.c.action == BREAK_GLASS_ACTION,
            )
        )
    for classifier, codes in filters.classes:
        conditions.append(
            classifier.column().in_(sorted(codes)) if codes else sa.false(),
        )
    return conditions


def _query_digest(filters: EventFilters, order: Order) -> str:
    canonical = json.dumps(
        {"filters": filters.canonical(), "order": order}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_cursor(chain_index: int, filters: EventFilters, order: Order) -> str:
    """The position after ``chain_index``, bound to the query that produced it: a cursor
    reused with other filters or the other order is refused rather than silently paging a
    different result."""
    text = f"{_CURSOR_VERSION}:{chain_index}:{_query_digest(filters, order)}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, filters: EventFilters, order: Order) -> int:
    if not cursor or len(cursor) > 128 or not cursor.isascii():
        raise InvalidCursor()
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidCursor() from None
    version, _, rest = text.partition(":")
    index_text, _, digest = rest.partition(":")
    if (
        version != _CURSOR_VERSION
        or not index_text.isdigit()
        or len(index_text) > 18
        or digest != _query_digest(filters, order)
    ):
        raise InvalidCursor()
    return int(index_text)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _event(values: RowMapping | Mapping[str, Any]) -> StoredEvent:
    return StoredEvent(
        chain_index=int(values["chain_index"]),
        recorded_at=as_utc(values["recorded_at"]),
        record=AuditRecord(**{name: values[name] for name in RECORD_FIELDS}),
        prev_hash=str(values["prev_hash"]),
        record_hash=str(values["record_hash"]),
    )


def query_events(
    conn: Connection,
    tenant: str,
    filters: EventFilters,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    order: Order = "desc",
) -> EventPage:
    """One page of the tenant's events matching ``filters``, in chain order (``asc``: oldest
    first). Raises :class:`InvalidCursor` (400) for a cursor this query did not issue."""
    if order not in ORDERS:
        raise BadRequest("order must be asc or desc")
    check_limit(limit)
    t = audit_event
    conditions = _conditions(tenant, filters)
    if cursor is not None:
        after = decode_cursor(cursor, filters, order)
        conditions.append(t.c.chain_index > after if order == "asc" else t.c.chain_index < after)
    ordering = t.c.chain_index.asc() if order == "asc" else t.c.chain_index.desc()
    rows = (
        conn.execute(sa.select(t).where(*conditions).order_by(ordering).limit(limit + 1))
        .mappings()
        .all()
    )
    events = [_event(row) for row in rows[:limit]]
    more = len(rows) > limit
    next_cursor = encode_cursor(events[-1].chain_index, filters, order) if more else None
    return EventPage(events, next_cursor)


def event_at(conn: Connection, tenant: str, chain_index: int) -> StoredEvent | None:
    t = audit_event
    row = (
        conn.execute(sa.select(t).where(t.c.tenant_id == tenant, t.c.chain_index == chain_index))
        .mappings()
        .first()
    )
    return None if row is None else _event(row)


def audit_tenants(conn: Connection) -> list[str]:
    """Every tenant that has audit records."""
    t = audit_event
    return list(conn.execute(sa.select(t.c.tenant_id).distinct().order_by(t.c.tenant_id)).scalars())


def has_events(conn: Connection, tenant: str) -> bool:
    t = audit_event
    return (
        conn.execute(sa.select(t.c.seq).where(t.c.tenant_id == tenant).limit(1)).first() is not None
    )


# --- the named reports (C6) -----------------------------------------------------------------


def disclosures_of_patient(patient_id: str, base: EventFilters | None = None) -> EventFilters:
    """Accounting of disclosures (164.528, 170.315(d)(2)): every recorded access to the
    patient's record. Writers record ``patient_id`` on every event about the patient, the
    Patient resource itself included."""
    base = base or EventFilters()
    return replace(base, patient_ids=_narrow(base.patient_ids, [patient_id]))


def activity_of_user(user_id: str, base: EventFilters | None = None) -> EventFilters:
    base = base or EventFilters()
    return replace(base, user_ids=_narrow(base.user_ids, [user_id]))


def in_period(since: datetime, until: datetime, base: EventFilters | None = None) -> EventFilters:
    """Events recorded in [since, until), within whatever window ``base`` already has."""
    base = base or EventFilters()
    start = since if base.since is None else max(as_utc(since), as_utc(base.since))
    end = until if base.until is None else min(as_utc(until), as_utc(base.until))
    return replace(base, since=start, until=end)


def break_glass_review(base: EventFilters | None = None) -> EventFilters:
    """Emergency accesses (SECURITY B9) for after-the-fact review."""
    return replace(base or EventFilters(), break_glass=True)


def failed_logins(base: EventFilters | None = None) -> EventFilters:
    """Refused sign-ins and second factors (170.315(d)(2): authentication failures)."""
    base = base or EventFilters()
    return replace(
        base,
        actions=_narrow(base.actions, LOGIN_ACTIONS),
        outcomes=_narrow(base.outcomes, FAILED_OUTCOMES),
    )
