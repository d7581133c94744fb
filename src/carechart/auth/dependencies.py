"""FastAPI dependencies that turn a request into a verified :class:`Principal` (SECURITY A6, A7, D6).

``current_principal`` is what protected routes depend on: a bearer access token in the
``Authorization`` header (never in the query string, where it would land in access logs and
browser history), verified against our JWKS, issuer and audience, whose session is still live
(logout, idle and absolute limits take effect at once) and whose account is active. Sessions
restricted to one step (change the password, enrol MFA) get 403 everywhere else.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import Request

from carechart.auth.config import components_of, context_of
from carechart.auth.errors import (
    Forbidden,
    MfaEnrollmentRequired,
    PasswordChangeRequired,
    Unauthorized,
)
from carechart.auth.principal import CHANGE_PASSWORD_SCOPE, MFA_ENROLL_SCOPE, Principal
from carechart.auth.service import ClientInfo, IdentityService
from carechart.db.engine import unit_of_work
from carechart.ratelimit import enforce_principal

__all__ = [
    "ClientInfo",
    "Principal",
    "authenticated_principal",
    "bearer_token",
    "client_info",
    "current_principal",
    "identity_service",
    "mfa_principal",
    "request_tenant",
]

# RFC 6750 2.3 allows ``?access_token=``; we refuse it (SECURITY D6), and the other token
# names with it, whatever their case.
QUERY_TOKEN_PARAMETERS = frozenset({"access_token", "refresh_token", "id_token", "mfa_ticket"})
MAX_TOKEN_LENGTH = 8192
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_tenant(request: Request) -> str:
    """The tenant a request addresses. One tenant per deployment until tenant routing exists;
    a token for any other tenant is refused."""
    return context_of(request.app).settings.default_tenant


def client_info(request: Request) -> ClientInfo:
    correlation = request.headers.get("x-request-id") or request.headers.get("x-correlation-id")
    if correlation is None or not _CORRELATION_ID.match(correlation):
        correlation = uuid.uuid4().hex
    return ClientInfo(
        source_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        correlation_id=correlation,
    )


@contextmanager
def identity_service(request: Request) -> Iterator[IdentityService]:
    """One write unit of work with the identity service over it; committed on normal exit."""
    ctx = context_of(request.app)
    parts = components_of(request.app)
    tenant = request_tenant(request)
    # The tenant key is created in its own transaction, before the unit of work opens.
    ctx.keyring.active(tenant)
    with unit_of_work(ctx.engine, write=True) as conn:
        yield IdentityService(conn, ctx.keyring, parts, tenant=tenant, now=parts.clock())


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 2.1), or 401."""
    if any(name.lower() in QUERY_TOKEN_PARAMETERS for name in request.query_params):
        raise Unauthorized("token-in-query")
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("missing")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("malformed")
    return token


def authenticated_principal(request: Request) -> Principal:
    """Any live session, including one restricted to a single step. For the auth endpoints
    only; every other route depends on :func:`current_principal`."""
    token = bearer_token(request)
    with identity_service(request) as service:
        outcome = service.authenticate(token)
    # Committed: a session found lapsed has been revoked for good.
    principal = outcome.result()
    request.state.principal = principal
    return principal


def current_principal(request: Request) -> Principal:
    """The caller of a protected route: 401 without a valid token and live session, 403 while
    the session owes a password change or an MFA enrolment."""
    verified = getattr(request.state, "current_principal", None)
    if isinstance(verified, Principal):
        return verified  # one verification per request
    principal = authenticated_principal(request)
    if CHANGE_PASSWORD_SCOPE in principal.scopes:
        raise PasswordChangeRequired()
    if MFA_ENROLL_SCOPE in principal.scopes:
        raise MfaEnrollmentRequired()
    # Per user or client, whichever address it comes from (SECURITY F1).
    enforce_principal(request, principal.subject)
    request.state.current_principal = principal
    return principal


def first_party(principal: Principal) -> Principal:
    """Refuse an app acting for a user: account, MFA and break-glass routes are for the person
    at the keyboard, whatever scopes an app was granted (SECURITY B7)."""
    if principal.client_id is not None:
        raise Forbidden("this route takes a first-party session, not an app's token")
    return principal


def first_party_session(request: Request) -> Principal:
    return first_party(authenticated_principal(request))


def first_party_principal(request: Request) -> Principal:
    return first_party(current_principal(request))


def mfa_principal(request: Request) -> Principal:
    """For administrative operations (SECURITY A5): the session must have passed TOTP."""
    principal = current_principal(request)
    if not principal.mfa_passed:
        raise Forbidden("this operation needs a session that passed multi-factor authentication")
    return principal
