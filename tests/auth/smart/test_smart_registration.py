"""Client registration by administrators (SECURITY A3, A5, B1, C1)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.auth.identity import SignedInAdmin, bearer, create_user, login
from tests.auth.smart.smart_kit import REDIRECT, ClientKeyPair, Pkce, authorize_params, register

from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.context import AppContext
from carechart.db.auth_schema import audit_event, auth_session, oauth_client
from carechart.db.engine import unit_of_work

APP: dict[str, Any] = {
    "name": "Growth charts",
    "kind": "public",
    "redirect_uris": [REDIRECT],
    "scope": "launch/patient patient/*.rs",
}


def _token(anonymous: TestClient, ctx: AppContext, parts: AuthComponents, role: Role) -> str:
    user, password = create_user(ctx, parts, role=role)
    answer = login(anonymous, user.email, password).json()
    token: str = answer["access_token"]
    return token


def test_anonymous_callers_get_401(anonymous: TestClient) -> None:
    assert anonymous.post("/api/v1/smart/clients", json=APP).status_code == 401
    assert anonymous.get("/api/v1/smart/clients").status_code == 401
    assert anonymous.delete("/api/v1/smart/clients/x").status_code == 401


@pytest.mark.parametrize("role", [Role.physician, Role.nurse, Role.front_desk, Role.auditor])
def test_other_roles_get_403(
    anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents, role: Role
) -> None:
    token = _token(anonymous, ctx, auth_parts, role)
    answer = anonymous.post("/api/v1/smart/clients", json=APP, headers=bearer(token))
    assert answer.status_code == 403
    assert anonymous.get("/api/v1/smart/clients", headers=bearer(token)).status_code == 403


def test_an_admin_session_without_mfa_gets_403(
    anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    token = _token(anonymous, ctx, auth_parts, Role.admin)  # has not passed TOTP
    answer = anonymous.post("/api/v1/smart/clients", json=APP, headers=bearer(token))
    assert answer.status_code == 403


def test_an_admin_with_mfa_registers_lists_and_deactivates(
    anonymous: TestClient, admin: SignedInAdmin, ctx: AppContext
) -> None:
    created = register(anonymous, admin.access_token, scope=APP["scope"], name=APP["name"])
    assert created["kind"] == "public"
    assert created["client_secret"] is None
    assert created["token_endpoint_auth_method"] == "none"
    assert created["redirect_uris"] == [REDIRECT]
    listed = anonymous.get("/api/v1/smart/clients", headers=bearer(admin.access_token))
    assert listed.status_code == 200
    assert created["client_id"] in {c["client_id"] for c in listed.json()}
    gone = anonymous.delete(
        f"/api/v1/smart/clients/{created['client_id']}", headers=bearer(admin.access_token)
    )
    assert gone.status_code == 204
    listed = anonymous.get("/api/v1/smart/clients", headers=bearer(admin.access_token)).json()
    assert [c["active"] for c in listed if c["client_id"] == created["client_id"]] == [False]
    # A deactivated app can no longer start a sign-in.
    page = anonymous.get(
        "/oauth2/authorize", params=authorize_params(anonymous, created["client_id"], Pkce())
    )
    assert page.status_code == 400
    assert "location" not in page.headers
    unknown = anonymous.delete("/api/v1/smart/clients/nope", headers=bearer(admin.access_token))
    assert unknown.status_code == 404
    with unit_of_work(ctx.engine, write=False) as conn:
        actions = conn.execute(
            sa.select(audit_event.c.action, audit_event.c.resource_id).where(
                audit_event.c.tenant_id == ctx.settings.default_tenant,
                audit_event.c.resource_type == "OAuthClient",
            )
        ).all()
    assert ("create", created["client_id"]) in actions
    assert ("delete", created["client_id"]) in actions


def test_a_confidential_secret_is_shown_once_and_stored_hashed(
    anonymous: TestClient, admin: SignedInAdmin, ctx: AppContext
) -> None:
    created = register(anonymous, admin.access_token, kind="confidential")
    secret = created["client_secret"]
    assert isinstance(secret, str)
    assert len(secret) >= 40
    assert created["token_endpoint_auth_method"] == "client_secret_basic"
    listed = anonymous.get("/api/v1/smart/clients", headers=bearer(admin.access_token)).text
    assert secret not in listed
    assert 'client_secret":"' not in listed
    with unit_of_work(ctx.engine, write=False) as conn:
        stored = conn.execute(
            sa.select(oauth_client.c.secret_hash).where(
                oauth_client.c.client_id == created["client_id"]
            )
        ).scalar_one()
    assert stored.startswith("$argon2id$")
    assert secret not in stored


def test_deactivating_an_app_ends_its_sessions(
    anonymous: TestClient, admin: SignedInAdmin, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    from tests.auth.smart.smart_kit import authorized_tokens

    created = register(anonymous, admin.access_token)
    user, password = create_user(ctx, auth_parts, role=Role.patient, patient_id="p9")
    tokens = authorized_tokens(anonymous, created["client_id"], user.email, password)
    anonymous.delete(
        f"/api/v1/smart/clients/{created['client_id']}", headers=bearer(admin.access_token)
    )
    with unit_of_work(ctx.engine, write=False) as conn:
        revoked = (
            conn.execute(
                sa.select(auth_session.c.revoked_reason).where(
                    auth_session.c.client_id == created["client_id"]
                )
            )
            .scalars()
            .all()
        )
    assert revoked == ["client-deactivated"]
    me = anonymous.get("/fhir/Patient/p9", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401


def _post(anonymous: TestClient, admin: SignedInAdmin, **changes: Any) -> int:
    body = {**APP, **changes}
    answer = anonymous.post("/api/v1/smart/clients", json=body, headers=bearer(admin.access_token))
    return answer.status_code


@pytest.mark.parametrize(
    "changes",
    [
        {"redirect_uris": ["http://app.example/callback"]},  # http off loopback
        {"redirect_uris": ["https://app.example/callback#frag"]},
        {"redirect_uris": ["https://user:pw@app.example/callback"]},
        {"redirect_uris": ["/relative"]},
        {"redirect_uris": []},
        {"scope": "system/*.rs"},  # system scopes are for backend services
        {"scope": "launch/patient"},  # no resource scope
        {"scope": "patient/*.rs openid"},  # not something this server grants
        {"kind": "backend", "redirect_uris": []},  # a backend service needs keys
        {"jwks": {"keys": [ClientKeyPair.es256().jwk()]}},  # a public app has no keys
        {"name": ""},
        {"unexpected": 1},
    ],
)
def test_invalid_registrations_are_refused(
    anonymous: TestClient, admin: SignedInAdmin, changes: dict[str, Any]
) -> None:
    assert _post(anonymous, admin, **changes) in (400, 422)


def test_loopback_redirects_are_allowed_for_development(
    anonymous: TestClient, admin: SignedInAdmin
) -> None:
    for uri in ("http://localhost:8080/cb", "http://127.0.0.1/cb"):
        assert _post(anonymous, admin, redirect_uris=[uri]) == 201


@pytest.mark.parametrize(
    "mangle",
    [
        lambda jwk: {**jwk, "d": "AAAA"},  # a private key
        lambda jwk: {**jwk, "crv": "P-521"},
        lambda jwk: {**jwk, "x": jwk["y"]},  # not on the curve
        lambda jwk: {k: v for k, v in jwk.items() if k != "kid"},
        lambda jwk: {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},  # symmetric
    ],
)
def test_backend_keys_must_be_public_signature_keys(
    anonymous: TestClient, admin: SignedInAdmin, mangle: Any
) -> None:
    jwk = mangle(ClientKeyPair.es256().jwk())
    status = _post(
        anonymous,
        admin,
        kind="backend",
        redirect_uris=[],
        scope="system/*.rs",
        jwks={"keys": [jwk]},
    )
    assert status == 422


def test_backend_services_register_ec_and_rsa_keys(
    anonymous: TestClient, admin: SignedInAdmin
) -> None:
    keys = [ClientKeyPair.es256().jwk(), ClientKeyPair.rs384().jwk()]
    created = register(
        anonymous, admin.access_token, kind="backend", scope="system/*.rs", jwks={"keys": keys}
    )
    assert created["token_endpoint_auth_method"] == "private_key_jwt"
    assert created["redirect_uris"] == []
