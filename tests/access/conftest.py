"""A small clinic for the access tests: two physicians with their own patients, and one
signed-in caller of every role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.access.personas import bearer, user_token

from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.context import AppContext


def put(client: TestClient, resource: dict[str, Any]) -> None:
    url = f"/fhir/{resource['resourceType']}/{resource['id']}"
    answer = client.put(url, json=resource, headers={"Content-Type": "application/fhir+json"})
    assert answer.status_code in (200, 201), answer.text


def observation(oid: str, patient: str, code: str = "2823-3") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 4.1, "unit": "mmol/L"},
    }


@dataclass
class Clinic:
    """Patient p1 is Dr A's (general practitioner), p2 is Dr B's. Callers by persona."""

    tokens: dict[str, str]
    anonymous: TestClient

    def get(self, persona: str, url: str, headers: dict[str, str] | None = None) -> Any:
        return self.anonymous.get(url, headers=self.headers(persona, **(headers or {})))

    def headers(self, persona: str, **extra: str) -> dict[str, str]:
        return {**bearer(self.tokens[persona]), **extra} if persona in self.tokens else extra

    def request(self, persona: str, method: str, url: str, **kwargs: Any) -> Any:
        headers = {**self.headers(persona), **kwargs.pop("headers", {})}
        return self.anonymous.request(method, url, headers=headers, **kwargs)


PERSONAS: dict[str, dict[str, Any]] = {
    "physician": {"role": Role.physician, "practitioner_id": "dr-a"},
    "other_physician": {"role": Role.physician, "practitioner_id": "dr-b"},
    "nurse": {"role": Role.nurse, "practitioner_id": "dr-a"},
    "front_desk": {"role": Role.front_desk},
    "lab_technician": {"role": Role.lab_technician},
    "billing": {"role": Role.billing},
    "admin": {"role": Role.admin},
    "auditor": {"role": Role.auditor},
    "patient": {"role": Role.patient, "patient_id": "p1"},
    "other_territory": {
        "role": Role.physician,
        "practitioner_id": "dr-a",
        "territories": ["t-elsewhere"],
    },
}


@pytest.fixture
def clinic(
    client: TestClient, anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> Clinic:
    for pid, doctor, family in (("p1", "dr-a", "Alvarez"), ("p2", "dr-b", "Brennan")):
        put(client, {"resourceType": "Practitioner", "id": doctor, "name": [{"family": doctor}]})
        put(
            client,
            {
                "resourceType": "Patient",
                "id": pid,
                "name": [{"family": family}],
                "generalPractitioner": [{"reference": f"Practitioner/{doctor}"}],
            },
        )
    put(client, observation("o1", "p1"))
    put(client, observation("o2", "p2", code="6298-4"))
    put(
        client,
        {
            "resourceType": "Coverage",
            "id": "c1",
            "status": "active",
            "beneficiary": {"reference": "Patient/p1"},
            "payor": [{"display": "Acme Health"}],
        },
    )
    tokens = {}
    for name, spec in PERSONAS.items():
        spec = dict(spec)
        tokens[name] = user_token(anonymous, ctx, auth_parts, spec.pop("role"), **spec)
    return Clinic(tokens, anonymous)
