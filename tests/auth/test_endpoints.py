"""SECURITY A1-A7 over HTTP: /api/v1/auth and the JWKS, on both engines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from starlette.testclient import TestClient
from tests.auth.identity import (
    MovableClock,
    admin_with_mfa,
    audit_trail,
    bearer,
    create_user,
    current_code,
    light_components,
    login,
    new_email,
    strong_password,
    totp_secret,
)

from carechart.audit.chain import verify as verify_chain
from carechart.auth.config import AuthComponents, install
from carechart.auth.lockout import InMemoryTokenBucket
from carechart.auth.principal import CHANGE_PASSWORD_SCOPE, MFA_ENROLL_SCOPE, Role
from carechart.auth.tokens import (
    ACCESS_TOKEN_TYPE,
    SigningKey,
    b64url_decode,
    b64url_encode,
    issue_access_token,
)
from carechart.context import AppContext
from carechart.crypto.keys import MasterKey
from carechart.db.engine import unit_of_work

ME = "/api/v1/auth/me"
REGISTER = "/api/v1/auth/register"


def _header(token: str) -> dict[str, str]:
    decoded: dict[str, str] = json.loads(b64url_decode(token.split(".")[0]))
    return decoded


# --- sign-in ---------------------------------------------------------------------------------


def test_login_returns_an_es256_access_token_with_kid_and_a_refresh_token(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts, role=Role.physician)
    response = login(auth_client, user.email, password)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "authenticated"
    assert body["token_type"] == "Bearer"
    assert 300 <= body["expires_in"] <= 900
    assert body["refresh_token"]
    header = _header(body["access_token"])
    assert header["alg"] == "ES256"
    assert header["typ"] == ACCESS_TOKEN_TYPE
    jwks = auth_client.get("/.well-known/jwks.json").json()
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}
    me = auth_client.get(ME, headers=bearer(body["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user.id
    assert me.json()["role"] == "physician"
    assert me.json()["email"] == user.email
    assert [e["action"] for e in audit_trail(ctx)][-1:] == ["login"]


def test_login_is_case_and_width_insensitive_on_the_username(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts, email=new_email("carol"))
    assert login(auth_client, user.email.upper(), password).status_code == 200


def test_wrong_password_gets_401_with_the_same_generic_message_as_an_unknown_user(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, _ = create_user(ctx, auth_parts)
    wrong = login(auth_client, user.email, strong_password())
    unknown = login(auth_client, new_email("nobody"), strong_password())
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "UNAUTHORIZED"
    assert wrong.json()["error"]["message"] == "authentication failed"
    assert wrong.headers["www-authenticate"] == "Bearer"
    failures = [e for e in audit_trail(ctx) if e["action"] == "login"]
    assert [(e["outcome"], e["user_id"]) for e in failures] == [
        ("failure", user.id),
        ("failure", None),
    ]


def test_five_failures_lock_the_account_for_15_minutes_with_423_and_the_unlock_time(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents, clock: MovableClock
) -> None:
    user, password = create_user(ctx, auth_parts)
    statuses = [login(auth_client, user.email, "wrong " + strong_password()).status_code]
    statuses += [login(auth_client, user.email, strong_password()).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 401, 423]
    locked = login(auth_client, user.email, password)  # even the right password
    assert locked.status_code == 423
    error = locked.json()["error"]
    assert error["code"] == "ACCOUNT_LOCKED"
    unlock_at = datetime.fromisoformat(error["details"]["unlock_at"])
    assert timedelta(minutes=14) < unlock_at - clock() <= timedelta(minutes=15)
    # Every failure and the lock itself are audited, although each answer was an error.
    outcomes = [(e["action"], e["outcome"]) for e in audit_trail(ctx)]
    assert outcomes.count(("login", "failure")) == 5
    assert outcomes.count(("lockout", "success")) == 1
    assert outcomes[-1] == ("login", "denied")
    clock.advance(timedelta(minutes=15, seconds=1))
    assert login(auth_client, user.email, password).status_code == 200


def test_per_ip_throttle_answers_429_with_retry_after(
    auth_client: TestClient,
    ctx: AppContext,
    master_key: MasterKey,
    clock: MovableClock,
) -> None:
    parts = light_components(master_key, clock, throttle=InMemoryTokenBucket(capacity=3, rate=0.1))
    install(auth_client.app, parts)  # type: ignore[arg-type]
    user, password = create_user(ctx, parts)
    statuses = [login(auth_client, user.email, password).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    throttled = login(auth_client, user.email, password)
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["error"]["code"] == "RATE_LIMITED"


# --- sessions --------------------------------------------------------------------------------


def test_refresh_rotates_and_reusing_a_spent_token_revokes_the_family(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts)
    first = login(auth_client, user.email, password).json()
    rotated = auth_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert auth_client.get(ME, headers=bearer(second["access_token"])).status_code == 200
    # The spent token comes back (a thief's copy): refused, and the whole session dies.
    reused = auth_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert reused.status_code == 401
    legit = auth_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert legit.status_code == 401
    assert auth_client.get(ME, headers=bearer(second["access_token"])).status_code == 401
    assert ("token-reuse", "failure", user.id) in [
        (e["action"], e["outcome"], e["user_id"]) for e in audit_trail(ctx)
    ]


def test_logout_revokes_on_the_server_so_refresh_and_me_get_401(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts)
    tokens = login(auth_client, user.email, password).json()
    out = auth_client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert out.status_code == 204
    assert auth_client.get(ME, headers=bearer(tokens["access_token"])).status_code == 401
    refreshed = auth_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401
    assert ("logout", "success") in [(e["action"], e["outcome"]) for e in audit_trail(ctx)]


def test_idle_session_ends_after_30_minutes(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents, clock: MovableClock
) -> None:
    user, password = create_user(ctx, auth_parts)
    tokens = login(auth_client, user.email, password).json()
    clock.advance(timedelta(minutes=31))
    refreshed = auth_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401


def test_session_ends_after_12_hours_even_when_active(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents, clock: MovableClock
) -> None:
    user, password = create_user(ctx, auth_parts)
    refresh_token = login(auth_client, user.email, password).json()["refresh_token"]
    for _ in range(25):  # every 29 minutes, never idle
        clock.advance(timedelta(minutes=29))
        response = auth_client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
        if response.status_code != 200:
            break
        refresh_token = response.json()["refresh_token"]
    assert response.status_code == 401
    assert clock.offset >= timedelta(hours=12)


# --- registration ----------------------------------------------------------------------------


def _account(role: str = "nurse", **changes: str) -> dict[str, str]:
    return {
        "email": new_email(role),
        "password": strong_password(),
        "full_name": "Dana Reyes",
        "role": role,
        **changes,
    }


def test_register_is_admin_only(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    assert auth_client.post(REGISTER, json=_account()).status_code == 401
    nurse, password = create_user(ctx, auth_parts, role=Role.nurse)
    nurse_token = login(auth_client, nurse.email, password).json()["access_token"]
    forbidden = auth_client.post(REGISTER, json=_account(), headers=bearer(nurse_token))
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "FORBIDDEN"
    admin = admin_with_mfa(auth_client, ctx, auth_parts)
    account = _account("front_desk")
    created = auth_client.post(REGISTER, json=account, headers=bearer(admin.access_token))
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "front_desk"
    assert created.json()["email"] == account["email"]
    assert account["password"] not in created.text
    assert login(auth_client, account["email"], account["password"]).status_code == 200
    trail = [(e["action"], e["outcome"], e["user_id"]) for e in audit_trail(ctx)]
    assert ("create", "denied", nurse.id) in trail
    assert ("create", "success", admin.user.id) in trail


@pytest.mark.parametrize(
    "variant",
    ["Alice@x.org", "alice@x.org", "ALICE@X.ORG", "\uff41lice@x.org", "ａｌｉｃｅ@ｘ.ｏｒｇ"],
)
def test_canonical_username_collisions_get_409(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents, variant: str
) -> None:
    create_user(ctx, auth_parts, email="Alice@x.org")
    admin = admin_with_mfa(auth_client, ctx, auth_parts)
    response = auth_client.post(
        REGISTER, json=_account(email=variant), headers=bearer(admin.access_token)
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "USERNAME_TAKEN"


@pytest.mark.parametrize(
    ("password", "reason"),
    [("short pass", "too_short"), ("abc123456789", "breached"), ("x" * 129, "too_long")],
)
def test_breached_or_short_password_gets_422(
    auth_client: TestClient,
    ctx: AppContext,
    auth_parts: AuthComponents,
    password: str,
    reason: str,
) -> None:
    admin = admin_with_mfa(auth_client, ctx, auth_parts)
    response = auth_client.post(
        REGISTER, json=_account(password=password), headers=bearer(admin.access_token)
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "PASSWORD_REJECTED"
    assert response.json()["error"]["details"] == {"reason": reason}
    assert password not in response.text


def test_patient_accounts_need_a_patient_id(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    admin = admin_with_mfa(auth_client, ctx, auth_parts)
    headers = bearer(admin.access_token)
    assert auth_client.post(REGISTER, json=_account("patient"), headers=headers).status_code == 422
    created = auth_client.post(
        REGISTER, json=_account("patient", patient_id="pat-1"), headers=headers
    )
    assert created.status_code == 201
    assert created.json()["patient_id"] == "pat-1"


# --- restricted sessions: password change and MFA -----------------------------------------


def test_must_change_password_session_only_allows_changing_it(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts, must_change_password=True)
    first = login(auth_client, user.email, password).json()
    assert first["must_change_password"] is True
    assert first["scope"] == CHANGE_PASSWORD_SCOPE
    token = first["access_token"]
    me = auth_client.get(ME, headers=bearer(token))
    assert me.status_code == 403
    assert me.json()["error"]["code"] == "PASSWORD_CHANGE_REQUIRED"
    assert auth_client.post(REGISTER, json=_account(), headers=bearer(token)).status_code == 403
    enroll = auth_client.post("/api/v1/auth/mfa/enroll", headers=bearer(token))
    assert enroll.status_code == 403
    same = auth_client.post(
        "/api/v1/auth/change-password",
        json={"current_password": password, "new_password": password},
        headers=bearer(token),
    )
    assert same.status_code == 422
    new_password = strong_password()
    changed = auth_client.post(
        "/api/v1/auth/change-password",
        json={"current_password": password, "new_password": new_password},
        headers=bearer(token),
    )
    assert changed.status_code == 200, changed.text
    # Every session of the account ended with the change.
    assert auth_client.get(ME, headers=bearer(token)).status_code == 401
    assert login(auth_client, user.email, password).status_code == 401
    second = login(auth_client, user.email, new_password).json()
    assert second["must_change_password"] is False
    assert auth_client.get(ME, headers=bearer(second["access_token"])).status_code == 200


def test_admin_needs_mfa_enrolment_then_a_totp_code_at_each_sign_in(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents, clock: MovableClock
) -> None:
    user, password = create_user(ctx, auth_parts, role=Role.admin)
    first = login(auth_client, user.email, password).json()
    assert first["scope"] == MFA_ENROLL_SCOPE
    restricted = bearer(first["access_token"])
    assert auth_client.get(ME, headers=restricted).json()["error"]["code"] == (
        "MFA_ENROLLMENT_REQUIRED"
    )
    assert auth_client.post(REGISTER, json=_account(), headers=restricted).status_code == 403
    enrolled = auth_client.post("/api/v1/auth/mfa/enroll", headers=restricted)
    uri = enrolled.json()["provisioning_uri"]
    assert uri.startswith("otpauth://totp/")
    secret = totp_secret(uri)
    bad = auth_client.post("/api/v1/auth/mfa/verify", json={"code": "000000"}, headers=restricted)
    assert bad.status_code == 401 or current_code(auth_parts, secret) == "000000"
    stepped = auth_client.post(
        "/api/v1/auth/mfa/verify",
        json={"code": current_code(auth_parts, secret)},
        headers=restricted,
    )
    assert stepped.status_code == 200, stepped.text
    full = bearer(stepped.json()["access_token"])
    me = auth_client.get(ME, headers=full).json()
    assert me["mfa_enrolled"] is True
    assert me["session_mfa_passed"] is True
    # Enrolled: a later sign-in must present a code; the password alone gives a ticket only.
    clock.advance(timedelta(seconds=31))
    challenge = login(auth_client, user.email, password).json()
    assert challenge["status"] == "mfa_required"
    assert "access_token" not in challenge
    ticket = challenge["mfa_ticket"]
    wrong = auth_client.post(
        "/api/v1/auth/mfa/verify",
        json={
            "mfa_ticket": ticket,
            "code": f"{(int(current_code(auth_parts, secret)) + 1) % 10**6:06d}",
        },
    )
    assert wrong.status_code == 401
    code = current_code(auth_parts, secret)
    done = auth_client.post("/api/v1/auth/mfa/verify", json={"mfa_ticket": ticket, "code": code})
    assert done.status_code == 200, done.text
    assert done.json()["refresh_token"]
    assert auth_client.get(ME, headers=bearer(done.json()["access_token"])).status_code == 200
    # A code works once (A5).
    replay = auth_client.post("/api/v1/auth/mfa/verify", json={"mfa_ticket": ticket, "code": code})
    assert replay.status_code == 401
    # A ticket expires.
    clock.advance(timedelta(minutes=6))
    late = auth_client.post(
        "/api/v1/auth/mfa/verify",
        json={"mfa_ticket": ticket, "code": current_code(auth_parts, secret)},
    )
    assert late.status_code == 401
    actions = [(e["action"], e["outcome"]) for e in audit_trail(ctx)]
    assert ("mfa-enroll", "success") in actions
    assert ("mfa", "failure") in actions


def test_a_confirmed_second_factor_cannot_be_replaced_from_a_session(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts, role=Role.nurse)
    older = bearer(login(auth_client, user.email, password).json()["access_token"])
    newer = bearer(login(auth_client, user.email, password).json()["access_token"])
    first_uri = auth_client.post("/api/v1/auth/mfa/enroll", headers=newer).json()
    # Unconfirmed, an enrolment may start over (a lost QR code locks no one out).
    secret = totp_secret(
        auth_client.post("/api/v1/auth/mfa/enroll", headers=newer).json()["provisioning_uri"]
    )
    assert totp_secret(first_uri["provisioning_uri"]) != secret
    confirmed = auth_client.post(
        "/api/v1/auth/mfa/verify", json={"code": current_code(auth_parts, secret)}, headers=newer
    )
    assert confirmed.status_code == 200
    for session in (older, bearer(confirmed.json()["access_token"])):
        replaced = auth_client.post("/api/v1/auth/mfa/enroll", headers=session)
        assert replaced.status_code == 403
    # The nurse, now enrolled, is asked for a code at every sign-in.
    assert login(auth_client, user.email, password).json()["status"] == "mfa_required"


# --- bearer tokens ---------------------------------------------------------------------------


def _forge(kind: str, auth_parts: AuthComponents, ctx: AppContext, valid: str) -> str:
    payload = json.loads(b64url_decode(valid.split(".")[1]))
    config = auth_parts.config
    now = auth_parts.clock()
    if kind == "alg-none":
        header = b64url_encode(json.dumps({"alg": "none", "typ": ACCESS_TOKEN_TYPE}).encode())
        body = b64url_encode(json.dumps(payload).encode())
        return f"{header}.{body}."
    if kind == "signature-stripped":
        return valid.rsplit(".", 1)[0] + "."
    if kind == "tampered-claims":
        payload["sub"] = "someone-else"
        header, _, signature = valid.split(".")
        return f"{header}.{b64url_encode(json.dumps(payload).encode())}.{signature}"
    with unit_of_work(ctx.engine, write=True) as conn:
        ours = auth_parts.signing_keys.active(conn, now)
    key = SigningKey(kid=ours.kid, private_key=SigningKey.generate().private_key)
    claims = {
        "issuer": config.issuer,
        "audience": config.audience,
        "subject": payload["sub"],
        "tenant": payload["tenant"],
        "session_id": payload["sid"],
        "scope": payload["scope"],
        "now": now,
    }
    if kind == "wrong-key":
        return issue_access_token(key, **claims)
    if kind == "unknown-kid":
        return issue_access_token(SigningKey.generate(), **claims)
    claims_for = dict(claims)
    if kind == "expired":
        claims_for["now"] = now - timedelta(hours=1)
    elif kind == "wrong-audience":
        claims_for["audience"] = "https://elsewhere.example/fhir"
    elif kind == "wrong-issuer":
        claims_for["issuer"] = "https://evil.example"
    elif kind == "other-tenant":
        claims_for["tenant"] = "another-tenant"
    return issue_access_token(ours, **claims_for)


@pytest.mark.parametrize(
    "kind",
    [
        "alg-none",
        "signature-stripped",
        "tampered-claims",
        "wrong-key",
        "unknown-kid",
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "other-tenant",
    ],
)
def test_forged_or_stale_tokens_get_401(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents, kind: str
) -> None:
    user, password = create_user(ctx, auth_parts)
    valid = login(auth_client, user.email, password).json()["access_token"]
    assert auth_client.get(ME, headers=bearer(valid)).status_code == 200
    forged = _forge(kind, auth_parts, ctx, valid)
    response = auth_client.get(ME, headers=bearer(forged))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "authentication failed"


@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt"])
def test_missing_or_malformed_authorization_gets_401(
    auth_client: TestClient, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert auth_client.get(ME, headers=headers).status_code == 401


@pytest.mark.parametrize("name", ["access_token", "ACCESS_TOKEN", "refresh_token"])
def test_token_in_query_string_gets_401(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents, name: str
) -> None:
    user, password = create_user(ctx, auth_parts)
    token = login(auth_client, user.email, password).json()["access_token"]
    assert auth_client.get(ME, params={name: token}).status_code == 401
    # Even alongside a valid header: the token has already leaked into the URL.
    assert auth_client.get(ME, params={name: token}, headers=bearer(token)).status_code == 401


def test_disabled_account_token_stops_working(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    import sqlalchemy as sa

    from carechart.db.auth_schema import user_account

    user, password = create_user(ctx, auth_parts)
    token = login(auth_client, user.email, password).json()["access_token"]
    with unit_of_work(ctx.engine, write=True) as conn:
        conn.execute(
            sa.update(user_account)
            .where(user_account.c.tenant_id == user.tenant, user_account.c.id == user.id)
            .values(active=False)
        )
    assert auth_client.get(ME, headers=bearer(token)).status_code == 401
    assert login(auth_client, user.email, password).status_code == 401


def test_jwks_publishes_public_keys_only(auth_client: TestClient) -> None:
    response = auth_client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jwk-set+json")
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert key["alg"] == "ES256"
        assert key["kty"] == "EC"
        assert "d" not in key


def test_every_authentication_event_is_audited_in_an_intact_chain(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts)
    login(auth_client, user.email, "nope " + strong_password())
    tokens = login(
        auth_client,
        user.email,
        password,
    ).json()
    auth_client.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": tokens["refresh_token"]},
        headers={"X-Request-ID": "req-42", "User-Agent": "pytest-agent"},
    )
    auth_client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    trail = audit_trail(ctx)
    assert [(e["action"], e["outcome"]) for e in trail][-4:] == [
        ("login", "failure"),
        ("login", "success"),
        ("token", "success"),
        ("logout", "success"),
    ]
    assert trail[-2]["correlation_id"] == "req-42"
    assert all(e["source_ip"] == "testclient" for e in trail[-4:])
    with unit_of_work(ctx.engine, write=False) as conn:
        assert verify_chain(conn, ctx.keyring, tenant=ctx.settings.default_tenant).ok


def test_mounting_the_routers_is_all_an_application_needs(
    auth_engine: object, client: TestClient, ctx: AppContext
) -> None:
    from carechart.auth.config import components_of
    from carechart.auth.endpoints import router, well_known_router

    # The shared ``client`` fixture: create_app with the settings' master key and no install.
    client.app.include_router(router)  # type: ignore[attr-defined]
    client.app.include_router(well_known_router)  # type: ignore[attr-defined]
    assert client.get("/.well-known/jwks.json").json()["keys"]
    parts = components_of(client.app)  # type: ignore[arg-type]
    user, password = create_user(ctx, parts)
    response = login(client, user.email, password)
    assert response.status_code == 200
    assert client.get(ME, headers=bearer(response.json()["access_token"])).status_code == 200
