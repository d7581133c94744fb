"""The demo clinic: deterministic per seed, valid FHIR, care relationships that work, staff
accounts with one-time passwords, and a first run that happens once."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.auth.identity import bearer, create_user, login, strong_password

from carechart import jsonio
from carechart.auth.config import AuthComponents
from carechart.auth.principal import Role
from carechart.context import AppContext
from carechart.db.auth_schema import audit_event
from carechart.db.engine import unit_of_work
from carechart.demo import DemoAccount, ensure_demo_clinic, load_demo, workers
from carechart.demo.clinic import (
    MRN_SYSTEM,
    DemoResource,
    patient_chart,
    physician_count,
    plan_clinic,
)
from carechart.errors import Conflict
from carechart.fhir.validation import validate_resource
from carechart.transfer import export_tenant

VITAL_SIGNS = {"85354-9", "8867-4", "9279-1", "8310-5", "59408-5", "29463-7", "8302-2", "39156-5"}


def charts(seed: int, patients: int) -> list[DemoResource]:
    clinic = plan_clinic(seed, patients)
    resources = list(clinic.resources)
    for index in range(patients):
        resources += patient_chart(clinic, index)
    return resources


def codes(resources: list[DemoResource], resource_type: str, element: str) -> set[str]:
    return {
        coding["code"]
        for kind, _, body in resources
        if kind == resource_type
        for coding in body[element]["coding"]
    }


def test_the_same_seed_builds_the_same_clinic_and_another_seed_another() -> None:
    first = jsonio.dumps(charts(11, 40))
    assert jsonio.dumps(charts(11, 40)) == first
    assert jsonio.dumps(charts(12, 40)) != first


def test_a_patients_chart_does_not_depend_on_the_charts_built_before_it() -> None:
    """Patient i is built from its own generator: batches can be cut anywhere."""
    clinic = plan_clinic(5, 10)
    alone = patient_chart(clinic, 7)
    for index in range(7):
        patient_chart(clinic, index)
    assert patient_chart(clinic, 7) == alone


def test_every_demo_resource_passes_validation() -> None:
    resources = charts(3, 300)
    problems = [
        (kind, issue.message, issue.expression)
        for kind, _, body in resources
        for issue in validate_resource(body)
        if issue.severity in ("error", "fatal")
    ]
    assert problems == []
    kinds = Counter(kind for kind, _, _ in resources)
    for expected in (
        "Organization",
        "Location",
        "Practitioner",
        "PractitionerRole",
        "Patient",
        "CareTeam",
        "Encounter",
        "Condition",
        "AllergyIntolerance",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Immunization",
    ):
        assert kinds[expected] > 0, expected
    assert kinds["Patient"] == kinds["CareTeam"] == 300


def test_demo_charts_use_the_standard_code_systems() -> None:
    resources = charts(4, 200)
    observed = codes(resources, "Observation", "code")
    assert observed >= VITAL_SIGNS
    systems = {
        coding["system"]
        for kind, _, body in resources
        if kind == "Condition"
        for coding in body["code"]["coding"]
    }
    assert systems == {"http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"}
    vaccines = {
        body["vaccineCode"]["coding"][0]["system"]
        for kind, _, body in resources
        if kind == "Immunization"
    }
    assert vaccines == {"http://hl7.org/fhir/sid/cvx"}
    medicines = {
        body["medicationCodeableConcept"]["coding"][0]["system"]
        for kind, _, body in resources
        if kind in ("MedicationRequest", "MedicationStatement")
    }
    assert medicines == {"http://www.nlm.nih.gov/research/umls/rxnorm"}
    for kind, _, body in resources:
        if kind != "Observation":
            continue
        category = body["category"][0]["coding"][0]["code"]
        if category == "laboratory":
            assert body["referenceRange"], "lab results carry their reference range"
            assert body["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        if body["code"]["coding"][0]["code"] == "85354-9":
            parts = {c["code"]["coding"][0]["code"] for c in body["component"]}
            assert parts == {"8480-6", "8462-4"}
    patient = next(body for kind, _, body in resources if kind == "Patient")
    assert patient["identifier"][0]["system"] == MRN_SYSTEM
    assert patient["generalPractitioner"][0]["reference"].startswith("Practitioner/")


def audit_records(ctx: AppContext, tenant: str) -> list[Any]:
    t = audit_event
    with unit_of_work(ctx.engine, write=False) as conn:
        return list(
            conn.execute(
                sa.select(t.c.action, t.c.outcome, t.c.client_id, t.c.resource_type)
                .where(t.c.tenant_id == tenant)
                .order_by(t.c.chain_index)
            ).all()
        )


def test_load_stores_the_clinic_with_accounts_and_one_audit_record(
    ctx: AppContext, auth_parts: AuthComponents
) -> None:
    load = load_demo(ctx, auth_parts, patients=12, seed=21, batch_size=5)
    expected = Counter(kind for kind, _, _ in charts(21, 12))
    assert load.created == dict(expected)
    with ctx.store(write=False) as store:
        assert store.search("Patient", [("_summary", "count")]).total == 12
    roles = Counter(account.role for account in load.credentials.accounts)
    assert roles == {
        Role.physician: physician_count(12),
        Role.nurse: 1,
        Role.front_desk: 1,
        Role.billing: 1,
        Role.lab_technician: 1,
        Role.auditor: 1,
    }
    clinicians = [a for a in load.credentials.accounts if a.role in (Role.physician, Role.nurse)]
    assert all(a.practitioner_id for a in clinicians)
    passwords = [a.one_time_password for a in load.credentials.accounts]
    assert len(set(passwords)) == len(passwords)
    assert all(p not in repr(load) for p in passwords), "passwords stay out of repr"
    imports = [r for r in audit_records(ctx, ctx.settings.default_tenant) if r.action == "import"]
    assert [(r.outcome, r.client_id) for r in imports] == [("success", "carechart-cli")]


def test_the_same_seed_cannot_be_loaded_twice_into_one_tenant(
    ctx: AppContext, auth_parts: AuthComponents
) -> None:
    load_demo(ctx, auth_parts, patients=2, seed=8)
    with pytest.raises(Conflict, match="already loaded"):
        load_demo(ctx, auth_parts, patients=2, seed=8)
    other = load_demo(ctx, auth_parts, patients=2, seed=9)
    assert other.created["Patient"] == 2


def test_a_demo_in_another_territory_gives_its_staff_that_territory(
    ctx: AppContext, auth_parts: AuthComponents, anonymous: TestClient
) -> None:
    territory = f"t-{secrets.token_hex(5)}"
    load = load_demo(ctx, auth_parts, patients=3, seed=2, tenant=territory)
    with ctx.store(write=False, tenant=territory) as store:
        assert store.search("Patient", [("_summary", "count")]).total == 3
    with ctx.store(write=False) as store:
        assert store.search("Patient", [("_summary", "count")]).total == 0
    front_desk = next(a for a in load.credentials.accounts if a.role is Role.front_desk)
    token = signed_in(anonymous, front_desk)
    me = anonymous.get("/api/v1/auth/me", headers=bearer(token)).json()
    assert me["territories"] == [territory]


def signed_in(client: TestClient, account: DemoAccount) -> str:
    """The account's first sign-in: change the one-time password, then sign in again."""
    first = login(client, account.email, account.one_time_password)
    assert first.status_code == 200, first.text
    assert first.json()["must_change_password"] is True
    new_password = strong_password()
    changed = client.post(
        "/api/v1/auth/change-password",
        json={"current_password": account.one_time_password, "new_password": new_password},
        headers=bearer(first.json()["access_token"]),
    )
    assert changed.status_code == 200, changed.text
    second = login(client, account.email, new_password)
    assert second.status_code == 200, second.text
    token: str = second.json()["access_token"]
    return token


