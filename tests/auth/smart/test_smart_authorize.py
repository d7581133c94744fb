"""``/oauth2/authorize``: client and redirect checks, PKCE S256 only, escaping, sign-in rules
(SECURITY A4, A5, A7, B10)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from starlette.testclient import TestClient
from tests.auth.identity import (
    MovableClock,
    SignedInAdmin,
    bearer,
    create_user,
    current_code,
    login,
    totp_secret,
)
from tests.auth.smart.smart_kit import (
    REDIRECT,
    Clinic,
    Pkce,
    authorize_params,
    code_of,
    redirect_query,
    register,
    sign_in,
)

from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.context import AppContext

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def app_id(anonymous: TestClient, admin: SignedInAdmin) -> str:
    client_id: str = register(anonymous, admin.access_token)["client_id"]
    return client_id


def _no_redirect(answer: object) -> None:
    from httpx2 import Response

    assert isinstance(answer, Response)
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")


def test_the_form_is_shown_with_protective_headers(anonymous: TestClient, app_id: str) -> None:
    page = anonymous.get("/oauth2/authorize", params=authorize_params(anonymous, app_id, Pkce()))
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'; form-action 'self'")
    assert "style-src 'unsafe-inline'" in csp
    assert "script-src" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "no-store" in page.headers["cache-control"]
    assert 'name="password"' in page.text
    assert 'name="patient"' in page.text  # launch/patient, standalone


@pytest.mark.parametrize("client_id", ["", "unknown-app", "x" * 500])
def test_an_unknown_client_gets_a_page_not_a_redirect(
    anonymous: TestClient, client_id: str
) -> None:
    params = authorize_params(anonymous, client_id, Pkce())
    _no_redirect(anonymous.get("/oauth2/authorize", params=params))
    _no_redirect(sign_in(anonymous, params, "a@b.example", "whatever password"))


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        REDIRECT + "/",
        REDIRECT + "?x=1",
        "https://APP.example/callback",
        "",
    ],
)
def test_a_redirect_uri_not_registered_exactly_gets_a_page(
    anonymous: TestClient, app_id: str, redirect_uri: str
) -> None:
    params = authorize_params(anonymous, app_id, Pkce(), redirect_uri=redirect_uri)
    _no_redirect(anonymous.get("/oauth2/authorize", params=params))


def test_a_deactivated_or_backend_client_gets_a_page(
    anonymous: TestClient, admin: SignedInAdmin
) -> None:
    from tests.auth.smart.smart_kit import ClientKeyPair

    backend = register(
        anonymous,
        admin.access_token,
        kind="backend",
        scope="system/*.rs",
        jwks={"keys": [ClientKeyPair.es256().jwk()]},
    )
    params = authorize_params(anonymous, backend["client_id"], Pkce())
    _no_redirect(anonymous.get("/oauth2/authorize", params=params))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": ""}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"aud": "https://elsewhere.example/fhir"}, "invalid_request"),
        ({"scope": "user/*.rs"}, "invalid_scope"),  # not registered for this app
        ({"scope": "openid fhirUser"}, "invalid_scope"),
        ({"launch": "no-such-launch", "scope": "launch patient/*.rs"}, "invalid_request"),
    ],
)
def test_bad_requests_go_back_to_the_app_as_errors(
    anonymous: TestClient, app_id: str, change: dict[str, str], error: str
) -> None:
    params = authorize_params(anonymous, app_id, Pkce(), state="s-123")
    params.update(change)
    for answer in (anonymous.get("/oauth2/authorize", params=params, follow_redirects=False),):
        query = redirect_query(answer)
        assert answer.headers["location"].startswith(REDIRECT + "?")
        assert query["error"] == error
        assert query["state"] == "s-123"
        assert "code" not in query


def test_missing_pkce_is_refused_on_the_form_post_too(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    params = authorize_params(anonymous, app_id, Pkce())
    del params["code_challenge"], params["code_challenge_method"]
    answer = sign_in(anonymous, params, clinic.patient.email, clinic.patient.password)
    query = redirect_query(answer)
    assert query["error"] == "invalid_request"
    assert "code" not in query


def test_a_repeated_parameter_is_refused(anonymous: TestClient, app_id: str) -> None:
    params: list[tuple[str, str | int | float | bool | None]] = list(
        authorize_params(anonymous, app_id, Pkce()).items()
    )
    params.append(("redirect_uri", "https://evil.example/"))
    page = anonymous.get("/oauth2/authorize", params=params)
    _no_redirect(page)


def test_reflected_input_is_escaped(anonymous: TestClient, admin: SignedInAdmin) -> None:
    created = register(anonymous, admin.access_token, name=f"Evil {SCRIPT} app")
    params = authorize_params(anonymous, created["client_id"], Pkce(), state=f'"><{SCRIPT}')
    page = anonymous.get("/oauth2/authorize", params=params)
    assert page.status_code == 200
    assert "<script" not in page.text.lower()
    assert "&lt;script&gt;" in page.text
    # A failed sign-in shows the form again: still escaped.
    again = sign_in(anonymous, params, f"{SCRIPT}@x.example", "wrong password here")
    assert again.status_code == 401
    assert "<script" not in again.text.lower()
    # Errors shown as a page never echo the input.
    params["client_id"] = SCRIPT
    bad = anonymous.get("/oauth2/authorize", params=params)
    assert bad.status_code == 400
    assert "<script" not in bad.text.lower()


def test_a_patient_signs_in_and_gets_a_code(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    params = authorize_params(anonymous, app_id, Pkce(), state="xyz")
    answer = sign_in(anonymous, params, clinic.patient.email, clinic.patient.password)
    query = redirect_query(answer)
    assert answer.headers["location"].startswith(REDIRECT + "?")
    assert query["state"] == "xyz"
    assert len(query["code"]) >= 40


def test_a_wrong_password_shows_the_form_again(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    params = authorize_params(anonymous, app_id, Pkce())
    answer = sign_in(anonymous, params, clinic.patient.email, "not the password at all")
    assert answer.status_code == 401
    assert "location" not in answer.headers
    assert 'name="password"' in answer.text


def test_five_failures_lock_the_account(
    anonymous: TestClient, app_id: str, clinic: Clinic, clock: MovableClock
) -> None:
    params = authorize_params(anonymous, app_id, Pkce())
    for _ in range(5):
        sign_in(anonymous, params, clinic.patient.email, "not the password at all")
    locked = sign_in(anonymous, params, clinic.patient.email, clinic.patient.password)
    assert locked.status_code == 423
    assert "location" not in locked.headers
    clock.advance(timedelta(minutes=16))
    assert (
        sign_in(anonymous, params, clinic.patient.email, clinic.patient.password).status_code == 303
    )


def test_the_login_throttle_applies(
    anonymous: TestClient, app_id: str, clinic: Clinic, auth_parts: AuthComponents
) -> None:
    from carechart.auth.lockout import InMemoryTokenBucket

    auth_parts.login_throttle = InMemoryTokenBucket(capacity=2, rate=0.0001)
    params = authorize_params(anonymous, app_id, Pkce())
    statuses = [
        sign_in(anonymous, params, clinic.patient.email, "wrong password here").status_code
        for _ in range(3)
    ]
    assert statuses[-1] == 429


def test_an_account_with_totp_must_give_a_code(
    anonymous: TestClient, app_id: str, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(ctx, auth_parts, role=Role.patient, patient_id="p1")
    first = login(anonymous, user.email, password).json()
    enrolled = anonymous.post("/api/v1/auth/mfa/enroll", headers=bearer(first["access_token"]))
    secret = totp_secret(enrolled.json()["provisioning_uri"])
    confirmed = anonymous.post(
        "/api/v1/auth/mfa/verify",
        json={"code": current_code(auth_parts, secret)},
        headers=bearer(first["access_token"]),
    )
    assert confirmed.status_code == 200
    params = authorize_params(anonymous, app_id, Pkce())
    asked = sign_in(anonymous, params, user.email, password)
    assert asked.status_code == 401
    assert 'name="totp"' in asked.text
    wrong = sign_in(anonymous, params, user.email, password, totp="000000")
    assert wrong.status_code in (401, 423)
    assert "location" not in wrong.headers
    auth_parts.clock.advance(timedelta(seconds=31))  # type: ignore[attr-defined]
    good = sign_in(anonymous, params, user.email, password, totp=current_code(auth_parts, secret))
    assert code_of(good)


def test_an_account_that_owes_a_password_change_cannot_authorize_apps(
    anonymous: TestClient, app_id: str, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    user, password = create_user(
        ctx, auth_parts, role=Role.patient, patient_id="p1", must_change_password=True
    )
    params = authorize_params(anonymous, app_id, Pkce())
    answer = sign_in(anonymous, params, user.email, password)
    assert answer.status_code == 403
    assert "location" not in answer.headers


def test_an_admin_without_totp_cannot_authorize_apps(
    anonymous: TestClient, admin: SignedInAdmin, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    created = register(anonymous, admin.access_token, scope="user/*.rs")
    user, password = create_user(ctx, auth_parts, role=Role.admin)
    params = authorize_params(anonymous, created["client_id"], Pkce(), scope="user/*.rs")
    answer = sign_in(anonymous, params, user.email, password)
    assert answer.status_code == 403
    assert "location" not in answer.headers


def test_staff_must_name_a_patient_they_may_see(
    anonymous: TestClient, app_id: str, clinic: Clinic
) -> None:
    params = authorize_params(anonymous, app_id, Pkce())
    physician = clinic.physician
    missing = sign_in(anonymous, params, physician.email, physician.password)
    assert missing.status_code == 400
    assert "location" not in missing.headers
    outside = sign_in(anonymous, params, physician.email, physician.password, patient="p3")
    unknown = sign_in(anonymous, params, physician.email, physician.password, patient="nobody")
    assert outside.status_code == unknown.status_code == 403
    assert "location" not in outside.headers
    assert outside.text.replace("p3", "X") == unknown.text.replace("nobody", "X")
    inside = sign_in(anonymous, params, physician.email, physician.password, patient="p1")
    assert code_of(inside)
