"""The policy point on the FHIR API, end to end over HTTP (SECURITY B1-B5, B7-B9, C1).

Two physicians, each with a patient; one caller of every role. Everything a caller may not
read must look exactly like something that does not exist, whichever route reaches it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.access.conftest import Clinic, observation

from carechart.context import AppContext
from carechart.db.auth_schema import audit_event, break_glass_grant
from carechart.db.engine import unit_of_work

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") == mode and "resource" in e
    }


def audit_rows(ctx: AppContext, **where: Any) -> list[dict[str, Any]]:
    t = audit_event
    conditions = [t.c.tenant_id == ctx.settings.default_tenant]
    conditions += [t.c[k] == v for k, v in where.items()]
    with unit_of_work(ctx.engine, write=False) as conn:
        rows = conn.execute(sa.select(t).where(*conditions).order_by(t.c.chain_index)).all()
    return [dict(r._mapping) for r in rows]


def test_only_the_public_routes_answer_without_a_token(anonymous: TestClient) -> None:
    assert anonymous.get("/fhir/metadata").status_code == 200
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/.well-known/jwks.json").status_code == 200
    for method, url in (
        ("GET", "/fhir/Patient/p1"),
        ("GET", "/fhir/Patient"),
        ("POST", "/fhir/Patient"),
        ("GET", "/api/v1/fhir/Patient/p1"),
        ("POST", "/fhir"),
        ("GET", "/fhir/_history"),
        ("GET", "/api/v1/audit/events"),
    ):
        answer = anonymous.request(method, url, json={}, headers=FHIR_JSON)
        assert answer.status_code == 401, (method, url, answer.text)
        assert "www-authenticate" in answer.headers


def test_a_patient_outside_the_care_team_looks_like_no_patient(clinic: Clinic) -> None:
    assert clinic.get("physician", "/fhir/Patient/p1").status_code == 200
    hidden = clinic.get("physician", "/fhir/Patient/p2")
    missing = clinic.get("physician", "/fhir/Patient/p9")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace("p2", "X") == missing.text.replace("p9", "X")
    assert dict(hidden.headers).keys() == dict(missing.headers).keys()
    # IDOR: the other physician replays the first one's ids, and the reverse.
    assert clinic.get("other_physician", "/fhir/Patient/p1").status_code == 404
    assert clinic.get("other_physician", "/fhir/Observation/o1").status_code == 404
    assert clinic.get("other_physician", "/fhir/Patient/p2").status_code == 200
    assert clinic.get("physician", "/fhir/Observation/o2").status_code == 404
    assert clinic.get("physician", "/fhir/Observation/o2/_history/1").status_code == 404


def test_searches_count_and_page_over_permitted_rows_only(clinic: Clinic) -> None:
    patients = clinic.get("physician", "/fhir/Patient").json()
    assert ids(patients) == {"Patient/p1"}
    assert patients["total"] == 1
    assert ids(clinic.get("physician", "/fhir/Observation").json()) == {"Observation/o1"}
    assert ids(clinic.get("other_physician", "/fhir/Observation").json()) == {"Observation/o2"}
    paged = clinic.get("physician", "/fhir/Observation?_count=1").json()
    assert paged["total"] == 1
    assert not [link for link in paged["link"] if link["relation"] == "next"]


def test_chains_has_and_includes_reveal_nothing(clinic: Clinic, client: TestClient) -> None:
    chained = "/fhir/Observation?subject:Patient.family=Brennan"
    reverse = "/fhir/Patient?_has:Observation:patient:code=6298-4"
    revinclude = "/fhir/Practitioner?_id=dr-b&_revinclude=Patient:general-practitioner"
    # Sanity: a caller who may see everything finds them.
    assert ids(client.get(chained).json()) == {"Observation/o2"}
    assert ids(client.get(reverse).json()) == {"Patient/p2"}
    assert ids(client.get(revinclude).json(), "include") == {"Patient/p2"}
    assert clinic.get("physician", chained).json()["total"] == 0
    assert clinic.get("physician", reverse).json()["total"] == 0
    shown = clinic.get("physician", revinclude).json()
    assert ids(shown) == {"Practitioner/dr-b"}
    assert ids(shown, "include") == set()
    included = clinic.get("physician", "/fhir/Observation?_include=Observation:subject").json()
    assert ids(included, "include") == {"Patient/p1"}
    # A chain through a type the role may not search is refused outright.
    front = clinic.get("front_desk", "/fhir/Patient?_has:Observation:patient:code=6298-4")
    assert front.status_code == 403


def test_history_everything_and_compartments_are_guarded(clinic: Clinic) -> None:
    assert clinic.get("physician", "/fhir/Patient/p2/_history").status_code == 404
    assert clinic.get("physician", "/fhir/Patient/p2/$everything").status_code == 404
    assert clinic.get("physician", "/fhir/Patient/p2/Observation").status_code == 404
    history = clinic.get("physician", "/fhir/Observation/_history").json()
    assert {e["resource"]["id"] for e in history["entry"]} == {"o1"}
    system_history = clinic.get("physician", "/fhir/_history").json()
    seen = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in system_history["entry"]
    }
    assert "Patient/p2" not in seen
    assert "Observation/o2" not in seen
    everything = clinic.get("physician", "/fhir/Patient/p1/$everything").json()
    # Physicians see the chart, not the patient's insurance (minimum necessary).
    assert ids(everything) == {"Patient/p1", "Observation/o1"}


def test_bundle_entries_are_checked_one_by_one(clinic: Clinic, client: TestClient) -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "GET", "url": "Patient/p2"}},
            {"request": {"method": "GET", "url": "Observation?code=6298-4"}},
        ],
    }
    answer = clinic.request("physician", "POST", "/fhir", json=batch, headers=FHIR_JSON).json()
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses[:2] == ["200 OK", "404 Not Found"]
    assert answer["entry"][2]["resource"]["total"] == 0

    before = client.get("/fhir/Observation").json()["total"]
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**observation("x", "p1"), "id": None},
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {**observation("x", "p2"), "id": None},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    for entry in transaction["entry"]:
        entry["resource"].pop("id")
    refused = clinic.request("physician", "POST", "/fhir", json=transaction, headers=FHIR_JSON)
    assert refused.status_code == 403, refused.text
    assert client.get("/fhir/Observation").json()["total"] == before


def test_writes_are_checked_before_and_after(clinic: Clinic, client: TestClient) -> None:
    moved = {**observation("o1", "p2")}
    answer = clinic.request(
        "physician", "PUT", "/fhir/Observation/o1", json=moved, headers=FHIR_JSON
    )
    assert answer.status_code == 403
    assert client.get("/fhir/Observation/o1").json()["subject"]["reference"] == "Patient/p1"
    create = {k: v for k, v in observation("n", "p2").items() if k != "id"}
    assert (
        clinic.request(
            "physician", "POST", "/fhir/Observation", json=create, headers=FHIR_JSON
        ).status_code
        == 403
    )
    own = {k: v for k, v in observation("n", "p1").items() if k != "id"}
    assert (
        clinic.request(
            "physician", "POST", "/fhir/Observation", json=own, headers=FHIR_JSON
        ).status_code
        == 201
    )
    # Nurses chart but do not delete; physicians may.
    assert clinic.request("nurse", "DELETE", "/fhir/Observation/o1").status_code == 403
    assert clinic.request("physician", "DELETE", "/fhir/Observation/o1").status_code == 204
    # Deleting what one cannot see is answered as for a missing resource.
    assert clinic.request("physician", "DELETE", "/fhir/Observation/o2").status_code == 404


APPOINTMENT = {
    "resourceType": "Appointment",
    "status": "booked",
    "participant": [
        {"actor": {"reference": "Patient/p2"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/dr-a"}, "status": "accepted"},
    ],
}
COVERAGE = {
    "resourceType": "Coverage",
    "status": "active",
    "beneficiary": {"reference": "Patient/p2"},
    "payor": [{"display": "Acme Health"}],
}


@pytest.mark.parametrize(
    ("persona", "method", "url", "body", "status"),
    [
        # Front desk: demographics and appointments, every patient of the territory.
        ("front_desk", "GET", "/fhir/Patient/p2", None, 200),
        ("front_desk", "GET", "/fhir/Observation/o1", None, 404),
        ("front_desk", "GET", "/fhir/Observation", None, 403),
        ("front_desk", "GET", "/fhir/Coverage/c1", None, 404),
        ("front_desk", "POST", "/fhir/Appointment", APPOINTMENT, 201),
        # Billing: coverage, claims and codes.
        ("billing", "GET", "/fhir/Coverage/c1", None, 200),
        ("billing", "POST", "/fhir/Coverage", COVERAGE, 201),
        ("billing", "GET", "/fhir/Condition", None, 200),
        ("billing", "GET", "/fhir/Observation/o1", None, 404),
        ("billing", "DELETE", "/fhir/Patient/p1", None, 403),
        # Lab: orders and results.
        ("lab_technician", "GET", "/fhir/Observation/o2", None, 200),
        ("lab_technician", "GET", "/fhir/Condition", None, 403),
        ("lab_technician", "DELETE", "/fhir/Observation/o2", None, 403),
        # Administrators run the system, not charts.
        ("admin", "GET", "/fhir/Patient/p1", None, 404),
        ("admin", "GET", "/fhir/Patient", None, 403),
        ("admin", "POST", "/fhir/Practitioner", {"resourceType": "Practitioner"}, 201),
        # Auditors read the trail, not the chart.
        ("auditor", "GET", "/fhir/Patient/p1", None, 404),
        ("auditor", "GET", "/fhir/AuditEvent", None, 200),
        ("auditor", "POST", "/fhir/AuditEvent", {"resourceType": "AuditEvent"}, 403),
        # A patient reads their own record and nothing else, and writes nothing.
        ("patient", "GET", "/fhir/Patient/p1", None, 200),
        ("patient", "GET", "/fhir/Coverage/c1", None, 200),
        ("patient", "GET", "/fhir/Patient/p2", None, 404),
        ("patient", "GET", "/fhir/Observation/o2", None, 404),
        ("patient", "POST", "/fhir/Appointment", APPOINTMENT, 403),
        # Reference data (practitioners, organisations) is shared by every staff role.
        ("physician", "GET", "/fhir/Practitioner/dr-b", None, 200),
    ],
)
def test_role_matrix_minimum_necessary(
    clinic: Clinic, persona: str, method: str, url: str, body: Any, status: int
) -> None:
    answer = clinic.request(persona, method, url, json=body, headers=FHIR_JSON)
    assert answer.status_code == status, answer.text


def test_a_patient_sees_only_their_own_compartment(clinic: Clinic) -> None:
    assert ids(clinic.get("patient", "/fhir/Observation").json()) == {"Observation/o1"}
    assert ids(clinic.get("patient", "/fhir/Patient").json()) == {"Patient/p1"}
    assert clinic.get("patient", "/fhir/Patient/p2/$everything").status_code == 404


def test_an_appointment_creates_the_care_relationship(clinic: Clinic) -> None:
    assert clinic.get("physician", "/fhir/Patient/p2").status_code == 404
    booked = clinic.request(
        "front_desk", "POST", "/fhir/Appointment", json=APPOINTMENT, headers=FHIR_JSON
    )
    assert booked.status_code == 201
    assert clinic.get("physician", "/fhir/Patient/p2").status_code == 200
    assert clinic.get("physician", "/fhir/Observation/o2").status_code == 200


def test_other_territories_are_invisible_and_unwritable(clinic: Clinic, ctx: AppContext) -> None:
    home = ctx.settings.default_tenant
    # Their own territory is empty; the clinic's is not theirs.
    assert clinic.get("other_territory", "/fhir/Patient/p1").status_code == 404
    header = {"Territory-Id": home}
    assert clinic.get("other_territory", "/fhir/Patient/p1", headers=header).status_code == 404
    write = clinic.request(
        "other_territory",
        "POST",
        "/fhir/Patient",
        json={"resourceType": "Patient"},
        headers={**FHIR_JSON, **header},
    )
    assert write.status_code == 403
    assert write.json()["issue"][0]["code"] == "forbidden"
    bad = clinic.get("physician", "/fhir/Patient/p1", headers={"Territory-Id": "<x>"})
    assert bad.status_code == 400
    # What they write in their own territory stays there.
    created = clinic.request(
        "other_territory",
        "POST",
        "/fhir/Patient",
        json={
            "resourceType": "Patient",
            "generalPractitioner": [{"reference": "Practitioner/dr-a"}],
        },
        headers=FHIR_JSON,
    )
    assert created.status_code == 201
    new_id = created.headers["location"].split("/")[-3]
    assert clinic.get("other_territory", f"/fhir/Patient/{new_id}").status_code == 200
    assert clinic.get("physician", f"/fhir/Patient/{new_id}").status_code == 404


def test_territory_mismatch_is_a_specific_code_on_the_native_api(
    clinic: Clinic, ctx: AppContext
) -> None:
    answer = clinic.request(
        "other_territory",
        "POST",
        "/api/v1/access/break-glass",
        json={"patient_id": "p1", "reason": "unconscious in the emergency room"},
        headers={"Territory-Id": ctx.settings.default_tenant},
    )
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "TERRITORY_MISMATCH"


def test_break_glass_is_reasoned_time_boxed_audited_and_reviewed(
    clinic: Clinic, ctx: AppContext
) -> None:
    assert clinic.get("physician", "/fhir/Patient/p2").status_code == 404
    reason = "unconscious in the emergency room"
    refused = clinic.request(
        "front_desk",
        "POST",
        "/api/v1/access/break-glass",
        json={"patient_id": "p2", "reason": reason},
    )
    assert refused.status_code == 403
    too_short = clinic.request(
        "physician", "POST", "/api/v1/access/break-glass", json={"patient_id": "p2", "reason": "x"}
    )
    assert too_short.status_code == 400
    unknown = clinic.request(
        "physician",
        "POST",
        "/api/v1/access/break-glass",
        json={"patient_id": "p9", "reason": reason},
    )
    assert unknown.status_code == 404
    opened = clinic.request(
        "physician",
        "POST",
        "/api/v1/access/break-glass",
        json={"patient_id": "p2", "reason": reason},
    )
    assert opened.status_code == 201, opened.text
    grant = opened.json()
    expires = datetime.fromisoformat(grant["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert clinic.get("physician", "/fhir/Patient/p2").status_code == 200
    # Only that patient: the other physician's other patients stay hidden.
    assert clinic.get("physician", "/fhir/Observation/o2").status_code == 200
    reads = audit_rows(ctx, action="read", patient_id="p2", outcome="success")
    assert reads
    assert reads[-1]["purpose_of_use"] == "BTG"
    assert audit_rows(ctx, action="break-glass", patient_id="p2", outcome="success")
    assert audit_rows(ctx, action="break-glass", outcome="denied")
    # Review: auditors see the grant and its reason; nobody else may list them.
    review = clinic.get("auditor", "/api/v1/access/break-glass")
    assert review.status_code == 200
    assert [g["reason"] for g in review.json()] == [reason]
    assert clinic.get("physician", "/api/v1/access/break-glass").status_code == 403
    # Time-boxed: once expired, the patient is hidden again.
    with unit_of_work(ctx.engine, write=True) as conn:
        conn.execute(
            break_glass_grant.update()
            .where(break_glass_grant.c.id == grant["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert clinic.get("physician", "/fhir/Patient/p2").status_code == 404


def test_every_phi_access_leaves_its_audit_record(
    clinic: Clinic, client: TestClient, ctx: AppContext
) -> None:
    answer = clinic.get("physician", "/fhir/Patient/p1", headers={"X-Request-Id": "req-123"})
    assert answer.status_code == 200
    [read] = audit_rows(ctx, action="read", resource_id="p1", correlation_id="req-123")
    assert read["outcome"] == "success"
    assert read["patient_id"] == "p1"
    assert read["resource_type"] == "Patient"
    assert read["role"] == "physician"
    assert read["purpose_of_use"] == "TREAT"
    assert read["data_category"] == "demographics"
    assert read["user_id"]
    assert read["source_ip"]
    # A search: one record per patient in the result.
    client.get("/fhir/Observation", headers={"X-Request-Id": "req-456"})
    searched = audit_rows(ctx, action="search", correlation_id="req-456")
    assert {r["patient_id"] for r in searched} == {"p1", "p2"}
    # A refusal is on the record too.
    clinic.get("physician", "/fhir/Patient/p2", headers={"X-Request-Id": "req-789"})
    [denied] = audit_rows(ctx, correlation_id="req-789")
    assert (denied["outcome"], denied["patient_id"]) == ("denied", "p2")
    # Writes.
    create = {k: v for k, v in observation("n", "p1").items() if k != "id"}
    clinic.request(
        "physician",
        "POST",
        "/fhir/Observation",
        json=create,
        headers={**FHIR_JSON, "X-Request-Id": "req-w"},
    )
    [written] = audit_rows(ctx, correlation_id="req-w")
    assert (written["action"], written["resource_type"], written["patient_id"]) == (
        "create",
        "Observation",
        "p1",
    )
