"""``POST /oauth2/token`` (RFC 6749 3.2, 4.1.3, 4.4, 6; RFC 7636 4.6; SMART App Launch v2;
SMART Backend Services; SECURITY A3, A4, A6, A7, C1).

Grants: ``authorization_code`` (single use: a replay fails and revokes the session the code
opened; PKCE S256 verifier; the redirect URI of the request), ``refresh_token`` (rotating, in
the session's family: a reused token revokes it) and ``client_credentials`` (backend services
authenticated with ``private_key_jwt``). Errors are RFC 6749 5.2 JSON; whatever a refusal
changed (a burnt code, a revoked session, a recorded jti, the audit record) is committed
before it is answered, so the handler returns refusals rather than raising them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from carechart.audit.chain import AuditRecord, append
from carechart.auth import accounts, refresh
from carechart.auth.accounts import UserAccount
from carechart.auth.config import components_of
from carechart.auth.dependencies import client_info, identity_service
from carechart.auth.errors import Forbidden, Unauthorized
from carechart.auth.lockout import enforce
from carechart.auth.principal import ClientInfo, Role
from carechart.auth.service import IdentityService
from carechart.auth.smart import pkce, repository, scopes
from carechart.auth.smart.clientauth import (
    AuthenticatedClient,
    ClientAuthError,
    authenticate_client,
)
from carechart.auth.smart.oauth import FormError, endpoint, oauth_error, oauth_json, read_form
from carechart.auth.smart.sealing import open_refresh
from carechart.auth.tokens import issue_access_token
from carechart.errors import EncryptionError

router = APIRouter(tags=["SMART on FHIR"])

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a route, not a secret
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")

_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "grant_type": {"type": "string", "enum": list(GRANT_TYPES)},
                        "code": {"type": "string"},
                        "redirect_uri": {"type": "string"},
                        "code_verifier": {"type": "string"},
                        "client_id": {"type": "string"},
                        "refresh_token": {"type": "string"},
                        "scope": {"type": "string"},
                        "client_assertion_type": {"type": "string"},
                        "client_assertion": {"type": "string"},
                    },
                    "required": ["grant_type"],
                }
            }
        },
    }
}


class _Refusal(Exception):
    """An RFC 6749 error to answer once the unit of work has committed."""

    def __init__(self, error: str, description: str, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.error = error
        self.description = description
        self.reason = reason
        self.status = status
        self.headers: dict[str, str] = {}
        self.audited = False  # the handler wrote a more precise audit record itself


def fhir_user(user: UserAccount) -> str | None:
    """The FHIR resource the user is (SMART ``fhirUser``), relative to the FHIR base."""
    if user.role is Role.patient and user.patient_id is not None:
        return f"Patient/{user.patient_id}"
    if user.practitioner_id is not None:
        return f"Practitioner/{user.practitioner_id}"
    return None


def patient_claim(user: UserAccount, patient_id: str | None) -> str | None:
    """The patient in context: a patient user's own record, whatever was stored."""
    return user.patient_id if user.role is Role.patient else patient_id


def _audit(
    service: IdentityService,
    info: ClientInfo,
    action: str,
    outcome: str,
    *,
    client_id: str | None,
    user_id: str | None = None,
    patient_id: str | None = None,
) -> None:
    append(
        service.conn,
        service.keyring,
        tenant=service.tenant,
        now=service.now,
        record=AuditRecord(
            action=action,
            outcome=outcome,
            user_id=user_id,
            client_id=client_id,
            patient_id=patient_id,
            source_ip=info.source_ip,
            user_agent=info.user_agent,
            correlation_id=info.correlation_id,
        ),
    )


def _user_tokens(
    service: IdentityService,
    user: UserAccount,
    *,
    session_id: str,
    client_id: str,
    scope: str,
    patient_id: str | None,
    refresh_token: str | None,
) -> dict[str, Any]:
    config = service.config
    patient = patient_claim(user, patient_id)
    who = fhir_user(user)
    extra: dict[str, Any] = {"client_id": client_id}
    if patient is not None:
        extra["patient"] = patient
    if who is not None:
        extra["fhirUser"] = who
    key = service.parts.signing_keys.active(service.conn, service.now)
    token = issue_access_token(
        key,
        issuer=config.issuer,
        audience=config.audience,
        subject=user.id,
        tenant=service.tenant,
        now=service.now,
        lifetime=config.access_token_lifetime,
        session_id=session_id,
        scope=scope,
        extra=extra,
    )
    body: dict[str, Any] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": int(config.access_token_lifetime.total_seconds()),
        "scope": scope,
    }
    if patient is not None:
        body["patient"] = patient
    if who is not None:
        body["fhirUser"] = who
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return body


