"""Every route of the application x every persona has an expected answer (SECURITY B1, B5).

The cases are keyed by the application's own route table: a route added without an entry
here fails :func:`test_every_route_has_an_entry`, so nothing ships unguarded by accident.
Roles see the clinic of tests/access/conftest.py (Dr A's patient p1, Dr B's patient p2).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.testclient import TestClient
from tests.access.conftest import PERSONAS, Clinic, observation
from tests.access.personas import user_token
from tests.auth.identity import MovableClock

from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.auth.tokens import SigningKey
from carechart.context import AppContext

ROLES = tuple(PERSONAS)
UNAUTHENTICATED = ("anonymous", "expired", "forged", "unsigned")
FHIR_JSON = "application/fhir+json"


@dataclass
class Case:
    method: str
    url: str
    expected: dict[str, int]
    default: int
    body: Any = None
    content_type: str = FHIR_JSON
    public: bool = False
    # Prepares a fresh target (e.g. something to delete) and answers the URL to call.
    setup: Callable[[TestClient], str] | None = None
    form: dict[str, str] = field(default_factory=dict)

    def status_for(self, persona: str) -> int:
        if persona in UNAUTHENTICATED and not self.public:
            return 401
        return self.expected.get(persona, self.default)


def by_role(default: int, **expected: int) -> dict[str, int]:
    return {persona: expected.get(persona, default) for persona in ROLES}


# Who reaches Observation o1 (p1's): Dr A and his nurse (care team), the lab (territory-wide)
# and the patient herself.
O1_READERS = {"physician": 200, "nurse": 200, "lab_technician": 200, "patient": 200}
P1_READERS = {**O1_READERS, "front_desk": 200, "billing": 200}
AUDITORS_ONLY = by_role(403, auditor=200)


def fresh_observation(client: TestClient) -> str:
    oid = f"tmp-{uuid.uuid4().hex[:8]}"
    answer = client.put(f"/fhir/Observation/{oid}", json=observation(oid, "p1"))
    assert answer.status_code == 201
    return oid


def _delete_url(client: TestClient) -> str:
    return f"/fhir/Observation/{fresh_observation(client)}"


def _conditional_delete_url(client: TestClient) -> str:
    return f"/fhir/Observation?_id={fresh_observation(client)}"


NEW_OBSERVATION = {k: v for k, v in observation("x", "p1").items() if k != "id"}
BATCH = {
    "resourceType": "Bundle",
    "type": "batch",
    "entry": [{"request": {"method": "GET", "url": "Observation/o1"}}],
}

CASES: dict[tuple[str, str], Case] = {
    # The API description: any signed-in caller (it holds no data, but B1 lists no more).
    ("GET", "/openapi.json"): Case("GET", "/openapi.json", by_role(200), 200),
    ("GET", "/docs"): Case("GET", "/docs", by_role(200), 200),
    # Public: capabilities, keys, health.
    ("GET", "/fhir/metadata"): Case("GET", "/fhir/metadata", {}, 200, public=True),
    ("GET", "/.well-known/jwks.json"): Case("GET", "/.well-known/jwks.json", {}, 200, public=True),
    ("GET", "/health"): Case("GET", "/health", {}, 200, public=True),
    # The audit trail as FHIR: auditors only.
    ("GET", "/fhir/AuditEvent"): Case("GET", "/fhir/AuditEvent", AUDITORS_ONLY, 403),
    ("POST", "/fhir/AuditEvent/_search"): Case(
        "POST",
        "/fhir/AuditEvent/_search",
        AUDITORS_ONLY,
        403,
        content_type="application/x-www-form-urlencoded",
        form={"action": "R"},
    ),
    ("GET", "/fhir/AuditEvent/{event_id}"): Case("GET", "/fhir/AuditEvent/1", AUDITORS_ONLY, 403),
    # FHIR reads of p1's data.
    ("GET", "/fhir/{resource_type:fhir_type}/{resource_id:fhir_id}"): Case(
        "GET", "/fhir/Observation/o1", by_role(404, **O1_READERS), 404
    ),
    ("GET", "/fhir/{resource_type}/{resource_id}"): Case(
        "GET", "/api/v1/fhir/Observation/o1", by_role(404, **O1_READERS), 404
    ),
    ("GET", "/fhir/{resource_type}/{resource_id}/_history/{version_id}"): Case(
        "GET", "/fhir/Observation/o1/_history/1", by_role(404, **O1_READERS), 404
    ),
    ("GET", "/fhir/{resource_type}/{resource_id}/_history"): Case(
        "GET", "/fhir/Observation/o1/_history", by_role(404, **O1_READERS), 404
    ),
    ("GET", "/fhir/Patient/{patient_id}/$everything"): Case(
        "GET", "/fhir/Patient/p1/$everything", by_role(404, **P1_READERS), 404
    ),
    ("GET", "/fhir/Patient/{patient_id}/{resource_type}"): Case(
        "GET",
        "/fhir/Patient/p1/Observation",
        by_role(404, **O1_READERS, front_desk=403, billing=403),
        404,
    ),
    # Searches: refused for roles without the type, filtered for the others.
    ("GET", "/fhir/{resource_type}"): Case(
        "GET",
        "/fhir/Observation",
        by_role(200, front_desk=403, billing=403, admin=403, auditor=403),
        200,
    ),
    ("POST", "/fhir/{resource_type}/_search"): Case(
        "POST",
        "/fhir/Observation/_search",
        by_role(200, front_desk=403, billing=403, admin=403, auditor=403),
        200,
        content_type="application/x-www-form-urlencoded",
        form={"code": "2823-3"},
    ),
    ("GET", "/fhir/_history"): Case("GET", "/fhir/_history", by_role(200), 200),
    ("GET", "/fhir/{resource_type}/_history"): Case(
        "GET", "/fhir/Observation/_history", by_role(200), 200
    ),
    ("GET", "/fhir/Patient/$everything"): Case(
        "GET", "/fhir/Patient/$everything", by_role(200), 200
    ),
    ("POST", "/fhir"): Case("POST", "/fhir", by_role(200), 200, body=BATCH),
    ("POST", "/fhir/"): Case("POST", "/fhir/", by_role(200), 200, body=BATCH),
    # Writes.
    ("POST", "/fhir/{resource_type}"): Case(
        "POST",
        "/fhir/Observation",
        by_role(403, physician=201, nurse=201, lab_technician=201),
        403,
        body=NEW_OBSERVATION,
    ),
    ("PUT", "/fhir/{resource_type}/{resource_id}"): Case(
        "PUT",
        "/fhir/Observation/o1",
        by_role(403, physician=200, nurse=200, lab_technician=200),
        403,
        body=observation("o1", "p1"),
    ),
    ("PUT", "/fhir/{resource_type}"): Case(
        "PUT",
        "/fhir/Observation?_id=o1",
        by_role(403, physician=200, nurse=200, lab_technician=200),
        403,
        body=observation("o1", "p1"),
    ),
    ("PATCH", "/fhir/{resource_type}/{resource_id}"): Case(
        "PATCH",
        "/fhir/Observation/o1",
        by_role(
            403,
            physician=200,
            nurse=200,
            lab_technician=200,
            other_physician=404,
            other_territory=404,
        ),
        403,
        body=[{"op": "replace", "path": "/status", "value": "amended"}],
        content_type="application/json-patch+json",
    ),
    ("DELETE", "/fhir/{resource_type}/{resource_id}"): Case(
        "DELETE",
        "",
        by_role(403, physician=204, other_physician=404, other_territory=404),
        403,
        setup=_delete_url,
    ),
    ("DELETE", "/fhir/{resource_type}"): Case(
        "DELETE",
        "",
        # The other physicians' criteria match nothing they can see: "deleted 0".
        by_role(403, physician=200, other_physician=200, other_territory=200),
        403,
        setup=_conditional_delete_url,
    ),
    # Identity.
    ("POST", "/api/v1/auth/login"): Case(
        "POST",
        "/api/v1/auth/login",
        {},
        401,
        public=True,
        body={"email": "nobody-{n}@clinic.example", "password": "not the password at all"},
        content_type="application/json",
    ),
    ("POST", "/api/v1/auth/mfa/verify"): Case(
        "POST",
        "/api/v1/auth/mfa/verify",
        {},
        401,
        public=True,
        body={"code": "000000", "mfa_ticket": "not-a-ticket"},
        content_type="application/json",
    ),
    ("POST", "/api/v1/auth/refresh"): Case(
        "POST",
        "/api/v1/auth/refresh",
        {},
        401,
        public=True,
        body={"refresh_token": "not-a-refresh-token"},
        content_type="application/json",
    ),
    ("POST", "/api/v1/auth/mfa/enroll"): Case(
        "POST", "/api/v1/auth/mfa/enroll", by_role(200, admin=403), 200
    ),
    ("GET", "/api/v1/auth/me"): Case("GET", "/api/v1/auth/me", by_role(200), 200),
    ("POST", "/api/v1/auth/change-password"): Case(
        "POST",
        "/api/v1/auth/change-password",
        by_role(401),
        401,
        body={"current_password": "wrong password here", "new_password": "x" * 20},
        content_type="application/json",
    ),
    ("POST", "/api/v1/auth/register"): Case(
        "POST",
        "/api/v1/auth/register",
        by_role(403, admin=201),
        403,
        body={
            "email": "new-{n}@clinic.example",
            "password": "lantern meadow quietly 2041",
            "full_name": "New Nurse",
            "role": "nurse",
        },
        content_type="application/json",
    ),
    ("POST", "/api/v1/auth/logout"): Case("POST", "/api/v1/auth/logout", by_role(204), 204),
    # Break-glass.
    ("POST", "/api/v1/access/break-glass"): Case(
        "POST",
        "/api/v1/access/break-glass",
        by_role(403, physician=201, other_physician=201, nurse=201, other_territory=404),
        403,
        body={"patient_id": "p2", "reason": "unconscious in the emergency room"},
        content_type="application/json",
    ),
    ("GET", "/api/v1/access/break-glass"): Case(
        "GET", "/api/v1/access/break-glass", AUDITORS_ONLY, 403
    ),
    # SMART on FHIR: discovery and the OAuth endpoints are public (they authenticate the
    # client or the user themselves); client management is for administrators.
    ("GET", "/.well-known/smart-configuration"): Case(
        "GET", "/.well-known/smart-configuration", {}, 200, public=True
    ),
    ("GET", "/fhir/.well-known/smart-configuration"): Case(
        "GET", "/fhir/.well-known/smart-configuration", {}, 200, public=True
    ),
    ("GET", "/oauth2/authorize"): Case("GET", "/oauth2/authorize", {}, 400, public=True),
    ("POST", "/oauth2/authorize"): Case(
        "POST",
        "/oauth2/authorize",
        {},
        400,
        public=True,
        content_type="application/x-www-form-urlencoded",
        form={"client_id": "nobody", "email": "x@y.example", "password": "whatever"},
    ),
    ("POST", "/oauth2/token"): Case(
        "POST",
        "/oauth2/token",
        {},
        401,
        public=True,
        content_type="application/x-www-form-urlencoded",
        form={"grant_type": "refresh_token", "client_id": "nobody", "refresh_token": "x"},
    ),
    ("POST", "/oauth2/introspect"): Case(
        "POST",
        "/oauth2/introspect",
        by_role(403, admin=200),
        403,
        content_type="application/x-www-form-urlencoded",
        form={"token": "not-a-token"},
    ),
    ("POST", "/api/v1/smart/clients"): Case(
        "POST",
        "/api/v1/smart/clients",
        by_role(403, admin=201),
        403,
        body={
            "name": "App {n}",
            "kind": "public",
            "redirect_uris": ["http://localhost/cb"],
            "scope": "launch/patient patient/*.rs",
        },
        content_type="application/json",
    ),
    ("GET", "/api/v1/smart/clients"): Case(
        "GET", "/api/v1/smart/clients", by_role(403, admin=200), 403
    ),
    ("DELETE", "/api/v1/smart/clients/{client_id}"): Case(
        "DELETE", "/api/v1/smart/clients/nobody", by_role(403, admin=404), 403
    ),
    ("POST", "/api/v1/smart/launch"): Case(
        "POST",
        "/api/v1/smart/launch",
        by_role(403, physician=201, nurse=201, other_physician=404, other_territory=404),
        403,
        body={"patient_id": "p1"},
        content_type="application/json",
    ),
    # HL7 v2 over HTTP: for interface clients (backend services) only.
    ("POST", "/api/v1/hl7"): Case(
        "POST", "/api/v1/hl7", by_role(403), 403, content_type="application/hl7-v2"
    ),
    # Audit reports: auditors only.
    ("GET", "/api/v1/audit/events"): Case("GET", "/api/v1/audit/events", AUDITORS_ONLY, 403),
    ("GET", "/api/v1/audit/patients/{patient_id}"): Case(
        "GET", "/api/v1/audit/patients/p1", AUDITORS_ONLY, 403
    ),
    ("GET", "/api/v1/audit/users/{user_id}"): Case(
        "GET", "/api/v1/audit/users/u1", AUDITORS_ONLY, 403
    ),
    ("GET", "/api/v1/audit/break-glass"): Case(
        "GET", "/api/v1/audit/break-glass", AUDITORS_ONLY, 403
    ),
    ("GET", "/api/v1/audit/failed-logins"): Case(
        "GET", "/api/v1/audit/failed-logins", AUDITORS_ONLY, 403
    ),
}


def route_table(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method, context.path)
        for context in iter_route_contexts(app.router.routes)
        for method in (context.methods or ())
        if method != "HEAD"
    }


def test_every_route_has_an_entry(app: FastAPI) -> None:
    missing = sorted(route_table(app) - CASES.keys())
    assert not missing, f"routes without an expected outcome per persona: {missing}"
    stale = sorted(CASES.keys() - route_table(app))
    assert not stale, f"entries for routes that no longer exist: {stale}"


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def bad_tokens(good: str) -> dict[str, str]:
    """A valid token's claims re-signed with a key we never published, and sent unsigned."""
    header_b64, payload_b64, _ = good.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    impostor = SigningKey.generate()
    forged = SigningKey(kid=header["kid"], private_key=impostor.private_key).sign(
        payload, typ=header["typ"]
    )
    unsigned = f"{_b64({'alg': 'none', 'typ': header['typ']})}.{payload_b64}."
    return {"forged": forged, "unsigned": unsigned}


