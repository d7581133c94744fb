"""``POST /oauth2/introspect`` (RFC 7662; SMART App Launch v2 token introspection).

The caller is a confidential client or backend service authenticating itself (it may
introspect the tokens issued to it), or an administrator with a bearer token (any token).
A token is active only if everything that would admit it at the FHIR API admits it now:
signature, issuer, audience, expiry, live session, active account, active client. Anything
else, forged or revoked or someone else's, is simply ``{"active": false}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from carechart.auth import clients
from carechart.auth.dependencies import current_principal, identity_service
from carechart.auth.errors import Forbidden, Unauthorized
from carechart.auth.principal import Role
from carechart.auth.service import IdentityService
from carechart.auth.smart.clientauth import ClientAuthError, authenticate_client
from carechart.auth.smart.oauth import FormError, endpoint, oauth_error, oauth_json, read_form
from carechart.auth.smart.token import TOKEN_PATH
from carechart.auth.tokens import verify_access_token

router = APIRouter(tags=["SMART on FHIR"])

INTROSPECT_PATH = "/oauth2/introspect"
_INACTIVE: dict[str, Any] = {"active": False}
_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "token": {"type": "string"},
                        "token_type_hint": {"type": "string"},
                        "client_id": {"type": "string"},
                        "client_assertion_type": {"type": "string"},
                        "client_assertion": {"type": "string"},
                    },
                    "required": ["token"],
                }
            }
        },
    }
}


def _describe(service: IdentityService, token: str, caller_client: str | None) -> dict[str, Any]:
    """The RFC 7662 answer for ``token``; ``caller_client`` None means an administrator."""
    outcome = service.authenticate(token)
    principal = outcome.value
    if outcome.refusal is not None or principal is None:
        return dict(_INACTIVE)
    keys = service.parts.signing_keys.verification_keys(service.conn, service.now)
    try:
        claims = verify_access_token(
            token,
            keys=keys,
            issuer=service.config.issuer,
            audience=service.config.audience,
            now=service.now,
        )
    except Unauthorized:
        return dict(_INACTIVE)
    client_id = claims.get("client_id")
    if caller_client is not None and client_id != caller_client:
        return dict(_INACTIVE)
    if isinstance(client_id, str) and principal.user_id is not None:
        # A user's token for an app lives only while the app is registered and active.
        app = clients.by_id(service.conn, tenant=service.tenant, client_id=client_id)
        if app is None or not app.active:
            return dict(_INACTIVE)
    answer: dict[str, Any] = {
        "active": True,
        "token_type": "Bearer",
        "scope": claims.get("scope", ""),
        "sub": claims["sub"],
        "iss": claims["iss"],
        "exp": claims["exp"],
        "iat": claims.get("iat"),
    }
    if isinstance(client_id, str):
        answer["client_id"] = client_id
    if principal.patient_id is not None:
        answer["patient"] = principal.patient_id
    if isinstance(claims.get("fhirUser"), str):
        answer["fhirUser"] = claims["fhirUser"]
    return answer


def _introspect(request: Request, form: dict[str, str]) -> Response:
    authorization = request.headers.get("authorization")
    as_admin = authorization is not None and authorization.lower().startswith("bearer ")
    if as_admin:
        principal = current_principal(request)  # 401 / 403 as on every protected route
        if principal.role is not Role.admin or principal.client_id is not None:
            raise Forbidden("only administrators and registered clients may introspect tokens")
    audiences = frozenset({endpoint(request, TOKEN_PATH), endpoint(request, INTROSPECT_PATH)})
    # Returning from inside the unit of work commits it: a recorded jti stays recorded.
    with identity_service(request) as service:
        caller_client: str | None = None
        if not as_admin:
            try:
                caller = authenticate_client(service, form, authorization, audiences=audiences)
            except ClientAuthError as failed:
                return _unauthenticated(failed.basic)
            if caller.method == "none":
                return _unauthenticated(False)  # public clients have nothing to prove
            caller_client = caller.client.client_id
        token = form.get("token")
        if not token:
            return oauth_error("invalid_request", "token is required")
        return oauth_json(_describe(service, token, caller_client))


def _unauthenticated(basic: bool) -> Response:
    headers = {"WWW-Authenticate": 'Basic realm="carechart"'} if basic else None
    return oauth_error(
        "invalid_client", "client authentication failed", status=401, headers=headers
    )


@router.post(
    INTROSPECT_PATH, summary="SMART token introspection (RFC 7662)", openapi_extra=_FORM_SCHEMA
)
async def introspect(request: Request) -> Response:
    """Whether a token is active, and what it grants."""
    try:
        form = await read_form(request)
    except FormError:
        return oauth_error("invalid_request", "the body must be a well-formed form")
    return await run_in_threadpool(_introspect, request, form)
