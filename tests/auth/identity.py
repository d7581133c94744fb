"""Helpers of the identity HTTP tests: accounts, sign-in, TOTP codes, the audit trail."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2
import sqlalchemy as sa
from starlette.testclient import TestClient

from carechart.auth.accounts import UserAccount
from carechart.auth.config import AuthComponents, AuthConfig
from carechart.auth.lockout import InMemoryTokenBucket, Throttle
from carechart.auth.passwords import PasswordHasher
from carechart.auth.principal import Role
from carechart.auth.service import ClientInfo, IdentityService, NewAccount
from carechart.auth.tokens import CLOCK_LEEWAY, SigningKeyStore
from carechart.auth.totp import totp
from carechart.context import AppContext
from carechart.crypto.keys import MasterKey
from carechart.db.auth_schema import audit_event
from carechart.db.engine import unit_of_work


def strong_password() -> str:
    return f"lantern {secrets.token_hex(6)} meadow"


def new_email(name: str = "user") -> str:
    return f"{name}-{secrets.token_hex(4)}@clinic.example"


def create_user(
    ctx: AppContext,
    parts: AuthComponents,
    *,
    email: str | None = None,
    role: Role = Role.nurse,
    password: str | None = None,
    must_change_password: bool = False,
    patient_id: str | None = None,
    practitioner_id: str | None = None,
    territories: tuple[str, ...] = (),
) -> tuple[UserAccount, str]:
    tenant = ctx.settings.default_tenant
    password = password or strong_password()
    ctx.keyring.active(tenant)
    with unit_of_work(ctx.engine, write=True) as conn:
        user = IdentityService(
            conn, ctx.keyring, parts, tenant=tenant, now=parts.clock()
        ).create_account(
            NewAccount(
                email=email or new_email(role.value),
                full_name=f"Test {role.value.title()}",
                role=role,
                password=password,
                must_change_password=must_change_password,
                patient_id=patient_id,
                practitioner_id=practitioner_id,
                territories=territories,
            ),
            actor=None,
            client=ClientInfo(),
        )
    return user, password


def login(client: TestClient, email: str, password: str) -> httpx2.Response:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def totp_secret(provisioning_uri: str) -> bytes:
    encoded = parse_qs(urlparse(provisioning_uri).query)["secret"][0]
    return base64.b32decode(encoded + "=" * (-len(encoded) % 8))


def current_code(parts: AuthComponents, secret: bytes) -> str:
    return totp(secret, parts.clock())


@dataclass
class SignedInAdmin:
    user: UserAccount
    password: str
    secret: bytes
    access_token: str
    refresh_token: str


def admin_with_mfa(client: TestClient, ctx: AppContext, parts: AuthComponents) -> SignedInAdmin:
    """An administrator who has enrolled TOTP in a first session and passed it."""
    user, password = create_user(ctx, parts, role=Role.admin)
    first = login(client, user.email, password).json()
    assert first["mfa_enrollment_required"] is True
    enrolled = client.post("/api/v1/auth/mfa/enroll", headers=bearer(first["access_token"]))
    assert enrolled.status_code == 200, enrolled.text
    secret = totp_secret(enrolled.json()["provisioning_uri"])
    stepped = client.post(
        "/api/v1/auth/mfa/verify",
        json={"code": current_code(parts, secret)},
        headers=bearer(first["access_token"]),
    )
    assert stepped.status_code == 200, stepped.text
    return SignedInAdmin(
        user, password, secret, stepped.json()["access_token"], first["refresh_token"]
    )


def audit_trail(ctx: AppContext) -> list[dict[str, Any]]:
    t = audit_event
    with unit_of_work(ctx.engine, write=False) as conn:
        rows = conn.execute(
            sa.select(t.c.action, t.c.outcome, t.c.user_id, t.c.source_ip, t.c.correlation_id)
            .where(t.c.tenant_id == ctx.settings.default_tenant)
            .order_by(t.c.chain_index)
        ).all()
    return [dict(row._mapping) for row in rows]


class MovableClock:
    """The identity service's clock; tests move it to expire sessions, locks and TOTP steps."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


def light_components(
    master_key: MasterKey, clock: MovableClock, *, throttle: Throttle | None = None
) -> AuthComponents:
    config = AuthConfig()
    return AuthComponents(
        config=config,
        # Light argon2id parameters keep the suite fast; production uses the RFC 9106 profile.
        hasher=PasswordHasher(time_cost=1, memory_cost_kib=1024, parallelism=1),
        signing_keys=SigningKeyStore(
            master_key, published_for=config.access_token_lifetime + CLOCK_LEEWAY
        ),
        login_throttle=throttle or InMemoryTokenBucket(capacity=10_000, rate=1_000),
        clock=clock,
    )
