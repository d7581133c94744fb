"""``/oauth2/authorize``: the authorization-code flow with PKCE (RFC 6749 4.1, RFC 7636, SMART
App Launch v2 standalone and EHR launch; SECURITY A4, A5, A7, B2, B10).

``GET`` checks the request and shows the sign-in form; ``POST`` (the form) signs the user in
through the identity service's own rules (password, lockout, TOTP), settles the patient in
context, opens the session and redirects to the app with a single-use code.

While the client or its redirect URI is in doubt, errors are shown as a page and never sent
anywhere (RFC 6749 4.1.2.1); once both are established, errors go back to the app.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from carechart.access.http import territories_of
from carechart.access.policy import AccessGuard
from carechart.audit.chain import AuditRecord, append
from carechart.auth import clients
from carechart.auth.config import components_of, context_of
from carechart.auth.dependencies import client_info, identity_service, request_tenant
from carechart.auth.errors import RateLimited
from carechart.auth.lockout import enforce
from carechart.auth.principal import RESTRICTED_SCOPES, ClientInfo, Principal, Role
from carechart.auth.service import MfaChallenge, TokenGrant
from carechart.auth.smart import pages, pkce, repository, scopes
from carechart.auth.smart.oauth import FormError, fhir_bases, query_dict, read_form, with_query
from carechart.auth.smart.sealing import seal_refresh
from carechart.db.engine import unit_of_work
from carechart.errors import CarechartError, Gone, NotFound

router = APIRouter(tags=["SMART on FHIR"])

CODE_LIFETIME = timedelta(minutes=5)
PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
)
_PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LIMITS = {"state": 1024, "scope": 4096, "launch": 256, "aud": 2048}
_GENERIC_FAILURE = "Sign-in failed: check the e-mail address, password and code."


class PageError(Exception):
    """Shown to the user; nothing is sent to the app."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RedirectError(Exception):
    """Sent back to the app's (verified) redirect URI (RFC 6749 4.1.2.1)."""

    def __init__(self, redirect_uri: str, state: str | None, error: str, description: str) -> None:
        super().__init__(description)
        self.redirect_uri = redirect_uri
        self.state = state
        self.error = error
        self.description = description

    def response(self) -> Response:
        params = {"error": self.error, "error_description": self.description}
        if self.state is not None:
            params["state"] = self.state
        return RedirectResponse(with_query(self.redirect_uri, params), status_code=303)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: clients.OAuthClient
    redirect_uri: str
    state: str
    scopes: list[str]  # requested, within the registration; the user narrows them further
    code_challenge: str
    launch: str | None
    hidden: dict[str, str]  # the request's parameters, carried through the form

    @property
    def form_origin(self) -> str | None:
        return pages.redirect_origin(self.redirect_uri)


def _check_request(
    conn: Connection, tenant: str, params: dict[str, str], bases: frozenset[str], now: datetime
) -> AuthorizationRequest:
    client_id = params.get("client_id", "")
    client = clients.by_id(conn, tenant=tenant, client_id=client_id) if client_id else None
    if client is None or not client.active or client.kind == "backend":
        raise PageError("This application is not registered with Carechart.")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None or redirect_uri not in client.redirect_uris:
        raise PageError("The application's redirect address is not one registered for it.")
    state = params.get("state")

    def refuse(error: str, description: str) -> RedirectError:
        return RedirectError(redirect_uri, state, error, description)

    for name, limit in _LIMITS.items():
        if len(params.get(name, "")) > limit:
            raise refuse("invalid_request", f"{name} is too long")
    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", "response_type must be code")
    if not state:
        raise refuse("invalid_request", "state is required")
    if params.get("code_challenge_method") != pkce.METHOD:
        raise refuse("invalid_request", "PKCE is required with code_challenge_method=S256")
    challenge = params.get("code_challenge", "")
    if not pkce.is_challenge(challenge):
        raise refuse("invalid_request", "code_challenge must be a base64url SHA-256 digest")
    if params.get("aud", "").rstrip("/") not in bases:
        raise refuse("invalid_request", "aud must be this server's FHIR base URL")
    try:
        requested = scopes.split_scope(params.get("scope", ""))
    except scopes.ScopeError:
        raise refuse("invalid_scope", "the scope parameter is malformed") from None
    allowed = scopes.within(requested, client.scope)
    if not scopes.has_resource_scope(allowed):
        raise refuse("invalid_scope", "no requested resource scope is allowed for this app")
    launch = params.get("launch") or None
    if launch is not None:
        if scopes.LAUNCH not in allowed:
            raise refuse("invalid_scope", "an EHR launch needs the launch scope")
        found = repository.find_launch(conn, tenant=tenant, launch_id=launch, now=now)
        if found is None or found.client_id not in (None, client.client_id):
            raise refuse("invalid_request", "the launch is unknown or has expired")
    else:
        allowed = [s for s in allowed if s != scopes.LAUNCH]
    hidden = {name: params[name] for name in PARAMETERS if name in params}
    return AuthorizationRequest(client, redirect_uri, state, allowed, challenge, launch, hidden)


