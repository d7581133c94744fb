"""``/api/v1/smart/clients``: administrators register SMART apps and backend services
(SMART App Launch v2 "Registering a SMART App", SECURITY A3, A5, C1).

Only an administrator whose session passed MFA may register, list or deactivate clients;
every registration and deactivation is audited in the same transaction. A confidential app's
secret is generated here, answered once, and kept only as an argon2id hash. Deactivating a
client ends every session opened for it, so its tokens stop working at once.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path
from starlette.requests import Request
from starlette.responses import Response

from carechart.access.scopes import parse_scope
from carechart.audit.chain import AuditRecord, append
from carechart.auth import clients
from carechart.auth.config import components_of
from carechart.auth.dependencies import client_info, current_principal, identity_service
from carechart.auth.errors import Forbidden
from carechart.auth.principal import Principal, Role
from carechart.auth.service import IdentityService
from carechart.auth.smart import repository, scopes
from carechart.auth.smart.assertions import InvalidJwks, parse_jwks
from carechart.auth.smart.schemas import ClientCreate, ClientCreated, ClientRead
from carechart.errors import NotFound, Unprocessable

router = APIRouter(prefix="/api/v1/smart", tags=["SMART on FHIR"])

CLIENT_RESOURCE = "OAuthClient"  # resource_type of the audit records about clients
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _audit(
    service: IdentityService,
    request: Request,
    principal: Principal,
    action: str,
    outcome: str,
    client_id: str | None = None,
) -> None:
    info = client_info(request)
    append(
        service.conn,
        service.keyring,
        tenant=service.tenant,
        now=service.now,
        record=AuditRecord(
            action=action,
            outcome=outcome,
            user_id=principal.user_id,
            client_id=principal.client_id,
            role=principal.role.value,
            resource_type=CLIENT_RESOURCE,
            resource_id=client_id,
            source_ip=info.source_ip,
            user_agent=info.user_agent,
            correlation_id=info.correlation_id,
        ),
    )


def administrator(request: Request) -> Principal:
    """An administrator signed in first-party with an MFA-passed session (SECURITY A5);
    anyone else signed in gets 403, and the attempt is audited."""
    principal = current_principal(request)
    if principal.role is not Role.admin or not principal.mfa_passed or principal.client_id:
        with identity_service(request) as service:
            _audit(service, request, principal, "configure", "denied")
        raise Forbidden("only an administrator with multi-factor authentication may do this")
    return principal


Administrator = Annotated[Principal, Depends(administrator)]


def check_redirect_uri(uri: str) -> None:
    """https, or http on the loopback interface for development (RFC 8252 7.3); an absolute
    URI without fragment or user info, compared exactly at authorization time."""
    if not uri.isascii() or any(ch.isspace() or ord(ch) < 0x20 for ch in uri) or "#" in uri:
        raise Unprocessable("a redirect URI must be an absolute URI without fragment")
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise Unprocessable("a redirect URI is not a valid URI") from None
    if not host or parts.username is not None or parts.password is not None:
        raise Unprocessable("a redirect URI needs a host and no user info")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and host in _LOOPBACK_HOSTS:
        return
    raise Unprocessable("a redirect URI must use https (http only for localhost or 127.0.0.1)")


def _check_scope(kind: str, text: str) -> list[str]:
    try:
        tokens = scopes.split_scope(text)
    except scopes.ScopeError as bad:
        raise Unprocessable(str(bad)) from None
    resource = 0
    for position, scope in enumerate(tokens, start=1):
        parsed = parse_scope(scope)
        if parsed is None and scope not in scopes.NON_RESOURCE_SCOPES:
            raise Unprocessable(f"scope number {position} is not one this server knows")
        if kind == "backend" and (parsed is None or parsed.context != "system"):
            raise Unprocessable("a backend service is registered for system/ scopes only")
        if kind != "backend" and parsed is not None and parsed.context == "system":
            raise Unprocessable("system/ scopes are for backend services only")
        resource += parsed is not None
    if not resource:
        raise Unprocessable("register at least one resource scope")
    return tokens


def _check(body: ClientCreate) -> None:
    if body.kind == "backend":
        if body.redirect_uris:
            raise Unprocessable("a backend service has no redirect URIs")
        if body.jwks is None:
            raise Unprocessable("a backend service needs a JWKS with its public keys")
    else:
        if not body.redirect_uris:
            raise Unprocessable("an app needs at least one redirect URI")
        for uri in body.redirect_uris:
            check_redirect_uri(uri)
    if body.kind == "public" and body.jwks is not None:
        raise Unprocessable("a public app has no keys; register it as confidential")
    if body.jwks is not None:
        try:
            parse_jwks(body.jwks)
        except InvalidJwks as bad:
            raise Unprocessable(str(bad)) from None


def _auth_method(client: clients.OAuthClient) -> Any:
    if client.kind == "public":
        return "none"
    return "private_key_jwt" if client.jwks else "client_secret_basic"


def _read(client: clients.OAuthClient) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "kind": client.kind,
        "redirect_uris": list(client.redirect_uris),
        "scope": " ".join(sorted(client.scope)),
        "territories": list(client.territories),
        "active": client.active,
        "created_at": client.created_at,
        "token_endpoint_auth_method": _auth_method(client),
        "jwks": client.jwks,
    }


@router.post("/clients", status_code=201, response_model=ClientCreated)
def register_client(
    body: ClientCreate, principal: Administrator, request: Request
) -> ClientCreated:
    """Register an app or backend service. A confidential app without keys gets a client
    secret, shown in this answer only."""
    _check(body)
    scope = _check_scope(body.kind, body.scope)
    secret: str | None = None
    secret_hash: str | None = None
    if body.kind == "confidential" and body.jwks is None:
        secret = secrets.token_urlsafe(32)
        secret_hash = components_of(request.app).hasher.hash(secret)
    client_id = secrets.token_urlsafe(16)
    with identity_service(request) as service:
        client = clients.create(
            service.conn,
            tenant=service.tenant,
            client_id=client_id,
            name=body.name,
            kind=body.kind,
            scope=scope,
            now=service.now,
            redirect_uris=body.redirect_uris,
            secret_hash=secret_hash,
            jwks=body.jwks,
            territories=body.territories,
            created_by=principal.user_id,
        )
        _audit(service, request, principal, "create", "success", client.client_id)
    return ClientCreated(**_read(client), client_secret=secret)


@router.get("/clients", response_model=list[ClientRead])
def list_clients(principal: Administrator, request: Request) -> list[ClientRead]:
    """Every client registered in this deployment, active or not (no secrets)."""
    with identity_service(request) as service:
        found = repository.list_clients(service.conn, tenant=service.tenant)
    return [ClientRead(**_read(client)) for client in found]


@router.delete("/clients/{client_id}", status_code=204, response_class=Response)
def deactivate_client(
    client_id: Annotated[str, Path(max_length=128)], principal: Administrator, request: Request
) -> Response:
    """Deactivate a client: it can no longer sign anyone in or get tokens, and the sessions
    opened for it end now."""
    with identity_service(request) as service:
        if clients.by_id(service.conn, tenant=service.tenant, client_id=client_id) is None:
            raise NotFound("no client has this id")
        clients.deactivate(service.conn, tenant=service.tenant, client_id=client_id)
        repository.revoke_client_sessions(
            service.conn, tenant=service.tenant, client_id=client_id, now=service.now
        )
        _audit(service, request, principal, "delete", "success", client_id)
    return Response(status_code=204)
