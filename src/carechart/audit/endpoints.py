"""``/api/v1/audit``: the auditor's reports over the audit trail (SECURITY C6; ONC
170.315(d)(2) audit reports, (d)(3) audit report(s) sortable and filterable, (d)(10)
auditing actions on health information; HIPAA 45 CFR 164.528 accounting of disclosures).

Only auditors get in (SECURITY B5: the audit category is theirs alone). Reading the trail is
itself an access to it, so every answered report appends its own record in the unit of work
that ran the query (C1, C5): if that record cannot be written, no report is served. A refused
caller is recorded too (C1: every denial); a malformed request is refused before anything is
read or written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse

from carechart.access.http import request_territory
from carechart.access.matrix import PURPOSE_OF_USE
from carechart.access.scopes import letters_for, parse_scopes
from carechart.audit.chain import AuditRecord, StoredEvent, append, timestamp_text
from carechart.audit.reports import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ORDERS,
    EventFilters,
    EventPage,
    Order,
    activity_of_user,
    break_glass_review,
    disclosures_of_patient,
    failed_logins,
    query_events,
)
from carechart.auth.config import components_of, context_of
from carechart.auth.dependencies import client_info, current_principal
from carechart.auth.errors import Forbidden
from carechart.auth.principal import Principal, Role
from carechart.db.engine import unit_of_work
from carechart.errors import BadRequest

__all__ = ["audited_read", "auditor_principal", "event_json", "router", "scoped_patient"]

T = TypeVar("T")

AUDIT_RESOURCE = "AuditEvent"
AUDIT_CATEGORY = "audit"
_MAX_VALUE = 128  # longer than any identifier column: such a filter could never match

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


def _tenant(request: Request, principal: Principal) -> str:
    """The tenant whose trail is read: the one place to change when requests carry their
    territory. ``current_principal`` has already refused tokens of any other tenant."""
    return request_territory(request, principal, write=False)


def _access_record(
    request: Request,
    principal: Principal,
    *,
    action: str,
    outcome: str,
    patient_id: str | None = None,
    resource_id: str | None = None,
) -> AuditRecord:
    client = client_info(request)
    return AuditRecord(
        action=action,
        outcome=outcome,
        user_id=principal.user_id,
        client_id=principal.client_id,
        role=principal.role.value,
        patient_id=patient_id,
        resource_type=AUDIT_RESOURCE,
        resource_id=resource_id,
        data_category=AUDIT_CATEGORY,
        source_ip=client.source_ip,
        user_agent=client.user_agent,
        purpose_of_use=PURPOSE_OF_USE.get(principal.role),
        correlation_id=client.correlation_id,
    )


def _append_now(request: Request, conn: Connection, tenant: str, record: AuditRecord) -> None:
    ctx = context_of(request.app)
    # The identity service's clock: one time line with the sign-in records it sits among.
    now = components_of(request.app).clock()
    append(conn, ctx.keyring, tenant=tenant, record=record, now=now)


def _may_read_audit(principal: Principal) -> bool:
    if principal.role != Role.auditor:
        return False
    # A token narrower than the role (SMART scopes, SECURITY B7) may not reach the trail.
    granted = letters_for(parse_scopes(principal.scopes), AUDIT_RESOURCE, ("user", "system"))
    return "r" in granted or "s" in granted


def auditor_principal(request: Request) -> Principal:
    """The caller, if an auditor: 401 without a valid session, 403 for every other role.

    The refusal is recorded and committed before the 403 goes out."""
    principal = current_principal(request)
    if _may_read_audit(principal):
        return principal
    ctx = context_of(request.app)
    tenant = _tenant(request, principal)
    ctx.keyring.active(tenant)
    with unit_of_work(ctx.engine, write=True) as conn:
        _append_now(
            request,
            conn,
            tenant,
            _access_record(request, principal, action="read", outcome="denied"),
        )
    raise Forbidden("the audit trail is open to auditors only")


Auditor = Annotated[Principal, Depends(auditor_principal)]


def scoped_patient(filters: EventFilters) -> str | None:
    """The one patient a report is narrowed to, if any: reading it is an access concerning
    that patient, and belongs in the patient's own accounting."""
    if filters.patient_ids is not None and len(filters.patient_ids) == 1:
        return next(iter(filters.patient_ids))
    return None


def audited_read(
    request: Request,
    principal: Principal,
    work: Callable[[Connection, str], T],
    *,
    action: str = "read",
    patient_id: str | None = None,
    resource_id: str | None = None,
) -> T:
    """Run ``work(conn, tenant)`` and record the access in the same unit of work (C5).

    An error raised by ``work`` (a bad cursor, an unknown id) rolls the record back with it.
    """
    ctx = context_of(request.app)
    tenant = _tenant(request, principal)
    # Created, if need be, in its own transaction: SQLite has a single writer.
    ctx.keyring.active(tenant)
    with unit_of_work(ctx.engine, write=True) as conn:
        result = work(conn, tenant)
        record = _access_record(
            request,
            principal,
            action=action,
            outcome="success",
            patient_id=patient_id,
            resource_id=resource_id,
        )
        _append_now(request, conn, tenant, record)
    return result