def _asks_patient(areq: AuthorizationRequest) -> bool:
    return areq.launch is None and scopes.LAUNCH_PATIENT in areq.scopes


def _form(
    areq: AuthorizationRequest,
    message: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    return pages.sign_in_page(
        client_name=areq.client.name,
        scopes=areq.scopes,
        hidden=areq.hidden,
        ask_patient=_asks_patient(areq),
        message=message,
        status=status,
        form_origin=areq.form_origin,
        headers=headers,
    )


def _load(request: Request, params: dict[str, str]) -> AuthorizationRequest:
    ctx = context_of(request.app)
    now = components_of(request.app).clock()
    with unit_of_work(ctx.engine, write=False) as conn:
        return _check_request(conn, request_tenant(request), params, fhir_bases(request), now)


@router.get(
    "/oauth2/authorize",
    response_class=HTMLResponse,
    summary="SMART authorization endpoint (sign-in form)",
)
def authorize_form(
    request: Request,
    response_type: Annotated[str | None, Query()] = None,
    client_id: Annotated[str | None, Query()] = None,
    redirect_uri: Annotated[str | None, Query()] = None,
    scope: Annotated[str | None, Query()] = None,
    state: Annotated[str | None, Query()] = None,
    aud: Annotated[str | None, Query()] = None,
    code_challenge: Annotated[str | None, Query()] = None,
    code_challenge_method: Annotated[str | None, Query()] = None,
    launch: Annotated[str | None, Query()] = None,
) -> Response:
    """Check the authorization request (RFC 6749 4.1.1 with PKCE S256) and show the sign-in
    form. The declared parameters document the route; the raw query is what is checked."""
    try:
        params = query_dict(request)
    except FormError:
        return pages.error_page("The request repeats a parameter.")
    try:
        areq = _load(request, params)
    except PageError as refusal:
        return pages.error_page(refusal.message, status=refusal.status)
    except RedirectError as refusal:
        return refusal.response()
    return _form(areq)


_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        **{name: {"type": "string"} for name in PARAMETERS},
                        "email": {"type": "string"},
                        "password": {"type": "string"},
                        "totp": {"type": "string"},
                        "patient": {"type": "string"},
                    },
                    "required": ["client_id", "redirect_uri", "email", "password"],
                }
            }
        },
    }
}


@router.post(
    "/oauth2/authorize",
    response_class=HTMLResponse,
    summary="SMART authorization endpoint (sign-in)",
    openapi_extra=_FORM_SCHEMA,
)
async def authorize_sign_in(request: Request) -> Response:
    """Sign in and authorize: redirects to the app with ``code`` and ``state``."""
    try:
        form = await read_form(request)
    except FormError:
        return pages.error_page("The sign-in form was not sent as a form.")
    return await run_in_threadpool(_sign_in, request, form)


@dataclass
class _SignIn:
    principal: Principal | None = None
    refusal: CarechartError | None = None
    needs_code: bool = False
    unfinished: bool = False
    refresh_token: str | None = None