def test_every_route_answers_every_persona_as_expected(
    clinic: Clinic,
    client: TestClient,
    anonymous: TestClient,
    ctx: AppContext,
    auth_parts: AuthComponents,
) -> None:
    clock = auth_parts.clock
    assert isinstance(clock, MovableClock)
    clock.advance(-timedelta(hours=1))
    expired = user_token(anonymous, ctx, auth_parts, Role.nurse, practitioner_id="dr-a")
    clock.advance(timedelta(hours=1))
    tokens = {**clinic.tokens, "expired": expired, **bad_tokens(clinic.tokens["nurse"])}
    failures: list[str] = []
    # Logging out ends the persona's session: last.
    ordered = sorted(CASES.items(), key=lambda item: item[0][1] == "/api/v1/auth/logout")
    for (method, path), case in ordered:
        for n, persona in enumerate((*UNAUTHENTICATED, *ROLES)):
            url = case.setup(client) if case.setup else case.url
            headers = {"Content-Type": case.content_type}
            if persona != "anonymous":
                headers["Authorization"] = f"Bearer {tokens[persona]}"
            kwargs: dict[str, Any] = {}
            if case.form:
                kwargs["content"] = "&".join(f"{k}={v}" for k, v in case.form.items())
            elif case.body is not None:
                body = json.loads(json.dumps(case.body).replace("{n}", f"{persona}{n}"))
                kwargs["content"] = json.dumps(body)
            answer = anonymous.request(case.method, url, headers=headers, **kwargs)
            expected = case.status_for(persona)
            if answer.status_code != expected:
                failures.append(
                    f"{method} {path} as {persona}: {answer.status_code}, expected {expected}"
                    f" ({answer.text[:160]})"
                )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("scope", ["system/Patient.rs", "system/Observation.r"])
def test_client_scopes_narrow_exactly(
    scope: str, clinic: Clinic, anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    from tests.access.personas import bearer, system_token

    headers = bearer(system_token(ctx, auth_parts, scope=[scope]))
    patient = anonymous.get("/fhir/Patient/p1", headers=headers).status_code
    obs = anonymous.get("/fhir/Observation/o1", headers=headers).status_code
    obs_search = anonymous.get("/fhir/Observation", headers=headers).status_code
    create = anonymous.post(
        "/fhir/Patient",
        json={"resourceType": "Patient"},
        headers={**headers, "Content-Type": FHIR_JSON},
    ).status_code
    if scope == "system/Patient.rs":
        assert (patient, obs, obs_search, create) == (200, 404, 403, 403)
    else:  # read without search
        assert (patient, obs, obs_search, create) == (404, 200, 403, 403)
