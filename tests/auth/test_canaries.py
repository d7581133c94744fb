"""SECURITY A3, C7: passwords, tokens, TOTP seeds and account PHI never appear in the logs or,
in clear, in the database. Canary values go through every identity route; then every log record
and every stored row (and, on SQLite, the database files themselves) is searched for them."""

from __future__ import annotations

import base64
import logging
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.auth.identity import (
    MovableClock,
    admin_with_mfa,
    bearer,
    current_code,
    login,
    totp_secret,
)

from carechart.auth.config import AuthComponents
from carechart.context import AppContext
from carechart.db.engine import unit_of_work


def _stored_values(ctx: AppContext) -> list[str | bytes]:
    values: list[str | bytes] = []
    with unit_of_work(ctx.engine, write=False) as conn:
        # Reflected, not declared: every table the database holds, as it is now.
        stored = sa.MetaData()
        stored.reflect(conn)
        for table in stored.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        values.append(bytes(value))
                    elif value is not None:
                        values.append(str(value))
    return values


def _found(canary: str, values: list[str | bytes]) -> bool:
    raw = canary.encode()
    return any(raw in v if isinstance(v, bytes) else canary in v for v in values)


def test_secrets_never_appear_in_logs_or_in_the_database_in_clear(
    auth_client: TestClient,
    ctx: AppContext,
    auth_parts: AuthComponents,
    caplog: pytest.LogCaptureFixture,
    clock: MovableClock,
) -> None:
    # DEBUG everywhere, SQLAlchemy's statement and parameter echo included.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    tag = secrets.token_hex(6)
    email = f"canary.{tag}@clinic.example"
    full_name = f"Canaryname Zz{tag}"
    password = f"canary-password-{tag}-zebra"
    wrong = f"canary-wrong-{tag}-zebra"
    new_password = f"canary-renewed-{tag}-heron"

    admin = admin_with_mfa(auth_client, ctx, auth_parts)
    created = auth_client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": password, "full_name": full_name, "role": "nurse"},
        headers=bearer(admin.access_token),
    )
    assert created.status_code == 201, created.text
    assert login(auth_client, email, wrong).status_code == 401
    first = login(auth_client, email, password).json()
    rotated = auth_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    ).json()
    enrolled = auth_client.post(
        "/api/v1/auth/mfa/enroll", headers=bearer(rotated["access_token"])
    ).json()
    uri = enrolled["provisioning_uri"]
    seed = totp_secret(uri)
    confirmed = auth_client.post(
        "/api/v1/auth/mfa/verify",
        json={"code": current_code(auth_parts, seed)},
        headers=bearer(rotated["access_token"]),
    )
    assert confirmed.status_code == 200
    changed = auth_client.post(
        "/api/v1/auth/change-password",
        json={"current_password": password, "new_password": new_password},
        headers=bearer(confirmed.json()["access_token"]),
    )
    assert changed.status_code == 200, changed.text
    clock.advance(timedelta(seconds=31))
    ticket = login(auth_client, email, new_password).json()["mfa_ticket"]
    final = auth_client.post(
        "/api/v1/auth/mfa/verify",
        json={"mfa_ticket": ticket, "code": current_code(auth_parts, seed)},
    ).json()
    auth_client.post("/api/v1/auth/logout", headers=bearer(final["access_token"]))

    canaries = {
        "password": password,
        "wrong password": wrong,
        "new password": new_password,
        "admin password": admin.password,
        "e-mail": email,
        "e-mail (canonical)": email.casefold(),
        "full name": full_name,
        "access token": first["access_token"],
        "access token (signature)": first["access_token"].rsplit(".", 1)[1],
        "refresh token": first["refresh_token"],
        "rotated refresh token": rotated["refresh_token"],
        "final refresh token": final["refresh_token"],
        "admin refresh token": admin.refresh_token,
        "mfa ticket": ticket,
        "provisioning uri": uri,
        "totp seed (base32)": base64.b32encode(seed).decode().rstrip("="),
    }
    logged = caplog.text + "\n".join(
        str(record.args) for record in caplog.records if record.args is not None
    )
    # The search covered the SQL echo with its bound parameters, not only request lines.
    assert "INSERT INTO user_account" in caplog.text
    assert [name for name, value in canaries.items() if value in logged] == []

    stored = _stored_values(ctx)
    assert [name for name, value in canaries.items() if _found(value, stored)] == []
    assert not any(seed in v for v in stored if isinstance(v, bytes))

    url = ctx.engine.url
    if url.get_backend_name() == "sqlite" and url.database:
        # The files themselves, free pages and write-ahead log included.
        files = [Path(url.database), Path(url.database + "-wal")]
        raw = b"".join(f.read_bytes() for f in files if f.exists())
        assert [name for name, value in canaries.items() if value.encode() in raw] == []
        assert seed not in raw
