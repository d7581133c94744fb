"""Break-glass (SECURITY B9): emergency access to one patient, for one hour, with a reason.

A clinician outside a patient's care relationship may open a grant; it is audited with
purpose of use BTG, every access under it is audited as BTG too, and auditors list the
grants (with their reasons) for review.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from carechart.access import repository
from carechart.access.http import request_guard
from carechart.access.matrix import BREAK_GLASS_PURPOSE, BREAK_GLASS_ROLES
from carechart.access.policy import AccessGuard
from carechart.audit.chain import AuditRecord, append
from carechart.auth.config import context_of
from carechart.auth.principal import Role
from carechart.errors import Forbidden, NotFound

BREAK_GLASS_DURATION = timedelta(hours=1)

router = APIRouter(prefix="/api/v1/access", tags=["access"])


class BreakGlassRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
    reason: Annotated[str, Field(min_length=10, max_length=1000)]


class BreakGlassRead(BaseModel):
    id: str
    user_id: str
    patient_id: str
    created_at: datetime
    expires_at: datetime
    reason: str | None = None


@router.post("/break-glass", status_code=201, response_model=BreakGlassRead)
async def open_break_glass(body: BreakGlassRequest, request: Request) -> BreakGlassRead:
    """Open a one-hour grant to one patient (physicians and nurses only)."""

    def work() -> BreakGlassRead:
        guard = request_guard(request, write=True)
        principal = guard.principal
        ctx = context_of(request.app)
        if (
            principal.role not in BREAK_GLASS_ROLES
            or principal.user_id is None
            or principal.client_id is not None  # an app acting for the clinician
        ):
            ctx.audit(guard.tenant, [_record(guard, "denied", body.patient_id)])
            raise Forbidden("break-glass is for physicians and nurses")
        now = datetime.now(UTC)
        with ctx.store(write=True, guard=guard) as store:
            if not store.exists("Patient", body.patient_id):
                raise NotFound(f"Patient/{body.patient_id} is not known")
            grant = repository.open_grant(
                store.conn,
                ctx.keyring,
                tenant=guard.tenant,
                user_id=principal.user_id,
                patient_id=body.patient_id,
                reason=body.reason,
                now=now,
                expires_at=now + BREAK_GLASS_DURATION,
            )
            append(
                store.conn,
                ctx.keyring,
                tenant=guard.tenant,
                record=_record(guard, "success", body.patient_id),
            )
        return BreakGlassRead(
            id=grant.id,
            user_id=grant.user_id,
            patient_id=grant.patient_id,
            created_at=grant.created_at,
            expires_at=grant.expires_at,
        )

    return await run_in_threadpool(work)


@router.get("/break-glass", response_model=list[BreakGlassRead])
async def review_break_glass(
    request: Request,
    since: Annotated[datetime | None, Query(description="Only grants opened since.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[BreakGlassRead]:
    """Grants with their reasons, newest first, for the auditor's review."""

    def work() -> list[BreakGlassRead]:
        guard = request_guard(request, write=False)
        ctx = context_of(request.app)
        if guard.principal.role is not Role.auditor:
            ctx.audit(guard.tenant, [_record(guard, "denied", None, action="read")])
            raise Forbidden("break-glass review is for auditors")
        with ctx.store(write=True, guard=guard) as store:
            grants = repository.list_grants(
                store.conn, ctx.keyring, tenant=guard.tenant, since=since, limit=limit
            )
            append(
                store.conn,
                ctx.keyring,
                tenant=guard.tenant,
                record=_record(guard, "success", None, action="read"),
            )
        return [
            BreakGlassRead(
                id=g.id,
                user_id=g.user_id,
                patient_id=g.patient_id,
                created_at=g.created_at,
                expires_at=g.expires_at,
                reason=g.reason,
            )
            for g in grants
        ]

    return await run_in_threadpool(work)


def _record(
    guard: AccessGuard, outcome: str, patient_id: str | None, action: str = "break-glass"
) -> AuditRecord:
    p = guard.principal
    return AuditRecord(
        action=action,
        outcome=outcome,
        user_id=p.user_id,
        client_id=p.client_id,
        role=p.role.value,
        patient_id=patient_id,
        resource_type="Patient" if patient_id else None,
        resource_id=patient_id,
        source_ip=guard.client.source_ip,
        user_agent=guard.client.user_agent,
        purpose_of_use=BREAK_GLASS_PURPOSE if action == "break-glass" else None,
        correlation_id=guard.client.correlation_id,
    )
