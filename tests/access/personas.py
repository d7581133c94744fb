"""Callers for the access tests: a token for every persona of the role matrix.

Tokens come from the real identity service (a login over HTTP for users, the backend-service
grant for clients), so what the tests exercise is exactly what production verifies.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from starlette.testclient import TestClient
from tests.auth.identity import admin_with_mfa, create_user, login

from carechart.auth import clients
from carechart.auth.config import AuthComponents
from carechart.auth.principal import ClientInfo, Role
from carechart.auth.service import IdentityService
from carechart.context import AppContext
from carechart.db.engine import unit_of_work

FULL_SYSTEM_SCOPE = ("system/*.cruds",)


def register_backend(
    ctx: AppContext,
    parts: AuthComponents,
    *,
    scope: Sequence[str] = FULL_SYSTEM_SCOPE,
    territories: Sequence[str] = (),
) -> clients.OAuthClient:
    tenant = ctx.settings.default_tenant
    ctx.keyring.active(tenant)
    with unit_of_work(ctx.engine, write=True) as conn:
        return clients.create(
            conn,
            tenant=tenant,
            client_id=f"backend-{secrets.token_hex(4)}",
            name="test backend service",
            kind="backend",
            scope=scope,
            territories=territories,
            now=parts.clock(),
        )


def system_token(
    ctx: AppContext,
    parts: AuthComponents,
    *,
    scope: Sequence[str] = FULL_SYSTEM_SCOPE,
    territories: Sequence[str] = (),
) -> str:
    """A backend service's access token (what the client_credentials grant answers)."""
    client = register_backend(ctx, parts, scope=scope, territories=territories)
    tenant = ctx.settings.default_tenant
    with unit_of_work(ctx.engine, write=True) as conn:
        service = IdentityService(conn, ctx.keyring, parts, tenant=tenant, now=parts.clock())
        return service.client_token(client, frozenset(scope), ClientInfo()).access_token


def user_token(
    client: TestClient,
    ctx: AppContext,
    parts: AuthComponents,
    role: Role,
    *,
    practitioner_id: str | None = None,
    patient_id: str | None = None,
    territories: Sequence[str] = (),
) -> str:
    """A signed-in user's access token (administrators pass TOTP first)."""
    if role is Role.admin:
        return admin_with_mfa(client, ctx, parts).access_token
    user, password = create_user(
        ctx,
        parts,
        role=role,
        patient_id=patient_id,
        practitioner_id=practitioner_id,
        territories=tuple(territories),
    )
    answer = login(client, user.email, password)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
