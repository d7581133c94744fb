"""SECURITY A3, C7 for SMART: client secrets, codes, launch ids, PKCE verifiers, assertions,
access and refresh tokens never appear in the logs or, in clear, in the database."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.auth.identity import SignedInAdmin, bearer, login
from tests.auth.smart.smart_kit import (
    FORM,
    ClientKeyPair,
    Clinic,
    Pkce,
    assertion_claims,
    authorize_params,
    client_credentials,
    code_of,
    exchange,
    register,
    sign_in,
)

from carechart.context import AppContext
from carechart.db.engine import unit_of_work


def _stored_values(ctx: AppContext) -> list[str | bytes]:
    values: list[str | bytes] = []
    with unit_of_work(ctx.engine, write=False) as conn:
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


def test_smart_secrets_stay_out_of_logs_and_database(
    anonymous: TestClient,
    admin: SignedInAdmin,
    clinic: Clinic,
    ctx: AppContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    scope = "launch launch/patient patient/*.rs offline_access"
    confidential = register(anonymous, admin.access_token, kind="confidential", scope=scope)
    app_id, secret = confidential["client_id"], confidential["client_secret"]

    physician = login(anonymous, clinic.physician.email, clinic.physician.password).json()
    launch = anonymous.post(
        "/api/v1/smart/launch", json={"patient_id": "p1"}, headers=bearer(physician["access_token"])
    ).json()["launch"]
    pkce = Pkce()
    params = authorize_params(anonymous, app_id, pkce, scope=scope, launch=launch)
    code = code_of(sign_in(anonymous, params, clinic.physician.email, clinic.physician.password))
    tokens = exchange(anonymous, app_id, code, pkce, auth=(app_id, secret)).json()
    basic = {"Authorization": "Basic " + base64.b64encode(f"{app_id}:{secret}".encode()).decode()}
    refreshed = anonymous.post(
        "/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers={**FORM, **basic},
    ).json()
    introspected = anonymous.post(
        "/oauth2/introspect",
        data={"token": refreshed["access_token"]},
        headers={**FORM, **basic},
    )
    assert introspected.json()["active"] is True

    key = ClientKeyPair.es256()
    backend = register(
        anonymous,
        admin.access_token,
        kind="backend",
        scope="system/*.rs",
        jwks={"keys": [key.jwk()]},
    )
    assertion = key.sign(assertion_claims(backend["client_id"], "http://testserver/oauth2/token"))
    system = client_credentials(anonymous, assertion).json()

    canaries = {
        "client secret": secret,
        "launch id": launch,
        "authorization code": code,
        "pkce verifier": pkce.verifier,
        "access token": tokens["access_token"],
        "access token (signature)": tokens["access_token"].rsplit(".", 1)[1],
        "refresh token": tokens["refresh_token"],
        "rotated refresh token": refreshed["refresh_token"],
        "refreshed access token": refreshed["access_token"],
        "client assertion": assertion,
        "client assertion (signature)": assertion.rsplit(".", 1)[1],
        "backend access token": system["access_token"],
        "password": clinic.physician.password,
    }
    logged = caplog.text + "\n".join(
        str(record.args) for record in caplog.records if record.args is not None
    )
    assert "INSERT INTO smart_authorization_code" in caplog.text
    assert [name for name, value in canaries.items() if value in logged] == []

    stored = _stored_values(ctx)
    found = [
        name
        for name, value in canaries.items()
        if any(value.encode() in v if isinstance(v, bytes) else value in v for v in stored)
    ]
    assert found == []
    url = ctx.engine.url
    if url.get_backend_name() == "sqlite" and url.database:
        files = [Path(url.database), Path(url.database + "-wal")]
        raw = b"".join(f.read_bytes() for f in files if f.exists())
        assert [name for name, value in canaries.items() if value.encode() in raw] == []
