"""Rate limits at the edge of the application, and per principal after authentication.

:class:`RateLimitMiddleware` is pure ASGI: it answers a refused request before any routing,
body parsing or database work, which is the point of shedding load (SECURITY F2). It has to
build its 429 itself, in the two shapes :func:`carechart.app.render_error` uses (importing
the app module from here would be circular: the app imports the auth routes, which import
this package for their throttle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carechart import jsonio
from carechart.auth.errors import RateLimited
from carechart.fhir.outcome import operation_outcome
from carechart.ratelimit.limiter import ALLOWED_ALWAYS, Decision, RateLimiter, Rule
from carechart.ratelimit.rules import RateLimitRules

log = logging.getLogger("carechart.ratelimit")

_FHIR_PREFIXES = ("/fhir", "/api/v1/fhir")
_PRINCIPAL_KINDS = frozenset({"user", "client"})


def is_fhir_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in _FHIR_PREFIXES)


def too_many_requests(path: str, error: RateLimited) -> Response:
    """The 429 for ``path``: an OperationOutcome on the FHIR API, the error envelope elsewhere."""
    headers = {**error.headers, "Cache-Control": "no-store"}
    if is_fhir_path(path):
        return Response(
            content=jsonio.dumps(operation_outcome(error.issues)),
            status_code=error.status,
            media_type="application/fhir+json; charset=utf-8",
            headers=headers,
        )
    body = {
        "status": "error",
        "error": {"code": error.code, "message": error.message, "details": error.details},
    }
    return JSONResponse(body, status_code=error.status, headers=headers)


async def _check(limiter: RateLimiter, key: str, rules: Sequence[Rule]) -> Decision:
    """The first refusal among ``rules``, in order; later rules are not charged for it."""
    for rule in rules:
        try:
            decision = await limiter.hit_async(key, rule)
        except Exception as exc:
            # A limiter bug must not turn into 500s for everyone (SECURITY F1): let it through.
            log.error("rate limiter failed: %s", type(exc).__name__)
            continue
        if not decision.allowed:
            return decision
    return ALLOWED_ALWAYS


def _check_sync(limiter: RateLimiter, key: str, rules: Sequence[Rule]) -> Decision:
    for rule in rules:
        try:
            decision = limiter.hit(key, rule)
        except Exception as exc:
            log.error("rate limiter failed: %s", type(exc).__name__)
            continue
        if not decision.allowed:
            return decision
    return ALLOWED_ALWAYS


class RateLimitMiddleware:
    """Per-IP and per-route limits for every HTTP request but the health and metrics probes.

    It also closes the limiter when the application shuts down (the Redis connections).
    """

    def __init__(self, app: ASGIApp, limiter: RateLimiter, rules: RateLimitRules) -> None:
        self.app = app
        self.limiter = limiter
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] != "http" or self.rules.is_exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        ip_rules = [] if self.rules.per_ip is None else [self.rules.per_ip]
        ip_rules.extend(self.rules.for_route(scope["method"], path))
        decision = await _check(self.limiter, self.rules.client_key(scope), ip_rules)
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        response = too_many_requests(path, RateLimited(decision.retry_after_seconds))
        await response(scope, receive, send)

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def send_then_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                self.limiter.close()
            await send(message)

        return send_then_close


def install(
    app: Starlette, limiter: RateLimiter, rules: RateLimitRules
) -> Callable[[ASGIApp], ASGIApp]:
    """Leave the limiter and rules on ``app.state`` for :func:`enforce_principal` and return
    the middleware factory:
    ``app.add_middleware(install(app, limiter, rules))``."""
    app.state.rate_limiter = limiter
    app.state.rate_limit_rules = rules

    def middleware(inner: ASGIApp, /) -> ASGIApp:
        return RateLimitMiddleware(inner, limiter, rules)

    return middleware


def _principal_rules(request: Request, key: str) -> tuple[RateLimiter, list[Rule]] | None:
    kind, _, ident = key.partition(":")
    if kind not in _PRINCIPAL_KINDS or not ident:
        raise ValueError("a principal key is 'user:<id>' or 'client:<id>'")
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    limits: RateLimitRules | None = getattr(request.app.state, "rate_limit_rules", None)
    if limiter is None or limits is None:
        # Not installed: an application assembled without limits, as in some tests.
        return None
    rules = [] if limits.per_principal is None else [limits.per_principal]
    # The route limits count per principal too, so rotating IPs does not reset them.
    rules.extend(limits.for_route(request.method, request.scope["path"]))
    return limiter, rules


def enforce_principal(request: Request, key: str) -> None:
    """After authentication: raise :class:`RateLimited` (429 + Retry-After) when the user or
    client ``key`` (``"user:<id>"`` or ``"client:<id>"``) is over its limits.

    Blocking when the limiter is Redis: call it from a sync dependency (FastAPI runs those in
    a thread pool), or use :func:`enforce_principal_async` on the event loop.
    """
    found = _principal_rules(request, key)
    if found is None:
        return
    limiter, rules = found
    decision = _check_sync(limiter, key, rules)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_seconds)


async def enforce_principal_async(request: Request, key: str) -> None:
    """:func:`enforce_principal` for async code."""
    found = _principal_rules(request, key)
    if found is None:
        return
    limiter, rules = found
    decision = await _check(limiter, key, rules)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_seconds)
