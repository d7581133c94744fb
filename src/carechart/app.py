"""The ASGI application: the FHIR API at /fhir (alias /api/v1/fhir) and operations routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carechart import __version__, jsonio
from carechart.access.endpoints import router as access_router
from carechart.audit.endpoints import router as audit_router
from carechart.audit.fhir import fhir_router as audit_fhir_router
from carechart.auth.dependencies import current_principal
from carechart.auth.endpoints import router as auth_router
from carechart.auth.endpoints import well_known_router
from carechart.auth.smart import discovery_router as smart_discovery_router
from carechart.auth.smart import router as smart_router
from carechart.config import Settings, get_settings
from carechart.context import AppContext
from carechart.errors import CarechartError, Issue
from carechart.fhir.outcome import operation_outcome
from carechart.fhir.router import build_public_router, build_router, read_route
from carechart.integrations.hl7v2.endpoints import router as hl7_router
from carechart.ratelimit import build_limiter, rules_from_settings
from carechart.ratelimit import install as install_rate_limits

log = logging.getLogger("carechart")

_FHIR_PREFIXES = ("/fhir", "/api/v1/fhir")
_HTTP_CODES = {
    400: ("BAD_REQUEST", "invalid"),
    404: ("NOT_FOUND", "not-found"),
    405: ("METHOD_NOT_ALLOWED", "not-supported"),
    413: ("PAYLOAD_TOO_LARGE", "too-costly"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "not-supported"),
    422: ("VALIDATION_ERROR", "invalid"),
}


def _is_fhir(request: Request) -> bool:
    path = request.url.path
    return any(path == p or path.startswith(p + "/") for p in _FHIR_PREFIXES)


def render_error(
    request: Request,
    status: int,
    code: str,
    message: str,
    issues: list[Issue],
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """FHIR paths answer with an OperationOutcome; the native API with its error envelope."""
    if _is_fhir(request):
        return Response(
            content=jsonio.dumps(operation_outcome(issues)),
            status_code=status,
            media_type="application/fhir+json; charset=utf-8",
            headers=headers,
        )
    return JSONResponse(
        {"status": "error", "error": {"code": code, "message": message, "details": details or {}}},
        status_code=status,
        headers=headers,
    )


class NoStoreMiddleware:
    """Responses may carry PHI: no cache may keep them (SECURITY D6)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"cache-control", b"no-store"))
                headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_header)


class FhirAliasMiddleware:
    """Serve ``/api/v1/fhir/...`` as ``/fhir/...``: one route table to match instead of two
    (route matching is linear, and reads are the hot path). The alias is remembered so
    Location headers and full URLs keep the base the client used."""

    ALIAS = "/api/v1/fhir"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == self.ALIAS or path.startswith(self.ALIAS + "/"):
                scope = dict(scope)
                scope["path"] = "/fhir" + path[len(self.ALIAS) :]
                raw: bytes = scope.get("raw_path") or path.encode()
                scope["raw_path"] = b"/fhir" + raw[len(self.ALIAS) :]
                scope["carechart.fhir_base"] = self.ALIAS
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, ctx: AppContext | None = None) -> FastAPI:
    settings = settings or get_settings()
    context = ctx or AppContext.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="Carechart",
        version=__version__,
        description="FHIR R4 electronic health records server.",
        # Served below behind a token: only the routes of SECURITY B1 answer anonymously.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = context
    # Ahead of the generic FHIR read route, which would take these paths for /{type}/{id}:
    # SMART discovery under the FHIR base, and AuditEvent served from the audit trail.
    app.include_router(smart_discovery_router)
    app.include_router(audit_fhir_router)
    app.include_router(build_public_router(), prefix="/fhir")
    app.router.routes.append(read_route())
    app.include_router(build_router(), prefix="/fhir")
    app.include_router(auth_router)
    app.include_router(access_router)
    app.include_router(audit_router)
    app.include_router(smart_router)
    app.include_router(hl7_router)
    app.include_router(well_known_router)
    app.add_middleware(NoStoreMiddleware)
    app.add_middleware(FhirAliasMiddleware)
    # Outermost: a flood is refused before any other work (SECURITY F1, F2).
    app.add_middleware(
        install_rate_limits(app, build_limiter(settings), rules_from_settings(settings))
    )

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(current_principal)])
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(current_principal)])
    async def api_docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Carechart API")

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.exception_handler(CarechartError)
    async def on_carechart_error(request: Request, exc: CarechartError) -> Response:
        if exc.status >= 500:
            log.error("request failed: %s (%s)", exc.code, type(exc).__name__)
        return render_error(
            request, exc.status, exc.code, exc.message, exc.issues, exc.details, exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code, fhir_code = _HTTP_CODES.get(exc.status_code, ("ERROR", "processing"))
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return render_error(
            request,
            exc.status_code,
            code,
            message,
            [Issue(message=message, code=fhir_code)],
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            Issue(
                message=str(e.get("msg", "invalid")),
                expression=".".join(str(p) for p in e.get("loc", ())),
            )
            for e in exc.errors()
        ]
        return render_error(request, 400, "VALIDATION_ERROR", "the request is not valid", problems)

    @app.exception_handler(OperationalError)
    async def on_database_unavailable(request: Request, exc: OperationalError) -> Response:
        # Fail closed (SECURITY F3): no database, no PHI; the client may retry.
        log.error("database unavailable: %s", type(exc.orig).__name__)
        message = "the database is unavailable; try again shortly"
        return render_error(
            request,
            503,
            "SERVICE_UNAVAILABLE",
            message,
            [Issue(message=message, code="transient")],
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Never echo the exception: it may hold PHI or SQL. Its type is enough to find it.
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return render_error(
            request,
            500,
            "INTERNAL_ERROR",
            "internal error",
            [Issue(message="internal error", code="exception")],
        )

    return app
