"""``/api/v1/auth`` and ``/.well-known/jwks.json``: thin HTTP over :mod:`carechart.auth.service`.

Each handler opens one unit of work, lets it commit, and only then raises a refusal the
service returned, so counted failures, locks, revoked families and their audit records
survive the error response (SECURITY A4, A6, C1).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from carechart.auth.accounts import UserAccount
from carechart.auth.config import components_of, context_of
from carechart.auth.dependencies import (
    authenticated_principal,
    client_info,
    first_party,
    first_party_principal,
    first_party_session,
    identity_service,
)
from carechart.auth.errors import PasswordChangeRequired
from carechart.auth.lockout import enforce
from carechart.auth.principal import CHANGE_PASSWORD_SCOPE, MFA_ENROLL_SCOPE, Principal
from carechart.auth.schemas import (
    ChangePasswordRequest,
    LoginRequest,
    MeRead,
    MfaEnrollResponse,
    MfaRequiredResponse,
    MfaVerifyRequest,
    PasswordChangedResponse,
    RefreshRequest,
    TokenResponse,
    UserCreate,
    UserRead,
)
from carechart.auth.service import MfaChallenge, NewAccount, TokenGrant
from carechart.db.engine import unit_of_work

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
well_known_router = APIRouter(tags=["auth"])

# Apps acting for a user may end their session, nothing else here.
AnySession = Annotated[Principal, Depends(first_party_session)]
FullSession = Annotated[Principal, Depends(first_party_principal)]
AppOrSession = Annotated[Principal, Depends(authenticated_principal)]


def _throttle(request: Request, route: str) -> None:
    """Per-IP allowance on the credential-guessing routes (SECURITY A4, F1): 429 + Retry-After."""
    host = request.client.host if request.client else "unknown"
    enforce(components_of(request.app).login_throttle, f"{route}\x1f{host}")


def _token_response(grant: TokenGrant) -> TokenResponse:
    return TokenResponse(
        access_token=grant.access_token,
        expires_in=grant.expires_in,
        scope=grant.scope,
        refresh_token=grant.refresh_token,
        refresh_expires_at=grant.refresh_expires_at,
        must_change_password=grant.scope == CHANGE_PASSWORD_SCOPE,
        mfa_enrollment_required=grant.scope == MFA_ENROLL_SCOPE,
    )


def _user_read(user: UserAccount) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "full_name": user.full_name,
        "role": user.role,
        "patient_id": user.patient_id,
        "practitioner_id": user.practitioner_id,
        "territories": list(user.territories),
        "active": user.active,
        "must_change_password": user.must_change_password,
        "created_at": user.created_at,
    }


@router.post("/login", response_model=TokenResponse | MfaRequiredResponse)
def login(body: LoginRequest, request: Request) -> TokenResponse | MfaRequiredResponse:
    """Password sign-in: tokens, or an MFA ticket when the account has TOTP (then ``mfa/verify``)."""
    _throttle(request, "login")
    with identity_service(request) as service:
        outcome = service.login(body.email, body.password, client_info(request))
    result = outcome.result()
    if isinstance(result, MfaChallenge):
        return MfaRequiredResponse(mfa_ticket=result.ticket, expires_in=result.expires_in)
    return _token_response(result)


@router.post("/mfa/verify", response_model=TokenResponse)
def verify_mfa(body: MfaVerifyRequest, request: Request) -> TokenResponse:
    """A TOTP code: with ``mfa_ticket`` it completes a sign-in; with a bearer token instead it
    confirms an enrolment or lifts the session to MFA-passed (a new access token)."""
    _throttle(request, "mfa")
    if body.mfa_ticket is not None:
        with identity_service(request) as service:
            outcome = service.complete_mfa(body.mfa_ticket, body.code, client_info(request))
        return _token_response(outcome.result())
    principal = first_party(authenticated_principal(request))
    if CHANGE_PASSWORD_SCOPE in principal.scopes:
        raise PasswordChangeRequired()
    with identity_service(request) as service:
        outcome = service.step_up(principal, body.code, client_info(request))
    return _token_response(outcome.result())


@router.post("/mfa/enroll", response_model=MfaEnrollResponse)
def enroll_mfa(principal: AnySession, request: Request) -> MfaEnrollResponse:
    """A new TOTP seed for the signed-in user; the URI is shown this once. Confirm it with a
    first code at ``mfa/verify``."""
    if CHANGE_PASSWORD_SCOPE in principal.scopes:
        raise PasswordChangeRequired()
    with identity_service(request) as service:
        outcome = service.enroll_mfa(principal, client_info(request))
    return MfaEnrollResponse(provisioning_uri=outcome.result())


@router.post("/refresh", response_model=TokenResponse)
def refresh(body: RefreshRequest, request: Request) -> TokenResponse:
    """Exchange a refresh token for new tokens; a reused one revokes its whole session."""
    _throttle(request, "refresh")
    with identity_service(request) as service:
        outcome = service.refresh(body.refresh_token, client_info(request))
    return _token_response(outcome.result())


@router.post("/logout", status_code=204, response_class=Response)
def logout(principal: AppOrSession, request: Request) -> Response:
    """End the session on the server: its access and refresh tokens stop working at once."""
    with identity_service(request) as service:
        service.logout(principal, client_info(request))
    return Response(status_code=204)


@router.post("/change-password", response_model=PasswordChangedResponse)
def change_password(
    body: ChangePasswordRequest, principal: AnySession, request: Request
) -> PasswordChangedResponse:
    """Replace the password; every session of the account ends, so sign in again."""
    _throttle(request, "change-password")
    with identity_service(request) as service:
        outcome = service.change_password(
            principal, body.current_password, body.new_password, client_info(request)
        )
    outcome.result()
    return PasswordChangedResponse()


@router.get("/me", response_model=MeRead)
def me(principal: FullSession, request: Request) -> MeRead:
    with identity_service(request) as service:
        user, enrolled = service.me(principal)
    return MeRead(
        **_user_read(user),
        mfa_enrolled=enrolled,
        session_mfa_passed=principal.mfa_passed,
        scopes=sorted(principal.scopes),
    )


@router.post("/register", response_model=UserRead, status_code=201)
def register(body: UserCreate, principal: FullSession, request: Request) -> UserRead:
    """Create an account (administrators with an MFA-passed session only)."""
    new = NewAccount(
        email=body.email,
        full_name=body.full_name,
        role=body.role,
        password=body.password,
        patient_id=body.patient_id,
        territories=tuple(body.territories),
        must_change_password=body.must_change_password,
        practitioner_id=body.practitioner_id,
    )
    with identity_service(request) as service:
        outcome = service.register(principal, new, client_info(request))
    return UserRead(**_user_read(outcome.result()))


@well_known_router.get("/.well-known/jwks.json")
def jwks(request: Request) -> Response:
    """The public keys that verify our access tokens (RFC 7517 5)."""
    ctx = context_of(request.app)
    parts = components_of(request.app)
    now = parts.clock()
    with unit_of_work(ctx.engine, write=False) as conn:
        document = parts.signing_keys.jwks(conn, now)
    if not document["keys"]:
        with unit_of_work(ctx.engine, write=True) as conn:
            parts.signing_keys.active(conn, now)
            document = parts.signing_keys.jwks(conn, now)
    return JSONResponse(document, media_type="application/jwk-set+json")
