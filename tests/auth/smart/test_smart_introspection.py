"""Token introspection (RFC 7662): active only while the token would be accepted."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.auth.identity import MovableClock, SignedInAdmin, bearer, login
from tests.auth.smart.smart_kit import (
    FORM,
    ClientKeyPair,
    Clinic,
    assertion_claims,
    authorized_tokens,
    client_credentials,
    register,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Resource:
    """A confidential app allowed to introspect its own tokens."""

    def __init__(self, client_id: str, secret: str) -> None:
        self.client_id = client_id
        self.secret = secret

    def headers(self) -> dict[str, str]:
        raw = f"{self.client_id}:{self.secret}".encode()
        return {**FORM, "Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.fixture
def confidential(anonymous: TestClient, admin: SignedInAdmin) -> Resource:
    created = register(
        anonymous, admin.access_token, kind="confidential", scope="launch/patient patient/*.rs"
    )
    return Resource(created["client_id"], created["client_secret"])


def _tokens(anonymous: TestClient, app: Resource, clinic: Clinic) -> dict[str, Any]:
    from tests.auth.smart.smart_kit import Pkce, authorize_params, code_of, exchange, sign_in

    pkce = Pkce()
    params = authorize_params(anonymous, app.client_id, pkce)
    code = code_of(sign_in(anonymous, params, clinic.patient.email, clinic.patient.password))
    answer = exchange(anonymous, app.client_id, code, pkce, auth=(app.client_id, app.secret))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _introspect(anonymous: TestClient, app: Resource, token: str) -> dict[str, Any]:
    answer = anonymous.post("/oauth2/introspect", data={"token": token}, headers=app.headers())
    assert answer.status_code == 200, answer.text
    assert "no-store" in answer.headers["cache-control"]
    body: dict[str, Any] = answer.json()
    return body


def test_an_active_token_is_described(
    anonymous: TestClient, confidential: Resource, clinic: Clinic
) -> None:
    tokens = _tokens(anonymous, confidential, clinic)
    described = _introspect(anonymous, confidential, tokens["access_token"])
    assert described["active"] is True
    assert described["client_id"] == confidential.client_id
    assert described["patient"] == "p1"
    assert described["fhirUser"] == "Patient/p1"
    assert described["sub"] == clinic.patient.user_id
    assert set(described["scope"].split()) == {"launch/patient", "patient/*.rs"}
    assert described["exp"] > described["iat"]
    assert described["token_type"] == "Bearer"


def test_inactive_tokens(
    anonymous: TestClient, confidential: Resource, clinic: Clinic, clock: MovableClock
) -> None:
    tokens = _tokens(anonymous, confidential, clinic)
    token = tokens["access_token"]
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    assert _introspect(anonymous, confidential, forged) == {"active": False}
    assert _introspect(anonymous, confidential, "not-a-token") == {"active": False}
    clock.advance(timedelta(minutes=11))
    assert _introspect(anonymous, confidential, token) == {"active": False}


def test_a_revoked_session_makes_its_token_inactive(
    anonymous: TestClient, confidential: Resource, clinic: Clinic
) -> None:
    tokens = _tokens(anonymous, confidential, clinic)
    token = tokens["access_token"]
    assert anonymous.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    assert _introspect(anonymous, confidential, token) == {"active": False}


def test_a_client_sees_only_its_own_tokens_and_admins_see_all(
    anonymous: TestClient,
    admin: SignedInAdmin,
    confidential: Resource,
    clinic: Clinic,
) -> None:
    first_party = login(anonymous, clinic.nurse.email, clinic.nurse.password).json()
    assert _introspect(anonymous, confidential, first_party["access_token"]) == {"active": False}
    answer = anonymous.post(
        "/oauth2/introspect",
        data={"token": first_party["access_token"]},
        headers={**FORM, **bearer(admin.access_token)},
    )
    assert answer.status_code == 200
    assert answer.json()["active"] is True
    assert answer.json()["sub"] == clinic.nurse.user_id
    assert "client_id" not in answer.json()  # a first-party session


def test_backend_services_introspect_with_an_assertion(
    anonymous: TestClient, admin: SignedInAdmin
) -> None:
    key = ClientKeyPair.es256()
    created = register(
        anonymous,
        admin.access_token,
        kind="backend",
        scope="system/*.rs",
        jwks={"keys": [key.jwk()]},
    )
    client_id = created["client_id"]
    token_url = "http://testserver/oauth2/token"
    token = client_credentials(anonymous, key.sign(assertion_claims(client_id, token_url)))
    access = token.json()["access_token"]
    answer = anonymous.post(
        "/oauth2/introspect",
        data={
            "token": access,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": key.sign(
                assertion_claims(client_id, "http://testserver/oauth2/introspect")
            ),
        },
        headers=FORM,
    )
    assert answer.status_code == 200, answer.text
    described = answer.json()
    assert described["active"] is True
    assert described["client_id"] == described["sub"] == client_id
    assert described["scope"] == "system/*.rs"


def test_callers_must_authenticate(
    anonymous: TestClient, admin: SignedInAdmin, clinic: Clinic
) -> None:
    public = register(anonymous, admin.access_token)["client_id"]
    tokens = authorized_tokens(anonymous, public, clinic.patient.email, clinic.patient.password)
    body = {"token": tokens["access_token"]}
    assert anonymous.post("/oauth2/introspect", data=body, headers=FORM).status_code == 401
    as_public = anonymous.post(
        "/oauth2/introspect", data={**body, "client_id": public}, headers=FORM
    )
    assert as_public.status_code == 401
    assert as_public.json()["error"] == "invalid_client"
    # A user's own token is no licence to introspect.
    as_user = anonymous.post(
        "/oauth2/introspect", data=body, headers={**FORM, **bearer(tokens["access_token"])}
    )
    assert as_user.status_code == 403
    wrong = anonymous.post(
        "/oauth2/introspect",
        data=body,
        headers={**FORM, "Authorization": "Basic " + base64.b64encode(b"x:y").decode()},
    )
    assert wrong.status_code == 401


def test_a_token_is_required(anonymous: TestClient, confidential: Resource) -> None:
    answer = anonymous.post("/oauth2/introspect", data={}, headers=confidential.headers())
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_request"
