"""``/oauth2/token``: code exchange (single use, PKCE, redirect URI, client), refresh
rotation and reuse detection, RFC 6749 error answers (SECURITY A3, A6, A7)."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.auth.identity import MovableClock, SignedInAdmin, bearer
from tests.auth.smart.smart_kit import (
    FORM,
    Clinic,
    Pkce,
    authorize_params,
    authorized_tokens,
    code_of,
    exchange,
    register,
    sign_in,
)

from carechart.auth.tokens import b64url_decode
from carechart.context import AppContext
from carechart.db.auth_schema import auth_session
from carechart.db.engine import unit_of_work


@pytest.fixture
def app_id(anonymous: TestClient, admin: SignedInAdmin) -> str:
    client_id: str = register(anonymous, admin.access_token)["client_id"]
    return client_id


def _code(anonymous: TestClient, app_id: str, clinic: Clinic, **extra: str) -> tuple[str, Pkce]:
    pkce = Pkce()
    params = authorize_params(anonymous, app_id, pkce, **extra)
    answer = sign_in(anonymous, params, clinic.patient.email, clinic.patient.password)
    return code_of(answer), pkce


def _claims(token: str) -> dict[str, Any]:
    import json

    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


def _error(answer: Any, error: str, status: int = 400) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert "no-store" in answer.headers["cache-control"]


def test_a_code_buys_a_patient_token(anonymous: TestClient, app_id: str, clinic: Clinic) -> None:
    code, pkce = _code(anonymous, app_id, clinic)
    answer = exchange(anonymous, app_id, code, pkce)
    assert answer.status_code == 200, answer.text
    assert "no-store" in answer.headers["cache-control"]
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0
    assert body["patient"] == "p1"
    assert body["fhirUser"] == "Patient/p1"
    assert set(body["scope"].split()) == {"launch/patient", "patient/*.rs"}
    assert "refresh_token" not in body  # neither offline_access nor online_access asked
    claims = _claims(body["access_token"])
    assert claims["client_id"] == app_id
    assert claims["patient"] == "p1"
    assert claims["fhirUser"] == "Patient/p1"
    assert claims["sid"]
    own = anonymous.get("/fhir/Patient/p1", headers=bearer(body["access_token"]))
    assert own.status_code == 200


def _token_events(ctx: AppContext, client_id: str) -> list[tuple[str, str]]:
    from carechart.db.auth_schema import audit_event

    t = audit_event
    with unit_of_work(ctx.engine, write=False) as conn:
        rows = conn.execute(
            sa.select(t.c.action, t.c.outcome)
            .where(t.c.tenant_id == ctx.settings.default_tenant, t.c.client_id == client_id)
            .order_by(t.c.chain_index)
        ).all()
    return [(row.action, row.outcome) for row in rows if row.action.startswith("token")]


def test_a_code_works_once_and_its_replay_revokes_the_session(
    anonymous: TestClient, app_id: str, clinic: Clinic, ctx: AppContext
) -> None:
    code, pkce = _code(anonymous, app_id, clinic)
    first = exchange(anonymous, app_id, code, pkce)
    assert first.status_code == 200
    token = first.json()["access_token"]
    assert anonymous.get("/fhir/Patient/p1", headers=bearer(token)).status_code == 200
    _error(exchange(anonymous, app_id, code, pkce), "invalid_grant")
    # The token issued from the code dies with its session (RFC 6749 4.1.2).
    assert anonymous.get("/fhir/Patient/p1", headers=bearer(token)).status_code == 401
    assert _token_events(ctx, app_id) == [("token", "success"), ("token-reuse", "failure")]


@pytest.mark.parametrize("what", ["verifier", "redirect", "client", "expired"])
def test_a_mismatch_burns_the_code(
    anonymous: TestClient,
    admin: SignedInAdmin,
    app_id: str,
    clinic: Clinic,
    clock: MovableClock,
    ctx: AppContext,
    what: str,
) -> None:
    code, pkce = _code(anonymous, app_id, clinic)
    if what == "verifier":
        answer = exchange(anonymous, app_id, code, Pkce())
    elif what == "redirect":
        answer = exchange(anonymous, app_id, code, pkce, redirect_uri="https://app.example/other")
    elif what == "client":
        other = register(anonymous, admin.access_token)["client_id"]
        answer = exchange(anonymous, other, code, pkce)
    else:
        clock.advance(timedelta(minutes=5, seconds=1))
        answer = exchange(anonymous, app_id, code, pkce)
    _error(answer, "invalid_grant")
    # The right request afterwards fails too: the code is spent.
    clock.offset = timedelta(0)
    _error(exchange(anonymous, app_id, code, pkce), "invalid_grant")
    with unit_of_work(ctx.engine, write=False) as conn:
        reasons = (
            conn.execute(
                sa.select(auth_session.c.revoked_reason).where(auth_session.c.client_id == app_id)
            )
            .scalars()
            .all()
        )
    assert reasons
    assert all(r is not None for r in reasons)
    events = _token_events(ctx, app_id)
    assert events
    assert all(outcome == "failure" for _, outcome in events)


def test_unknown_codes_and_missing_parameters(anonymous: TestClient, app_id: str) -> None:
    _error(exchange(anonymous, app_id, "not-a-code", Pkce()), "invalid_grant")
    form = {"grant_type": "authorization_code", "client_id": app_id, "code": "x"}
    _error(anonymous.post("/oauth2/token", data=form, headers=FORM), "invalid_request")
    _error(
        anonymous.post("/oauth2/token", data={"grant_type": "password"}, headers=FORM),
        "unsupported_grant_type",
    )
    _error(anonymous.post("/oauth2/token", data={}, headers=FORM), "invalid_request")
    as_json = anonymous.post("/oauth2/token", json={"grant_type": "authorization_code"})
    _error(as_json, "invalid_request")
    twice = anonymous.post(
        "/oauth2/token",
        content=b"grant_type=authorization_code&grant_type=refresh_token",
        headers=FORM,
    )
    _error(twice, "invalid_request")


def test_an_unknown_public_client_is_invalid_client(anonymous: TestClient) -> None:
    form = {
        "grant_type": "authorization_code",
        "client_id": "nobody",
        "code": "x",
        "redirect_uri": "https://app.example/callback",
        "code_verifier": Pkce().verifier,
    }
    _error(anonymous.post("/oauth2/token", data=form, headers=FORM), "invalid_client", 401)


def test_a_confidential_app_authenticates_with_its_secret(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    created = register(anonymous, admin.access_token, kind="confidential")
    app_id, secret = created["client_id"], created["client_secret"]
    code, pkce = _code(anonymous, app_id, clinic)
    # Without its secret it is refused, and the code is not spent by that.
    _error(exchange(anonymous, app_id, code, pkce), "invalid_client", 401)
    wrong = exchange(anonymous, app_id, code, pkce, auth=(app_id, "wrong-secret"))
    _error(wrong, "invalid_client", 401)
    assert wrong.headers["www-authenticate"].startswith("Basic")
    good = exchange(anonymous, app_id, code, pkce, auth=(app_id, secret))
    assert good.status_code == 200, good.text
    assert good.json()["patient"] == "p1"


def test_client_secret_post_is_not_accepted(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    created = register(anonymous, admin.access_token, kind="confidential")
    code, pkce = _code(anonymous, created["client_id"], clinic)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "https://app.example/callback",
        "code_verifier": pkce.verifier,
        "client_id": created["client_id"],
        "client_secret": created["client_secret"],
    }
    _error(anonymous.post("/oauth2/token", data=form, headers=FORM), "invalid_client", 401)


def _refresh(anonymous: TestClient, app_id: str, refresh_token: str, **extra: str) -> Any:
    form = {"grant_type": "refresh_token", "client_id": app_id, "refresh_token": refresh_token}
    form.update(extra)
    return anonymous.post("/oauth2/token", data=form, headers=FORM)


def test_refresh_tokens_rotate_and_a_reuse_revokes_the_family(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    first = authorized_tokens(
        anonymous,
        app_id,
        clinic.patient.email,
        clinic.patient.password,
        scope="launch/patient patient/*.rs offline_access",
    )
    assert first["refresh_token"]
    second = _refresh(anonymous, app_id, first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["patient"] == "p1"
    assert body["scope"] == first["scope"]
    claims = _claims(body["access_token"])
    assert claims["client_id"] == app_id
    assert claims["patient"] == "p1"
    assert (
        anonymous.get("/fhir/Patient/p1", headers=bearer(body["access_token"])).status_code == 200
    )
    # The first one again: a theft. Everything of the session dies.
    _error(_refresh(anonymous, app_id, first["refresh_token"]), "invalid_grant")
    _error(_refresh(anonymous, app_id, body["refresh_token"]), "invalid_grant")
    assert (
        anonymous.get("/fhir/Patient/p1", headers=bearer(body["access_token"])).status_code == 401
    )


def test_a_refresh_may_narrow_the_scope_but_never_widen_it(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    scope = "launch/patient patient/*.rs online_access"
    app_id = register(anonymous, admin.access_token, scope=scope)["client_id"]
    first = authorized_tokens(
        anonymous, app_id, clinic.patient.email, clinic.patient.password, scope=scope
    )
    _error(
        _refresh(anonymous, app_id, first["refresh_token"], scope="patient/*.cruds"),
        "invalid_scope",
    )
    _error(_refresh(anonymous, app_id, first["refresh_token"], scope="user/*.rs"), "invalid_scope")
    narrower = _refresh(anonymous, app_id, first["refresh_token"], scope="patient/Observation.read")
    assert narrower.status_code == 200, narrower.text
    assert narrower.json()["scope"] == "patient/Observation.rs"
    token = narrower.json()["access_token"]
    assert anonymous.get("/fhir/Observation/o-p1", headers=bearer(token)).status_code == 200
    assert anonymous.get("/fhir/Patient/p1", headers=bearer(token)).status_code in (403, 404)


def test_a_refresh_token_is_bound_to_its_app(
    anonymous: TestClient, admin: SignedInAdmin, app_id: str, clinic: Clinic
) -> None:
    first = authorized_tokens(
        anonymous,
        app_id,
        clinic.patient.email,
        clinic.patient.password,
        scope="launch/patient patient/*.rs offline_access",
    )
    other = register(anonymous, admin.access_token)["client_id"]
    _error(_refresh(anonymous, other, first["refresh_token"]), "invalid_grant")
    # The rightful app still can.
    assert _refresh(anonymous, app_id, first["refresh_token"]).status_code == 200


def test_basic_credentials_must_be_well_formed(anonymous: TestClient) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "x"}
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        answer = anonymous.post(
            "/oauth2/token", data=form, headers={**FORM, "Authorization": header}
        )
        _error(answer, "invalid_client", 401)


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=authorization_code&code=%FF%FE&redirect_uri=x&code_verifier=y&client_id=z",
        b"grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c",
        b"grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=e30.e30.",
        b"grant_type=refresh_token&refresh_token=" + b"A" * 10_000 + b"&client_id=x",
        b"grant_type=authorization_code&code_verifier=%C3%A9" + b"x" * 60,
        b"\xff\xfe",
        b"&&&===&&",
        b"grant_type=" + b"x" * 20_000,
        b"a=1&" * 60,
    ],
)
def test_junk_never_fails_the_server(anonymous: TestClient, body: bytes) -> None:
    answer = anonymous.post("/oauth2/token", content=body, headers=FORM)
    assert 400 <= answer.status_code < 500, answer.text
    authorize = anonymous.post("/oauth2/authorize", content=body, headers=FORM)
    assert 400 <= authorize.status_code < 500
    introspect = anonymous.post("/oauth2/introspect", content=body, headers=FORM)
    assert 400 <= introspect.status_code < 500
