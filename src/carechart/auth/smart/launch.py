"""``POST /api/v1/smart/launch``: the EHR side of a SMART EHR launch (SMART App Launch v2
"launch-ehr", SECURITY B2, C1).

A clinician signed in to Carechart opens an app for a patient she may see; the answer is an
opaque, short-lived launch id that the app passes back as ``launch`` to the authorization
endpoint, where it binds that patient to the token. Only the clinician who created it may
use it, once. Whether she may see the patient is the policy point's answer to reading the
Patient, so an unknown patient and one outside her care look the same (404).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from carechart.access.http import request_guard
from carechart.access.policy import AccessGuard
from carechart.audit.chain import AuditRecord, append
from carechart.auth import clients
from carechart.auth.config import components_of, context_of
from carechart.auth.dependencies import current_principal, request_tenant
from carechart.auth.principal import CLINICIAN_ROLES
from carechart.auth.smart import repository
from carechart.auth.smart.schemas import LaunchCreate, LaunchCreated
from carechart.db.engine import unit_of_work
from carechart.errors import Forbidden, Gone, NotFound

router = APIRouter(prefix="/api/v1/smart", tags=["SMART on FHIR"])

LAUNCH_LIFETIME = timedelta(minutes=5)


def _record(
    guard: AccessGuard, outcome: str, patient_id: str, client_id: str | None
) -> AuditRecord:
    principal = guard.principal
    return AuditRecord(
        action="launch",
        outcome=outcome,
        user_id=principal.user_id,
        client_id=client_id,
        role=principal.role.value,
        patient_id=patient_id,
        resource_type="Patient",
        resource_id=patient_id,
        source_ip=guard.client.source_ip,
        user_agent=guard.client.user_agent,
        purpose_of_use=guard.purpose_of_use(patient_id),
        correlation_id=guard.client.correlation_id,
    )


@router.post(
    "/launch",
    status_code=201,
    response_model=LaunchCreated,
    dependencies=[Depends(current_principal)],
)
async def create_launch(body: LaunchCreate, request: Request) -> LaunchCreated:
    """Open an app for a patient: a launch id valid for five minutes, once."""

    def work() -> LaunchCreated:
        guard = request_guard(request, write=True)
        principal = guard.principal
        ctx = context_of(request.app)
        tenant = request_tenant(request)
        if (
            principal.role not in CLINICIAN_ROLES
            or principal.user_id is None
            or principal.client_id is not None
        ):
            ctx.audit(guard.tenant, [_record(guard, "denied", body.patient_id, body.client_id)])
            raise Forbidden("only clinicians signed in to Carechart launch apps")
        if body.client_id is not None:
            with unit_of_work(ctx.engine, write=False) as conn:
                app = clients.by_id(conn, tenant=tenant, client_id=body.client_id)
            if app is None or not app.active or app.kind == "backend":
                raise NotFound("no app with this client id is registered")
        launch_id = secrets.token_urlsafe(24)
        now = components_of(request.app).clock()
        try:
            with ctx.store(write=True, guard=guard) as store:
                store.read("Patient", body.patient_id)
                repository.create_launch(
                    store.conn,
                    tenant=tenant,
                    launch_id=launch_id,
                    patient_id=body.patient_id,
                    client_id=body.client_id,
                    created_by=principal.user_id,
                    now=now,
                    expires_at=now + LAUNCH_LIFETIME,
                )
                append(
                    store.conn,
                    ctx.keyring,
                    tenant=guard.tenant,
                    record=_record(guard, "success", body.patient_id, body.client_id),
                )
        except Gone:
            raise NotFound(f"Patient/{body.patient_id} is not known") from None
        return LaunchCreated(launch=launch_id, expires_in=int(LAUNCH_LIFETIME.total_seconds()))

    return await run_in_threadpool(work)
