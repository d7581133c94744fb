"""Helpers of the SMART tests: mounting, registration, the authorization-code dance, client
assertions and a small clinic."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi import FastAPI
from starlette.routing import BaseRoute
from starlette.testclient import TestClient
from tests.auth.identity import bearer, create_user

from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.auth.smart import discovery_router
from carechart.auth.smart import router as smart_router
from carechart.context import AppContext

REDIRECT = "https://app.example/callback"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def mount_smart(app: FastAPI) -> FastAPI:
    """The wiring the lead adds to ``create_app``: the SMART routes, discovery ahead of the
    FHIR routes (``/fhir/{type}/{id}`` would otherwise shadow ``/fhir/.well-known/...``)."""
    app.include_router(smart_router)
    before = len(app.router.routes)
    app.include_router(discovery_router)
    added: list[BaseRoute] = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
    return app


# --- registration ---------------------------------------------------------------------------


def register(
    http: TestClient,
    admin_token: str,
    *,
    kind: str = "public",
    scope: str = "launch/patient patient/*.rs offline_access",
    redirect_uris: list[str] | None = None,
    jwks: dict[str, Any] | None = None,
    name: str = "Test app",
    territories: list[str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "kind": kind, "scope": scope}
    if kind != "backend":
        body["redirect_uris"] = redirect_uris if redirect_uris is not None else [REDIRECT]
    if jwks is not None:
        body["jwks"] = jwks
    if territories is not None:
        body["territories"] = territories
    answer = http.post("/api/v1/smart/clients", json=body, headers=bearer(admin_token))
    assert answer.status_code == 201, answer.text
    registered: dict[str, Any] = answer.json()
    return registered


# --- PKCE and the authorization request -----------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Pkce:
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        return b64url(hashlib.sha256(self.verifier.encode()).digest())


def fhir_base(http: TestClient) -> str:
    return f"{str(http.base_url).rstrip('/')}/fhir"


def authorize_params(
    http: TestClient,
    client_id: str,
    pkce: Pkce,
    *,
    scope: str = "launch/patient patient/*.rs",
    redirect_uri: str = REDIRECT,
    state: str | None = None,
    **extra: str,
) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state or secrets.token_urlsafe(16),
        "aud": fhir_base(http),
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return params


def sign_in(
    http: TestClient,
    params: dict[str, str],
    email: str,
    password: str,
    *,
    totp: str | None = None,
    patient: str | None = None,
) -> httpx2.Response:
    form = dict(params, email=email, password=password)
    if totp is not None:
        form["totp"] = totp
    if patient is not None:
        form["patient"] = patient
    return http.post("/oauth2/authorize", data=form, follow_redirects=False)


def redirect_query(answer: httpx2.Response) -> dict[str, str]:
    assert answer.status_code in (302, 303), answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT) or "://" in location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_of(answer: httpx2.Response) -> str:
    query = redirect_query(answer)
    assert "code" in query, query
    return query["code"]


def exchange(
    http: TestClient,
    client_id: str,
    code: str,
    pkce: Pkce,
    *,
    redirect_uri: str = REDIRECT,
    auth: tuple[str, str] | None = None,
) -> httpx2.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": pkce.verifier,
    }
    headers = dict(FORM)
    if auth is None:
        form["client_id"] = client_id
    else:
        raw = f"{auth[0]}:{auth[1]}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    return http.post("/oauth2/token", data=form, headers=headers)


def authorized_tokens(
    http: TestClient,
    client_id: str,
    email: str,
    password: str,
    *,
    scope: str = "launch/patient patient/*.rs",
    patient: str | None = None,
    **extra: str,
) -> dict[str, Any]:
    """The whole dance for a public app: authorize, sign in, exchange."""
    pkce = Pkce()
    params = authorize_params(http, client_id, pkce, scope=scope, **extra)
    answer = sign_in(http, params, email, password, patient=patient)
    code = code_of(answer)
    tokens = exchange(http, client_id, code, pkce)
    assert tokens.status_code == 200, tokens.text
    body: dict[str, Any] = tokens.json()
    return body


# --- client assertions (private_key_jwt) ----------------------------------------------------


@dataclass
class ClientKeyPair:
    kid: str
    alg: str
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @classmethod
    def es256(cls) -> ClientKeyPair:
        return cls(secrets.token_hex(8), "ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def rs384(cls) -> ClientKeyPair:
        return cls(
            secrets.token_hex(8),
            "RS384",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    def jwk(self) -> dict[str, str]:
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            numbers = self.private_key.public_key().public_numbers()
            return {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")),
                "kid": self.kid,
                "alg": "ES256",
                "use": "sig",
            }
        rsa_numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "n": b64url(rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(rsa_numbers.e.to_bytes(3, "big")),
            "kid": self.kid,
            "alg": "RS384",
        }

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        head = {"alg": self.alg, "kid": self.kid, "typ": "JWT", **header}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            der = self.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = self.private_key.sign(
                signing_input.encode(), padding.PKCS1v15(), hashes.SHA384()
            )
        return f"{signing_input}.{b64url(signature)}"


def assertion_claims(
    client_id: str, audience: str, *, now: float | None = None, lifetime: int = 240, **extra: Any
) -> dict[str, Any]:
    moment = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "exp": moment + lifetime,
        "iat": moment,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(extra)
    return claims


def client_credentials(
    http: TestClient, assertion: str, scope: str = "system/*.rs", **extra: str
) -> httpx2.Response:
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }
    return http.post("/oauth2/token", data=form, headers=FORM)


# --- the clinic -----------------------------------------------------------------------------


@dataclass
class Person:
    email: str
    password: str
    user_id: str


@dataclass
class Clinic:
    physician: Person
    nurse: Person
    patient: Person
    other_physician: Person


def put(http: TestClient, resource: dict[str, Any]) -> None:
    url = f"/fhir/{resource['resourceType']}/{resource['id']}"
    answer = http.put(url, json=resource, headers={"Content-Type": "application/fhir+json"})
    assert answer.status_code in (200, 201), answer.text


def observation(oid: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 4.1, "unit": "mmol/L"},
    }


def seed_clinic(system: TestClient, ctx: AppContext, parts: AuthComponents) -> Clinic:
    for doctor in ("dr-a", "dr-b"):
        put(system, {"resourceType": "Practitioner", "id": doctor, "name": [{"family": doctor}]})
    for pid, doctor in (("p1", "dr-a"), ("p2", "dr-a"), ("p3", "dr-b")):
        put(
            system,
            {
                "resourceType": "Patient",
                "id": pid,
                "name": [{"family": f"Family-{pid}"}],
                "generalPractitioner": [{"reference": f"Practitioner/{doctor}"}],
            },
        )
        put(system, observation(f"o-{pid}", pid))

    def person(role: Role, **kwargs: Any) -> Person:
        user, password = create_user(ctx, parts, role=role, **kwargs)
        return Person(user.email, password, user.id)

    return Clinic(
        physician=person(Role.physician, practitioner_id="dr-a"),
        nurse=person(Role.nurse, practitioner_id="dr-a"),
        patient=person(Role.patient, patient_id="p1"),
        other_physician=person(Role.physician, practitioner_id="dr-b"),
    )
