"""Batch and transaction Bundles (http://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def post_bundle(client: TestClient, bundle: dict[str, Any]) -> Any:
    return client.post("/fhir", content=json.dumps(bundle), headers=FHIR)


def txn(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


PATIENT_ENTRY = {
    "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
    "resource": {"resourceType": "Patient", "name": [{"family": "Doe"}]},
    "request": {"method": "POST", "url": "Patient"},
}
OBS_ENTRY = {
    "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
    "resource": {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
        "valueQuantity": {"value": 72.0, "unit": "/min"},
    },
    "request": {"method": "POST", "url": "Observation"},
}


def test_transaction_rewrites_urn_uuid_references(client: TestClient) -> None:
    response = post_bundle(client, txn(OBS_ENTRY, PATIENT_ENTRY))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    obs_location, patient_location = (e["response"]["location"] for e in body["entry"])
    assert all(e["response"]["status"].startswith("201") for e in body["entry"])
    patient_id = patient_location.split("/fhir/")[1].split("/_history")[0]
    obs = client.get("/fhir/" + obs_location.split("/fhir/")[1].split("/_history")[0]).json()
    assert obs["subject"]["reference"] == patient_id
    assert obs["valueQuantity"]["value"] == 72.0
    assert (
        '"value":72.0'
        in client.get("/fhir/" + obs_location.split("/fhir/")[1].split("/_history")[0]).text
    )


def test_transaction_with_one_bad_entry_writes_nothing(client: TestClient) -> None:
    bad = {
        "resource": {"resourceType": "Patient", "gender": "robot"},
        "request": {"method": "POST", "url": "Patient"},
    }
    response = post_bundle(client, txn(PATIENT_ENTRY, bad))
    assert response.status_code == 400
    text = json.dumps(response.json())
    assert "Bundle.entry[1]" in text
    assert client.get("/fhir/_history").json()["entry"] == []


def test_transaction_processes_deletes_before_creates(client: TestClient) -> None:
    made = post_bundle(client, txn(PATIENT_ENTRY)).json()
    location = made["entry"][0]["response"]["location"].split("/fhir/")[1].split("/_history")[0]
    response = post_bundle(
        client,
        txn(
            {
                "resource": {"resourceType": "Patient", "id": location.split("/")[1]},
                "request": {"method": "PUT", "url": location},
            },
            {"request": {"method": "DELETE", "url": location}},
        ),
    )
    assert response.status_code == 200, response.text
    # DELETE ran first, then PUT brought it back as a new version.
    assert client.get(f"/fhir/{location}").json()["meta"]["versionId"] == "3"


def test_transaction_conditional_reference_resolves_by_search(client: TestClient) -> None:
    mrn = {"system": "http://hospital.example/mrn", "value": "C-1"}
    created = client.post(
        "/fhir/Patient",
        content=json.dumps({"resourceType": "Patient", "identifier": [mrn]}),
        headers=FHIR,
    ).json()
    obs = json.loads(json.dumps(OBS_ENTRY))
    obs["resource"]["subject"]["reference"] = "Patient?identifier=http://hospital.example/mrn|C-1"
    response = post_bundle(client, txn(obs))
    assert response.status_code == 200, response.text
    location = (
        response.json()["entry"][0]["response"]["location"].split("/fhir/")[1].split("/_history")[0]
    )
    assert (
        client.get(f"/fhir/{location}").json()["subject"]["reference"] == f"Patient/{created['id']}"
    )


def test_transaction_conditional_reference_without_match_fails_whole(client: TestClient) -> None:
    obs = json.loads(json.dumps(OBS_ENTRY))
    obs["resource"]["subject"]["reference"] = "Patient?identifier=http://hospital.example/mrn|none"
    response = post_bundle(client, txn(PATIENT_ENTRY, obs))
    assert response.status_code == 412
    assert client.get("/fhir/_history").json()["entry"] == []


def test_transaction_if_none_exist_reuses_the_match(client: TestClient) -> None:
    entry = json.loads(json.dumps(PATIENT_ENTRY))
    entry["resource"]["identifier"] = [{"system": "http://hospital.example/mrn", "value": "T-9"}]
    entry["request"]["ifNoneExist"] = "identifier=http://hospital.example/mrn|T-9"
    first = post_bundle(client, txn(entry, OBS_ENTRY)).json()
    second = post_bundle(client, txn(entry, OBS_ENTRY)).json()
    assert first["entry"][0]["response"]["status"].startswith("201")
    assert second["entry"][0]["response"]["status"].startswith("200")
    obs_location = (
        second["entry"][1]["response"]["location"].split("/fhir/")[1].split("/_history")[0]
    )
    patient_id = first["entry"][0]["response"]["location"].split("/fhir/")[1].split("/_history")[0]
    assert client.get(f"/fhir/{obs_location}").json()["subject"]["reference"] == patient_id


def test_batch_entries_succeed_or_fail_one_by_one(client: TestClient) -> None:
    bad = {
        "resource": {"resourceType": "Patient", "gender": "robot"},
        "request": {"method": "POST", "url": "Patient"},
    }
    missing = {"request": {"method": "GET", "url": "Patient/nope"}}
    response = post_bundle(client, txn(PATIENT_ENTRY, bad, missing, kind="batch"))
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses[0].startswith("201")
    assert statuses[1].startswith("400")
    assert statuses[2].startswith("404")
    assert response.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert len(client.get("/fhir/Patient/_history").json()["entry"]) == 1


def test_batch_get_entry_returns_the_resource(client: TestClient) -> None:
    pid = client.post(
        "/fhir/Patient", content=json.dumps({"resourceType": "Patient"}), headers=FHIR
    ).json()["id"]
    response = post_bundle(
        client, txn({"request": {"method": "GET", "url": f"Patient/{pid}"}}, kind="batch")
    )
    assert response.json()["entry"][0]["resource"]["id"] == pid


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        ({"resourceType": "Patient"}, "Bundle"),
        ({"resourceType": "Bundle", "type": "collection"}, "collection"),
        ({"resourceType": "Bundle", "type": "transaction", "entry": {}}, "array"),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": {"resourceType": "Patient"}}],
            },
            "request",
        ),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "FETCH", "url": "Patient"}}],
            },
            "method",
        ),
        (
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "POST", "url": "Patient"}}],
            },
            "needs a resource",
        ),
    ],
)
def test_malformed_bundles_are_400(
    client: TestClient, bundle: dict[str, Any], expected: str
) -> None:
    response = post_bundle(client, bundle)
    assert response.status_code == 400
    assert expected in json.dumps(response.json())


def test_duplicate_full_urls_are_refused(client: TestClient) -> None:
    response = post_bundle(client, txn(PATIENT_ENTRY, PATIENT_ENTRY))
    assert response.status_code == 400
    assert "appears twice" in json.dumps(response.json())


def synthea_bundles() -> list[Path]:
    return sorted((SHARED_DATA / "synthea").glob("*.json"))[:2]


@pytest.mark.parametrize("path", synthea_bundles(), ids=lambda p: p.name[:20])
def test_synthea_bundle_ingests_with_every_reference_resolved(
    client: TestClient, path: Path
) -> None:
    bundle = json.loads(path.read_text())
    response = client.post("/fhir", content=path.read_bytes(), headers=FHIR)
    assert response.status_code == 200, response.text[:2000]
    entries = response.json()["entry"]
    assert len(entries) == len(bundle["entry"])
    assert all(e["response"]["status"].startswith("201") for e in entries)
    some_obs = next(e for e in entries if "/Observation/" in e["response"]["location"])
    location = some_obs["response"]["location"].split("/fhir/")[1].split("/_history")[0]
    obs = client.get(f"/fhir/{location}").json()
    assert obs["subject"]["reference"].startswith("Patient/")
    assert client.get(f"/fhir/{obs['subject']['reference']}").status_code == 200