def _required(form: dict[str, str], *names: str) -> list[str]:
    missing = [name for name in names if not form.get(name)]
    if missing:
        raise _Refusal("invalid_request", f"missing {', '.join(missing)}", "missing-parameter")
    return [form[name] for name in names]


def _active_user(service: IdentityService, user_id: str) -> UserAccount | None:
    user = accounts.by_id(service.conn, service.keyring, tenant=service.tenant, user_id=user_id)
    return user if user is not None and user.active else None


def _authorization_code(
    service: IdentityService, caller: AuthenticatedClient, form: dict[str, str], info: ClientInfo
) -> dict[str, Any]:
    client = caller.client
    if client.kind == "backend":
        raise _Refusal("unauthorized_client", "this client may not use this grant", "kind")
    code, redirect_uri, verifier = _required(form, "code", "redirect_uri", "code_verifier")
    claimed = repository.claim_code(service.conn, tenant=service.tenant, code=code, now=service.now)
    if claimed is None:
        raise _Refusal("invalid_grant", "the code is not valid", "code-unknown")
    stored, first_use = claimed

    def burn(reason: str) -> _Refusal:
        # Whatever is wrong, the code is spent and the session it opened ends: a code in the
        # wrong hands must not leave a live session behind (RFC 6749 4.1.2, RFC 9700 4.5).
        repository.revoke_session(
            service.conn,
            tenant=service.tenant,
            session_id=stored.session_id,
            now=service.now,
            reason=reason,
        )
        return _Refusal("invalid_grant", "the code is not valid", reason)

    if not first_use:
        _audit(
            service,
            info,
            "token-reuse",
            "failure",
            client_id=client.client_id,
            user_id=stored.user_id,
        )
        reused = burn("authorization-code-reuse")
        reused.audited = True
        raise reused
    if stored.client_id != client.client_id:
        raise burn("authorization-code-client")
    if stored.expires_at <= service.now:
        raise burn("authorization-code-expired")
    if redirect_uri != stored.redirect_uri:
        raise burn("authorization-code-redirect")
    if not pkce.verifies(verifier, stored.code_challenge):
        raise burn("authorization-code-pkce")
    lapsed = refresh.check_session(
        service.conn,
        tenant=service.tenant,
        session_id=stored.session_id,
        now=service.now,
        policy=service.config.session,
    )
    if lapsed is not None:
        raise _Refusal("invalid_grant", "the code is not valid", f"session-{lapsed}")
    user = _active_user(service, stored.user_id)
    if user is None:
        raise burn("account-inactive")
    next_refresh: str | None = None
    granted = stored.scope.split()
    if scopes.wants_refresh(granted) and stored.sealed_refresh is not None:
        try:
            first = open_refresh(
                service.keyring, service.tenant, stored.code_hash, stored.sealed_refresh
            )
        except EncryptionError:
            raise burn("authorization-code-sealed") from None
        rotated = refresh.rotate_refresh_token(
            service.conn,
            tenant=service.tenant,
            presented=first,
            now=service.now,
            policy=service.config.session,
            client_id=client.client_id,
        )
        if rotated.issued is None:
            raise burn(f"refresh-{rotated.refusal}")
        next_refresh = rotated.issued.refresh_token
    body = _user_tokens(
        service,
        user,
        session_id=stored.session_id,
        client_id=client.client_id,
        scope=stored.scope,
        patient_id=stored.patient_id,
        refresh_token=next_refresh,
    )
    _audit(
        service,
        info,
        "token",
        "success",
        client_id=client.client_id,
        user_id=user.id,
        patient_id=body.get("patient"),
    )
    return body


