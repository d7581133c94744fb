"""SMART Backend Services: client_credentials with a private_key_jwt assertion (SECURITY A7)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.auth.identity import SignedInAdmin, bearer
from tests.auth.smart.smart_kit import (
    ASSERTION_TYPE,
    FORM,
    ClientKeyPair,
    assertion_claims,
    b64url,
    client_credentials,
    put,
    register,
)

TOKEN_URL = "http://testserver/oauth2/token"


class Backend:
    def __init__(self, client_id: str, keys: list[ClientKeyPair]) -> None:
        self.client_id = client_id
        self.keys = keys

    def assertion(self, key: int = 0, **claims: Any) -> str:
        return self.keys[key].sign(assertion_claims(self.client_id, TOKEN_URL, **claims))


@pytest.fixture
def backend(anonymous: TestClient, admin: SignedInAdmin) -> Backend:
    keys = [ClientKeyPair.es256(), ClientKeyPair.rs384()]
    created = register(
        anonymous,
        admin.access_token,
        kind="backend",
        scope="system/*.rs system/Observation.cruds",
        jwks={"keys": [k.jwk() for k in keys]},
    )
    return Backend(created["client_id"], keys)


def _invalid_client(answer: Any) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == "invalid_client"


@pytest.mark.parametrize("key", [0, 1], ids=["ES256", "RS384"])
def test_a_valid_assertion_buys_a_token(
    anonymous: TestClient, client: TestClient, backend: Backend, key: int
) -> None:
    put(client, {"resourceType": "Patient", "id": "pb", "name": [{"family": "Backend"}]})
    answer = client_credentials(anonymous, backend.assertion(key), scope="system/*.rs")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "system/*.rs"
    assert "refresh_token" not in body
    assert "no-store" in answer.headers["cache-control"]
    token = body["access_token"]
    assert anonymous.get("/fhir/Patient/pb", headers=bearer(token)).status_code == 200
    created = anonymous.post(
        "/fhir/Patient",
        json={"resourceType": "Patient"},
        headers={**bearer(token), "Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 403  # system/*.rs: no create


def test_a_replayed_jti_is_refused(anonymous: TestClient, backend: Backend) -> None:
    assertion = backend.assertion()
    assert client_credentials(anonymous, assertion).status_code == 200
    _invalid_client(client_credentials(anonymous, assertion))
    # The same jti in a freshly signed assertion is a replay too.
    jti = "fixed-jti"
    assert client_credentials(anonymous, backend.assertion(jti=jti)).status_code == 200
    _invalid_client(client_credentials(anonymous, backend.assertion(jti=jti)))
    _invalid_client(client_credentials(anonymous, backend.assertion(key=1, jti=jti)))


def _none_alg(backend: Backend) -> str:
    import json

    claims = assertion_claims(backend.client_id, TOKEN_URL)
    head = {"alg": "none", "kid": backend.keys[0].kid, "typ": "JWT"}
    return f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}."


def _hs256(backend: Backend) -> str:
    import hashlib
    import hmac
    import json

    claims = assertion_claims(backend.client_id, TOKEN_URL)
    head = {"alg": "HS256", "kid": backend.keys[0].kid}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
    key = json.dumps(backend.keys[0].jwk()).encode()
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def _swapped_kid(backend: Backend) -> str:
    # Signed by the RSA key but naming the EC key's kid (and alg).
    claims = assertion_claims(backend.client_id, TOKEN_URL)
    rsa_key = backend.keys[1]
    forged = ClientKeyPair(backend.keys[0].kid, "RS384", rsa_key.private_key)
    return forged.sign(claims)


def _unregistered_key(backend: Backend) -> str:
    stranger = ClientKeyPair.es256()
    stranger.kid = backend.keys[0].kid  # claims to be the registered key
    return stranger.sign(assertion_claims(backend.client_id, TOKEN_URL))


BAD: dict[str, Callable[[Backend], str]] = {
    "expired": lambda b: b.assertion(now=time.time() - 600),
    "more than five minutes": lambda b: b.assertion(lifetime=6 * 60),
    "wrong audience": lambda b: b.keys[0].sign(
        assertion_claims(b.client_id, "https://elsewhere.example/token")
    ),
    "issued in the future": lambda b: b.assertion(iat=int(time.time()) + 3600),
    "no exp": lambda b: b.keys[0].sign(
        {k: v for k, v in assertion_claims(b.client_id, TOKEN_URL).items() if k != "exp"}
    ),
    "no jti": lambda b: b.keys[0].sign(
        {k: v for k, v in assertion_claims(b.client_id, TOKEN_URL).items() if k != "jti"}
    ),
    "sub is not iss": lambda b: b.assertion(sub="someone-else"),
    "alg none": _none_alg,
    "HS256 with the public key": _hs256,
    "unregistered key": _unregistered_key,
    "kid of another key type": _swapped_kid,
    "unknown kid": lambda b: b.keys[0].sign(
        assertion_claims(b.client_id, TOKEN_URL), kid="not-registered"
    ),
    "key in the header": lambda b: b.keys[0].sign(
        assertion_claims(b.client_id, TOKEN_URL), jwk=b.keys[0].jwk()
    ),
    "garbage": lambda b: "not.a.jwt",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_assertion_is_invalid_client(
    anonymous: TestClient, backend: Backend, case: str
) -> None:
    _invalid_client(client_credentials(anonymous, BAD[case](backend)))
    # The client itself is fine: a good assertion still works.
    assert client_credentials(anonymous, backend.assertion()).status_code == 200


def test_the_assertion_type_must_be_jwt_bearer(anonymous: TestClient, backend: Backend) -> None:
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": "urn:example:other",
        "client_assertion": backend.assertion(),
    }
    _invalid_client(anonymous.post("/oauth2/token", data=form, headers=FORM))


def test_a_backend_needs_an_assertion(anonymous: TestClient, backend: Backend) -> None:
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_id": backend.client_id,
    }
    _invalid_client(anonymous.post("/oauth2/token", data=form, headers=FORM))


def test_scopes_outside_the_registration_are_invalid_scope(
    anonymous: TestClient, backend: Backend
) -> None:
    answer = client_credentials(anonymous, backend.assertion(), scope="system/*.cruds user/*.rs")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_scope"


def test_a_deactivated_backend_is_refused(
    anonymous: TestClient, admin: SignedInAdmin, backend: Backend
) -> None:
    token = client_credentials(anonymous, backend.assertion()).json()["access_token"]
    anonymous.delete(
        f"/api/v1/smart/clients/{backend.client_id}", headers=bearer(admin.access_token)
    )
    _invalid_client(client_credentials(anonymous, backend.assertion()))
    assert anonymous.get("/fhir/Patient", headers=bearer(token)).status_code == 401


def test_public_apps_cannot_use_client_credentials(
    anonymous: TestClient, admin: SignedInAdmin
) -> None:
    app = register(anonymous, admin.access_token)["client_id"]
    form = {"grant_type": "client_credentials", "scope": "patient/*.rs", "client_id": app}
    answer = anonymous.post("/oauth2/token", data=form, headers=FORM)
    assert answer.status_code == 400
    assert answer.json()["error"] == "unauthorized_client"


def test_assertion_type_without_assertion(anonymous: TestClient) -> None:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
    _invalid_client(anonymous.post("/oauth2/token", data=form, headers=FORM))