def test_a_demo_physician_sees_their_panel_and_not_the_others(
    ctx: AppContext, auth_parts: AuthComponents, anonymous: TestClient
) -> None:
    load = load_demo(ctx, auth_parts, patients=16, seed=31)
    built = charts(31, 16)
    panels: dict[str, set[str]] = {}
    observations: dict[str, str] = {}
    for kind, resource_id, body in built:
        if kind == "Patient":
            doctor = body["generalPractitioner"][0]["reference"].removeprefix("Practitioner/")
            panels.setdefault(doctor, set()).add(resource_id)
        if kind == "Observation":
            observations.setdefault(body["subject"]["reference"].split("/")[1], resource_id)
    physicians = [a for a in load.credentials.accounts if a.role is Role.physician]
    mine = next(a for a in physicians if panels.get(a.practitioner_id or ""))
    assert mine.practitioner_id is not None
    my_panel = panels[mine.practitioner_id]
    others = {p for doctor, ids in panels.items() if doctor != mine.practitioner_id for p in ids}
    assert others, "the seed gives patients to more than one physician"
    token = signed_in(anonymous, mine)
    found = anonymous.get("/fhir/Patient?_count=100", headers=bearer(token))
    assert found.status_code == 200, found.text
    seen = {entry["resource"]["id"] for entry in found.json().get("entry", [])}
    assert seen == my_panel
    mine_patient, other_patient = next(iter(my_panel)), next(iter(others))
    assert anonymous.get(f"/fhir/Patient/{mine_patient}", headers=bearer(token)).status_code == 200
    assert anonymous.get(f"/fhir/Patient/{other_patient}", headers=bearer(token)).status_code == 404
    other_result = observations[other_patient]
    answer = anonymous.get(f"/fhir/Observation/{other_result}", headers=bearer(token))
    assert answer.status_code == 404
    everything = anonymous.get(f"/fhir/Patient/{mine_patient}/$everything", headers=bearer(token))
    assert everything.status_code == 200
    assert len(everything.json()["entry"]) > 5
    # The clinic's nurse is on every care team.
    nurse = next(a for a in load.credentials.accounts if a.role is Role.nurse)
    nurse_token = signed_in(anonymous, nurse)
    all_patients = anonymous.get("/fhir/Patient?_count=100", headers=bearer(nurse_token)).json()
    assert {e["resource"]["id"] for e in all_patients["entry"]} == my_panel | others


