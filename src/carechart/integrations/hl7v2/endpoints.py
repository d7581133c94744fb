"""``POST /api/v1/hl7``: one HL7 v2 message (ER7 text) in, its acknowledgement out.

The HTTP counterpart of the MLLP listener, for interface engines that speak HTTPS. The
caller is an authenticated backend-service client (a user's session is refused, 403); its
token's scopes decide what the message may write, through the same policy point as the FHIR API, and every resource is
audited as that client.

Status codes are the transport's verdict, the ACK is the message's: 200 with the ACK
(``application/hl7-v2``) whether it says AA, AE or AR; 401 without a valid token; 403 for a
client that may create none of the resource types HL7 ingest writes (a client that may
write some of them gets an AE for a message needing the others); 413 over the size limit;
415 for a body that is not HL7 ER7 text. An incoming ACK is not acknowledged (HL7 v2.5.1
section 2.9.2): 204.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from carechart.access.http import request_guard
from carechart.access.policy import AccessGuard
from carechart.auth.config import context_of
from carechart.auth.principal import Role
from carechart.context import AppContext
from carechart.errors import Forbidden, UnsupportedMediaType
from carechart.fhir.http import read_body
from carechart.integrations.events.outbox import OutboxDispatcher
from carechart.integrations.events.settings import EventSettings, build_publisher
from carechart.integrations.hl7v2.service import INTERFACE_TYPES, Hl7Service
from carechart.integrations.hl7v2.settings import Hl7Settings

HL7_MEDIA_TYPE = "application/hl7-v2"
# ER7 (pipe-delimited) media types seen in practice; text/plain is what most engines send.
ACCEPTED_MEDIA_TYPES = frozenset(
    {HL7_MEDIA_TYPE, "application/hl7-v2+er7", "x-application/hl7-v2+er7", "text/plain"}
)

router = APIRouter(prefix="/api/v1", tags=["hl7"])
_lock = threading.Lock()

_TEXT_BODY = {"schema": {"type": "string", "maxLength": 4 * 1024 * 1024}}


def set_hl7_service(app: FastAPI, service: Hl7Service, max_bytes: int | None = None) -> None:
    """Give the app its HL7 service (a configured dispatcher, an event bus to subscribe to)."""
    app.state.hl7_service = service
    app.state.hl7_max_bytes = max_bytes or service.max_bytes


def hl7_service(app: Any) -> Hl7Service:
    """The app's HL7 service, built on first use from the environment: events go to NATS
    JetStream when ``CARECHART_NATS_URL`` is set, else to in-process subscribers, and are
    delivered right after each commit (or by a background dispatcher, if one was given)."""
    service = getattr(app.state, "hl7_service", None)
    if isinstance(service, Hl7Service):
        return service
    with _lock:
        service = getattr(app.state, "hl7_service", None)
        if isinstance(service, Hl7Service):
            return service
        ctx: AppContext = context_of(app)
        settings = Hl7Settings()
        dispatcher = OutboxDispatcher(ctx.engine, build_publisher(EventSettings()))
        service = Hl7Service(ctx, dispatcher=dispatcher, max_bytes=settings.hl7_max_bytes)
        set_hl7_service(app, service, settings.hl7_max_bytes)
        return service


def _refuse_client(ctx: AppContext, guard: AccessGuard) -> None:
    guard.record("ingest", None, None, None, "denied")
    ctx.audit(guard.tenant, guard.take_records(outcomes=("denied",)))


@router.post(
    "/hl7",
    summary="Submit one HL7 v2 message (ER7); the answer is its ACK",
    response_class=Response,
    responses={
        200: {"description": "The ACK (MSA-1 AA, AE or AR)", "content": {HL7_MEDIA_TYPE: {}}},
        204: {"description": "The message was itself an acknowledgement"},
        401: {"description": "No valid token"},
        403: {"description": "The caller is not an interface client that may write"},
        413: {"description": "The message is over the size limit"},
        415: {"description": "The body is not HL7 ER7 text"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {HL7_MEDIA_TYPE: _TEXT_BODY, "text/plain": _TEXT_BODY},
        }
    },
)
async def post_hl7(request: Request) -> Response:
    ctx: AppContext = context_of(request.app)
    guard = await run_in_threadpool(request_guard, request, write=True)
    # Interfaces are registered clients acting for themselves (the backend-service grant),
    # never a person's session: a message names its own patients, outside any care team.
    interface = guard.principal.role is Role.system and guard.principal.user_id is None
    if not interface or not any(guard.allows(rtype, "c") for rtype in INTERFACE_TYPES):
        await run_in_threadpool(_refuse_client, ctx, guard)
        raise Forbidden("this client may not submit HL7 messages")
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedMediaType("an HL7 v2 message is sent as application/hl7-v2 or text/plain")
    service = await run_in_threadpool(hl7_service, request.app)
    limit = int(getattr(request.app.state, "hl7_max_bytes", service.max_bytes))
    data = await read_body(request, limit)
    result = await run_in_threadpool(service.ingest, data, lambda _application: guard, notify=False)
    # Events are delivered once the ACK is on its way: a slow broker never delays it.
    dispatcher = service.dispatcher
    background = (
        BackgroundTask(dispatcher.notify) if dispatcher is not None and result.events else None
    )
    if result.ack is None:
        return Response(status_code=204, background=background)
    return Response(
        content=result.ack.encode("utf-8"),
        media_type=f"{HL7_MEDIA_TYPE}; charset=utf-8",
        background=background,
    )