def _refresh_token(
    service: IdentityService, caller: AuthenticatedClient, form: dict[str, str], info: ClientInfo
) -> dict[str, Any]:
    client = caller.client
    (presented,) = _required(form, "refresh_token")
    session_id = repository.session_of_refresh_token(
        service.conn, tenant=service.tenant, presented=presented
    )
    grant = (
        None
        if session_id is None
        else repository.session_grant(service.conn, tenant=service.tenant, session_id=session_id)
    )
    if grant is None or grant.client_id != client.client_id:
        raise _Refusal("invalid_grant", "the refresh token is not valid", "refresh-client")
    scope = grant.scope
    if form.get("scope"):
        # RFC 6749 6: a narrower scope may be asked for, never a wider one.
        try:
            asked = scopes.split_scope(form["scope"])
        except scopes.ScopeError:
            raise _Refusal("invalid_scope", "the scope is malformed", "scope") from None
        narrowed = scopes.within(asked, grant.scope.split())
        if set(narrowed) != set(scopes.within(asked, asked)) or not scopes.has_resource_scope(
            narrowed
        ):
            raise _Refusal("invalid_scope", "the scope exceeds the original grant", "scope")
        scope = scopes.joined(narrowed)
    rotated = refresh.rotate_refresh_token(
        service.conn,
        tenant=service.tenant,
        presented=presented,
        now=service.now,
        policy=service.config.session,
        client_id=client.client_id,
    )
    if rotated.issued is None:
        action = "token-reuse" if rotated.refusal == "reused" else "token"
        _audit(service, info, action, "failure", client_id=client.client_id, user_id=grant.user_id)
        refused = _Refusal(
            "invalid_grant", "the refresh token is not valid", f"refresh-{rotated.refusal}"
        )
        refused.audited = True
        raise refused
    user = _active_user(service, rotated.issued.user_id)
    if user is None:
        repository.revoke_session(
            service.conn,
            tenant=service.tenant,
            session_id=rotated.issued.session_id,
            now=service.now,
            reason="account-inactive",
        )
        raise _Refusal("invalid_grant", "the refresh token is not valid", "account-inactive")
    body = _user_tokens(
        service,
        user,
        session_id=rotated.issued.session_id,
        client_id=client.client_id,
        scope=scope,
        patient_id=grant.patient_id,
        refresh_token=rotated.issued.refresh_token,
    )
    _audit(service, info, "token", "success", client_id=client.client_id, user_id=user.id)
    return body


def _client_credentials(
    service: IdentityService, caller: AuthenticatedClient, form: dict[str, str], info: ClientInfo
) -> dict[str, Any]:
    client = caller.client
    if client.kind != "backend" or caller.method != "private_key_jwt":
        raise _Refusal("unauthorized_client", "this client may not use this grant", "kind")
    try:
        requested = scopes.split_scope(form.get("scope", ""))
    except scopes.ScopeError:
        raise _Refusal("invalid_scope", "the scope is malformed", "scope") from None
    try:
        grant = service.client_token(
            client, frozenset(requested), replace(info, client_id=client.client_id)
        )
    except Forbidden:
        raise _Refusal(
            "invalid_scope", "no requested scope is granted to this client", "scope"
        ) from None
    except Unauthorized:
        raise _Refusal(
            "invalid_client", "client authentication failed", "client", status=401
        ) from None
    return {
        "access_token": grant.access_token,
        "token_type": "Bearer",
        "expires_in": grant.expires_in,
        "scope": grant.scope,
    }


_GRANTS = {
    "authorization_code": _authorization_code,
    "refresh_token": _refresh_token,
    "client_credentials": _client_credentials,
}


def _exchange(request: Request, form: dict[str, str]) -> Response:
    grant_type = form.get("grant_type")
    if not grant_type:
        return oauth_error("invalid_request", "grant_type is required")
    handler = _GRANTS.get(grant_type)
    if handler is None:
        return oauth_error("unsupported_grant_type", "this grant type is not supported")
    info = client_info(request)
    audiences = frozenset({endpoint(request, TOKEN_PATH)})
    refusal: _Refusal | None = None
    body: dict[str, Any] = {}
    with identity_service(request) as service:
        try:
            caller = authenticate_client(
                service, form, request.headers.get("authorization"), audiences=audiences
            )
        except ClientAuthError as failed:
            _audit(service, info, "token", "failure", client_id=failed.client_id)
            refusal = _Refusal(
                failed.error,
                "client authentication failed"
                if failed.error == "invalid_client"
                else failed.reason,
                failed.reason,
                status=401 if failed.error == "invalid_client" else 400,
            )
            if failed.basic:
                refusal.headers["WWW-Authenticate"] = 'Basic realm="carechart"'
        else:
            try:
                body = handler(
                    service, caller, form, replace(info, client_id=caller.client.client_id)
                )
            except _Refusal as refused:
                refusal = refused
                if not refused.audited:
                    _audit(service, info, "token", "failure", client_id=caller.client.client_id)
    # Committed: burnt codes, revoked sessions, recorded jtis and audit records stay.
    if refusal is not None:
        return oauth_error(
            refusal.error, refusal.description, status=refusal.status, headers=refusal.headers
        )
    return oauth_json(body)


@router.post(TOKEN_PATH, summary="SMART token endpoint", openapi_extra=_FORM_SCHEMA)
async def token(request: Request) -> Response:
    """Exchange a code, a refresh token or a client assertion for an access token."""
    host = request.client.host if request.client else "unknown"
    enforce(components_of(request.app).login_throttle, f"oauth-token\x1f{host}")
    try:
        form = await read_form(request)
    except FormError as malformed:
        return oauth_error("invalid_request", str(malformed))
    return await run_in_threadpool(_exchange, request, form)