# --- query parameters -----------------------------------------------------------------------

PAGING = frozenset({"since", "until", "limit", "cursor", "order"})
FILTERS = frozenset(
    {"patient_id", "user_id", "action", "outcome", "resource_type", "purpose_of_use"}
)
_REPEATABLE = frozenset({"action", "outcome"})


def _only(request: Request, allowed: Iterable[str]) -> None:
    """Refuse unknown and repeated parameters: a misspelt filter that is silently ignored
    would hand the auditor a report of everything, believed to be a report of something."""
    names = frozenset(allowed)
    params = request.query_params
    for name in params:
        if name not in names:
            raise BadRequest(
                f"unknown query parameter {name[:40]!r}; this report takes: "
                + ", ".join(sorted(names))
            )
        if name not in _REPEATABLE and len(params.getlist(name)) > 1:
            raise BadRequest(f"query parameter {name!r} is given more than once")


def _instant(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    # A '+' left unencoded in a query string arrives as a space.
    text = value.strip().replace(" ", "+")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name} is not an ISO 8601 date-time; use e.g. 2024-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone (Z or an offset such as +01:00)")
    return moment.astimezone(UTC)


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _order(value: str | None) -> Order:
    if value is None:
        return "desc"
    for order in ORDERS:
        if value == order:
            return order
    raise BadRequest("order must be asc or desc")


def _values(name: str, values: list[str] | str | None) -> frozenset[str] | None:
    if values is None:
        return None
    items = [values] if isinstance(values, str) else values
    for item in items:
        if not item or len(item) > _MAX_VALUE:
            raise BadRequest(f"{name} must be between 1 and {_MAX_VALUE} characters")
    return frozenset(items)


SinceQ = Annotated[
    str | None,
    Query(description="Recorded at or after this ISO 8601 date-time (with a time zone)."),
]
UntilQ = Annotated[
    str | None,
    Query(description="Recorded before this ISO 8601 date-time (with a time zone)."),
]
LimitQ = Annotated[
    str | None, Query(description=f"Page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}).")
]
CursorQ = Annotated[
    str | None, Query(description="The next_cursor of the previous page, as returned.")
]
OrderQ = Annotated[
    str | None, Query(description="desc (newest first, the default) or asc, in chain order.")
]
PatientQ = Annotated[str | None, Query(description="Patient resource id.")]
UserQ = Annotated[str | None, Query(description="User id of the acting user.")]
ActionQ = Annotated[
    list[str] | None,
    Query(description="Action (read, create, login, ...); repeat for any of several."),
]
OutcomeQ = Annotated[
    list[str] | None, Query(description="success, failure or denied; repeat for several.")
]
ResourceTypeQ = Annotated[str | None, Query(description="Resource type, e.g. Observation.")]
PurposeQ = Annotated[str | None, Query(description="v3 PurposeOfUse code, e.g. TREAT, BTG.")]


def _window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    start, end = _instant("since", since), _instant("until", until)
    if start is not None and end is not None and start >= end:
        raise BadRequest("since must be earlier than until")
    return start, end


def event_json(event: StoredEvent) -> dict[str, Any]:
    """One record as the reports show it: identifiers only, as stored."""
    return {
        "chain_index": event.chain_index,
        "recorded_at": timestamp_text(event.recorded_at),
        **asdict(event.record),
        "record_hash": event.record_hash,
    }


def _answer(
    request: Request,
    principal: Principal,
    filters: EventFilters,
    *,
    limit: str | None,
    cursor: str | None,
    order: str | None,
) -> JSONResponse:
    page_size, direction = _limit(limit), _order(order)
    if cursor is not None and not cursor:
        raise BadRequest("cursor must not be empty")

    def run(conn: Connection, tenant: str) -> EventPage:
        return query_events(conn, tenant, filters, limit=page_size, cursor=cursor, order=direction)

    page = audited_read(request, principal, run, patient_id=scoped_patient(filters))
    return JSONResponse(
        {"data": [event_json(e) for e in page.events], "next_cursor": page.next_cursor}
    )