def _authenticate(request: Request, form: dict[str, str], info: ClientInfo) -> _SignIn:
    """The identity service's sign-in, in one unit of work that commits whatever it decided
    (counted failures, locks, audit records) before anything is refused."""
    email, password, code = form.get("email", ""), form.get("password", ""), form.get("totp", "")
    result = _SignIn()
    with identity_service(request) as service:
        outcome = service.login(email, password, info)
        grant: TokenGrant | None = None
        if outcome.refusal is not None:
            result.refusal = outcome.refusal
        elif isinstance(outcome.value, MfaChallenge):
            if not code.strip():
                result.needs_code = True
            else:
                second = service.complete_mfa(outcome.value.ticket, code.strip(), info)
                result.refusal, grant = second.refusal, second.value
        else:
            grant = outcome.value
        if grant is None:
            return result
        if grant.scope in RESTRICTED_SCOPES:
            # The account still owes a password change or an MFA enrolment: not for apps.
            repository.revoke_session(
                service.conn,
                tenant=service.tenant,
                session_id=grant.session_id,
                now=service.now,
                reason="smart-account-unfinished",
            )
            result.unfinished = True
            return result
        verified = service.authenticate(grant.access_token)
        result.refusal, result.principal = verified.refusal, verified.value
        result.refresh_token = grant.refresh_token
        if verified.refusal is not None:
            repository.revoke_session(
                service.conn,
                tenant=service.tenant,
                session_id=grant.session_id,
                now=service.now,
                reason="smart-sign-in-failed",
            )
    return result


def _abandon(request: Request, session_id: str | None, reason: str) -> None:
    """Revoke the session a sign-in opened when the authorization then fails."""
    if session_id is None:
        return
    ctx = context_of(request.app)
    parts = components_of(request.app)
    with unit_of_work(ctx.engine, write=True) as conn:
        repository.revoke_session(
            conn,
            tenant=request_tenant(request),
            session_id=session_id,
            now=parts.clock(),
            reason=reason,
        )


def may_see_patient(request: Request, principal: Principal, patient_id: str) -> bool:
    """Whether the user may read ``Patient/patient_id`` through the policy point (care team,
    break-glass, role); the read is audited like any other."""
    ctx = context_of(request.app)
    territory = territories_of(principal, ctx.settings.default_tenant)[0]
    guard = AccessGuard(principal, territory, client=client_info(request), now=datetime.now(UTC))
    try:
        with ctx.store(write=True, guard=guard) as store:
            store.read("Patient", patient_id)
    except (NotFound, Gone):
        return False
    return True


def _patient_context(
    request: Request, areq: AuthorizationRequest, principal: Principal, form: dict[str, str]
) -> tuple[str | None, str | None]:
    """(the patient in context, or a refusal message)."""
    if areq.launch is not None:
        ctx = context_of(request.app)
        now = components_of(request.app).clock()
        with unit_of_work(ctx.engine, write=False) as conn:
            launch = repository.find_launch(
                conn, tenant=request_tenant(request), launch_id=areq.launch, now=now
            )
        if launch is None or launch.created_by != principal.user_id:
            return None, "This launch was opened by someone else, or it has expired."
        return launch.patient_id, None
    if principal.role is Role.patient:
        return principal.patient_id, None
    if scopes.LAUNCH_PATIENT in areq.scopes:
        chosen = form.get("patient", "").strip()
        if not _PATIENT_ID.fullmatch(chosen):
            return None, "Enter the id of the patient to open the app for."
        return chosen, None
    return None, None