def test_the_first_run_demo_is_loaded_once(ctx: AppContext, auth_parts: AuthComponents) -> None:
    credentials = ensure_demo_clinic(ctx, auth_parts, patients=4)
    assert credentials is not None
    assert credentials.tenant == ctx.settings.default_tenant
    assert ensure_demo_clinic(ctx, auth_parts, patients=4) is None
    with ctx.store(write=False) as store:
        assert store.search("Patient", [("_summary", "count")]).total == 4


def test_no_first_run_demo_once_an_account_exists(
    ctx: AppContext, auth_parts: AuthComponents
) -> None:
    create_user(ctx, auth_parts, role=Role.front_desk)
    assert ensure_demo_clinic(ctx, auth_parts, patients=4) is None
    with ctx.store(write=False) as store:
        assert store.search("Patient", [("_summary", "count")]).total == 0


def test_no_first_run_demo_once_a_patient_exists(
    ctx: AppContext, auth_parts: AuthComponents
) -> None:
    with ctx.store(write=True) as store:
        store.create("Patient", {"resourceType": "Patient", "gender": "unknown"})
    assert ensure_demo_clinic(ctx, auth_parts, patients=4) is None
    with ctx.store(write=False) as store:
        assert store.search("Patient", [("_summary", "count")]).total == 1


def test_the_same_seed_stores_the_same_clinic_in_two_territories(
    ctx: AppContext, auth_parts: AuthComponents, tmp_path: Path
) -> None:
    first, second = (f"t-{secrets.token_hex(5)}" for _ in range(2))
    for territory in (first, second):
        load_demo(ctx, auth_parts, patients=5, seed=17, tenant=territory)
    exports = [
        export_tenant(ctx, tmp_path / territory, tenant=territory) for territory in (first, second)
    ]
    assert [f.count for f in exports[0].files] == [f.count for f in exports[1].files]

    def content(territory: str, name: str) -> list[Any]:
        lines = (tmp_path / territory / name).read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "meta"} for line in lines]

    for exported in exports[0].files:
        assert content(first, exported.name) == content(second, exported.name), exported.name


def test_a_load_in_several_processes_stores_what_one_process_does(
    ctx: AppContext, auth_parts: AuthComponents, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL batches go to worker processes; on SQLite (one writer) the same call
    loads in this process. Either way the result is the sequential one."""
    from carechart.demo import service

    calls: list[int] = []

    def spy(*args: Any) -> Any:
        calls.append(args[2])
        return workers.load_in_processes(*args)

    monkeypatch.setattr(service, "load_in_processes", spy)
    parallel, sequential = (f"t-{secrets.token_hex(5)}" for _ in range(2))
    loads = [
        load_demo(ctx, auth_parts, patients=6, seed=23, tenant=territory, batch_size=2, workers=n)
        for territory, n in ((parallel, 2), (sequential, 1))
    ]
    assert calls == ([2] if ctx.engine.dialect.name == "postgresql" else [])
    assert loads[0].created == loads[1].created
    for territory in (parallel, sequential):
        export_tenant(ctx, tmp_path / territory, tenant=territory)
    for name in sorted(p.name for p in (tmp_path / sequential).glob("*.ndjson")):
        mine, theirs = (
            [
                {k: v for k, v in json.loads(line).items() if k != "meta"}
                for line in (tmp_path / territory / name).read_text().splitlines()
            ]
            for territory in (parallel, sequential)
        )
        assert mine == theirs, name
    imports = [r for r in audit_records(ctx, parallel) if r.action == "import"]
    assert [r.outcome for r in imports] == ["success"]