@router.get("/events", summary="Audit events, filtered (sortable, paged)")
def list_events(
    request: Request,
    principal: Auditor,
    since: SinceQ = None,
    until: UntilQ = None,
    limit: LimitQ = None,
    cursor: CursorQ = None,
    order: OrderQ = None,
    patient_id: PatientQ = None,
    user_id: UserQ = None,
    action: ActionQ = None,
    outcome: OutcomeQ = None,
    resource_type: ResourceTypeQ = None,
    purpose_of_use: PurposeQ = None,
) -> JSONResponse:
    """Every filter at once; with since and until this is the by-period report."""
    _only(request, PAGING | FILTERS)
    start, end = _window(since, until)
    filters = EventFilters(
        patient_ids=_values("patient_id", patient_id),
        user_ids=_values("user_id", user_id),
        actions=_values("action", action),
        outcomes=_values("outcome", outcome),
        resource_types=_values("resource_type", resource_type),
        purposes=_values("purpose_of_use", purpose_of_use),
        since=start,
        until=end,
    )
    return _answer(request, principal, filters, limit=limit, cursor=cursor, order=order)


@router.get("/patients/{patient_id}", summary="Accounting of disclosures of one patient")
def patient_report(
    request: Request,
    principal: Auditor,
    patient_id: str,
    since: SinceQ = None,
    until: UntilQ = None,
    limit: LimitQ = None,
    cursor: CursorQ = None,
    order: OrderQ = None,
    user_id: UserQ = None,
    action: ActionQ = None,
    outcome: OutcomeQ = None,
    resource_type: ResourceTypeQ = None,
    purpose_of_use: PurposeQ = None,
) -> JSONResponse:
    """Who accessed this patient's record, when, how and why."""
    _only(request, PAGING | (FILTERS - {"patient_id"}))
    _values("patient_id", patient_id)
    start, end = _window(since, until)
    base = EventFilters(
        user_ids=_values("user_id", user_id),
        actions=_values("action", action),
        outcomes=_values("outcome", outcome),
        resource_types=_values("resource_type", resource_type),
        purposes=_values("purpose_of_use", purpose_of_use),
        since=start,
        until=end,
    )
    return _answer(
        request,
        principal,
        disclosures_of_patient(patient_id, base),
        limit=limit,
        cursor=cursor,
        order=order,
    )


@router.get("/users/{user_id}", summary="Activity of one user")
def user_report(
    request: Request,
    principal: Auditor,
    user_id: str,
    since: SinceQ = None,
    until: UntilQ = None,
    limit: LimitQ = None,
    cursor: CursorQ = None,
    order: OrderQ = None,
    patient_id: PatientQ = None,
    action: ActionQ = None,
    outcome: OutcomeQ = None,
    resource_type: ResourceTypeQ = None,
    purpose_of_use: PurposeQ = None,
) -> JSONResponse:
    """Everything one user did, sign-ins included."""
    _only(request, PAGING | (FILTERS - {"user_id"}))
    _values("user_id", user_id)
    start, end = _window(since, until)
    base = EventFilters(
        patient_ids=_values("patient_id", patient_id),
        actions=_values("action", action),
        outcomes=_values("outcome", outcome),
        resource_types=_values("resource_type", resource_type),
        purposes=_values("purpose_of_use", purpose_of_use),
        since=start,
        until=end,
    )
    return _answer(
        request, principal, activity_of_user(user_id, base), limit=limit, cursor=cursor, order=order
    )


@router.get("/break-glass", summary="Break-glass review")
def break_glass_report(
    request: Request,
    principal: Auditor,
    since: SinceQ = None,
    until: UntilQ = None,
    limit: LimitQ = None,
    cursor: CursorQ = None,
    order: OrderQ = None,
    patient_id: PatientQ = None,
    user_id: UserQ = None,
    action: ActionQ = None,
    outcome: OutcomeQ = None,
    resource_type: ResourceTypeQ = None,
) -> JSONResponse:
    """Emergency accesses: purpose of use BTG, and the break-glass events themselves."""
    _only(request, PAGING | (FILTERS - {"purpose_of_use"}))
    start, end = _window(since, until)
    base = EventFilters(
        patient_ids=_values("patient_id", patient_id),
        user_ids=_values("user_id", user_id),
        actions=_values("action", action),
        outcomes=_values("outcome", outcome),
        resource_types=_values("resource_type", resource_type),
        since=start,
        until=end,
    )
    return _answer(
        request, principal, break_glass_review(base), limit=limit, cursor=cursor, order=order
    )


@router.get("/failed-logins", summary="Failed sign-ins and second factors")
def failed_login_report(
    request: Request,
    principal: Auditor,
    since: SinceQ = None,
    until: UntilQ = None,
    limit: LimitQ = None,
    cursor: CursorQ = None,
    order: OrderQ = None,
    user_id: UserQ = None,
) -> JSONResponse:
    """Refused logins and MFA codes (failure or denied), e.g. to spot password guessing."""
    _only(request, PAGING | {"user_id"})
    start, end = _window(since, until)
    base = EventFilters(user_ids=_values("user_id", user_id), since=start, until=end)
    return _answer(request, principal, failed_logins(base), limit=limit, cursor=cursor, order=order)