def _sign_in(request: Request, form: dict[str, str]) -> Response:
    try:
        areq = _load(request, form)
    except PageError as refusal:
        return pages.error_page(refusal.message, status=refusal.status)
    except RedirectError as refusal:
        return refusal.response()
    parts = components_of(request.app)
    host = request.client.host if request.client else "unknown"
    try:
        # The native login's per-IP allowance, shared: one budget of guesses (SECURITY A4).
        enforce(parts.login_throttle, f"login\x1f{host}")
    except RateLimited as limited:
        return _form(areq, "Too many attempts; wait a moment.", 429, limited.headers)
    if not form.get("email") or not form.get("password"):
        return _form(areq, "Enter your e-mail address and password.", 400)
    info = replace(client_info(request), client_id=areq.client.client_id)
    signed = _authenticate(request, form, info)
    if signed.unfinished:
        return pages.error_page(
            "Finish setting up your account in Carechart (new password, second factor) first.",
            status=403,
        )
    if signed.needs_code:
        return _form(areq, "Enter the code from your authenticator app.", 401)
    if signed.refusal is not None or signed.principal is None:
        status = signed.refusal.status if signed.refusal is not None else 401
        message = _GENERIC_FAILURE
        if status == 423:
            message = "The account is temporarily locked after too many failed attempts."
        elif status == 429:
            message = "Too many attempts; wait a moment."
        return _form(areq, message, status)
    principal = signed.principal
    user_id, session_id = principal.user_id, principal.session_id
    if user_id is None or session_id is None:  # a user's token always has both
        return _form(areq, _GENERIC_FAILURE, 401)
    patient_id, problem = _patient_context(request, areq, principal, form)
    if problem is not None:
        _abandon(request, session_id, "smart-no-patient")
        return _form(areq, problem, 400)
    granted = scopes.for_user(areq.scopes, principal.role, patient_context=patient_id is not None)
    if not scopes.has_resource_scope(granted):
        _abandon(request, session_id, "smart-no-scope")
        return RedirectError(
            areq.redirect_uri, areq.state, "invalid_scope", "no requested scope fits this user"
        ).response()
    if (
        patient_id is not None
        and principal.role is not Role.patient
        and not may_see_patient(request, principal, patient_id)
    ):
        _abandon(request, session_id, "smart-patient-refused")
        return _form(areq, "No patient you may see has this id.", 403)
    return _issue_code(
        request, areq, principal, user_id, session_id, granted, patient_id, signed.refresh_token
    )


def _issue_code(
    request: Request,
    areq: AuthorizationRequest,
    principal: Principal,
    user_id: str,
    session_id: str,
    granted: list[str],
    patient_id: str | None,
    first_refresh: str | None,
) -> Response:
    ctx = context_of(request.app)
    parts = components_of(request.app)
    tenant = request_tenant(request)
    now = parts.clock()
    code = secrets.token_urlsafe(32)
    scope = scopes.joined(granted)
    with unit_of_work(ctx.engine, write=True) as conn:
        if areq.launch is not None and not repository.claim_launch(
            conn, tenant=tenant, launch_id=areq.launch, now=now
        ):
            refused = True
        else:
            refused = False
            sealed = None
            if scopes.wants_refresh(granted) and first_refresh is not None:
                sealed = seal_refresh(ctx.keyring, tenant, repository.digest(code), first_refresh)
            repository.insert_code(
                conn,
                tenant=tenant,
                code=code,
                client_id=areq.client.client_id,
                user_id=user_id,
                session_id=session_id,
                redirect_uri=areq.redirect_uri,
                scope=scope,
                code_challenge=areq.code_challenge,
                patient_id=patient_id,
                sealed_refresh=sealed,
                now=now,
                expires_at=now + CODE_LIFETIME,
            )
            repository.save_session_grant(
                conn,
                tenant=tenant,
                session_id=session_id,
                client_id=areq.client.client_id,
                user_id=user_id,
                scope=scope,
                patient_id=patient_id,
                now=now,
            )
            info = client_info(request)
            append(
                conn,
                ctx.keyring,
                tenant=tenant,
                now=now,
                record=AuditRecord(
                    action="authorize",
                    outcome="success",
                    user_id=user_id,
                    client_id=areq.client.client_id,
                    role=principal.role.value,
                    patient_id=patient_id,
                    source_ip=info.source_ip,
                    user_agent=info.user_agent,
                    correlation_id=info.correlation_id,
                ),
            )
    if refused:
        _abandon(request, session_id, "smart-launch-used")
        return pages.error_page("This launch has already been used.", status=400)
    target = with_query(areq.redirect_uri, {"code": code, "state": areq.state})
    return RedirectResponse(target, status_code=303, headers=pages.security_headers())
