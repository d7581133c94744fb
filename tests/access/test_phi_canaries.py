"""SECURITY C7, D2: patient data that passes through the FHIR API and the policy point lands
in no log record and in no audit record. Canary values go through create, search (including
blind-indexed and chained parameters), read, a refused read, a rejected body and a break-glass
reason; then every log record of every logger and every audit row is searched for them."""

from __future__ import annotations

import logging
import secrets

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.access.conftest import Clinic

from carechart.context import AppContext
from carechart.db.auth_schema import audit_event
from carechart.db.engine import unit_of_work


def test_phi_canaries_reach_no_log_and_no_audit_record(
    clinic: Clinic, client: TestClient, ctx: AppContext, caplog: pytest.LogCaptureFixture
) -> None:
    family = f"Canary{secrets.token_hex(4)}"
    ssn = f"999-{secrets.randbelow(90) + 10}-{secrets.randbelow(9000) + 1000}"
    reason = f"canary reason {secrets.token_hex(4)}"
    canaries = (family, ssn, reason)
    caplog.set_level(logging.DEBUG)
    patient = {
        "resourceType": "Patient",
        "name": [{"family": family}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}],
        "generalPractitioner": [{"reference": "Practitioner/dr-b"}],
    }
    created = client.post("/fhir/Patient", json=patient)
    assert created.status_code == 201
    new_id = created.headers["location"].split("/")[-3]
    for persona in ("physician", "other_physician", "front_desk"):
        clinic.get(persona, f"/fhir/Patient?family={family}")
        clinic.get(persona, f"/fhir/Patient?identifier=http://hl7.org/fhir/sid/us-ssn|{ssn}")
        clinic.get(persona, f"/fhir/Observation?subject:Patient.family={family}")
        clinic.get(persona, f"/fhir/Patient/{new_id}")
    bad = {**patient, "birthDate": f"{family}-not-a-date"}
    assert client.post("/fhir/Patient", json=bad).status_code == 400
    clinic.request(
        "physician",
        "POST",
        "/api/v1/access/break-glass",
        json={"patient_id": new_id, "reason": reason},
    )
    # The capture sees the server's loggers (else this test could not fail).
    logging.getLogger("carechart").debug("capture probe")
    assert any(r.getMessage() == "capture probe" for r in caplog.records)
    # Every logger of the server side; the test's own HTTP client logs the URLs it calls.
    server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = [
        str(value)
        for record in server_records
        for value in (record.getMessage(), record.args, record.exc_text)
        if value
    ]
    with unit_of_work(ctx.engine, write=False) as conn:
        rows = conn.execute(sa.select(audit_event)).all()
    assert rows, "the accesses above must have been audited"
    audited = [str(value) for row in rows for value in row if value is not None]
    for canary in canaries:
        assert not [line for line in logged if canary in line], f"{canary!r} was logged"
        assert not [value for value in audited if canary in value], f"{canary!r} was audited"
