"""The R4 RESTful interactions (http://hl7.org/fhir/R4/http.html), over HTTP, on both engines."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}


def patient(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
    }
    body.update(extra)
    return body


def create(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post(
        f"/fhir/{body['resourceType']}", content=json.dumps(body), headers={**FHIR, **headers}
    )


def outcome_text(response: Any) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(
        " ".join([issue.get("diagnostics", ""), *issue.get("expression", [])])
        for issue in body["issue"]
    )


# --- metadata -----------------------------------------------------------------------------


def test_metadata_is_public_and_lists_r4(client: TestClient) -> None:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in body["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Bundle"} <= types


def test_alias_base_serves_the_same_api(client: TestClient) -> None:
    created = client.post("/api/v1/fhir/Patient", content=json.dumps(patient()), headers=FHIR)
    assert created.status_code == 201
    assert "/api/v1/fhir/Patient/" in created.headers["location"]
    assert client.get(f"/fhir/Patient/{created.json()['id']}").status_code == 200


# --- create / read ------------------------------------------------------------------------


def test_create_assigns_id_version_and_last_updated(client: TestClient) -> None:
    response = create(
        client,
        patient(
            id="client-chosen", meta={"versionId": "99", "lastUpdated": "2000-01-01T00:00:00Z"}
        ),
    )
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].startswith(time.strftime("%Y-"))
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.headers["cache-control"] == "no-store"


def test_read_returns_exactly_what_was_stored(client: TestClient) -> None:
    raw = (
        '{"resourceType":"Observation","status":"final","code":{"text":"weight"},'
        '"valueQuantity":{"value":72.50,"unit":"kg"},'
        '"extension":[{"url":"http://example.org/x","valueDecimal":1.000}]}'
    )
    created = client.post("/fhir/Observation", content=raw, headers=FHIR)
    assert created.status_code == 201, created.text
    read = client.get(f"/fhir/Observation/{created.json()['id']}")
    assert read.status_code == 200
    assert '"value":72.50' in read.text
    assert '"valueDecimal":1.000' in read.text
    assert read.headers["etag"] == 'W/"1"'
    assert "last-modified" in read.headers


def test_read_of_unknown_id_is_404_with_outcome(client: TestClient) -> None:
    response = client.get("/fhir/Patient/does-not-exist")
    assert response.status_code == 404
    assert "not known" in outcome_text(response)


def test_unknown_resource_type_is_404(client: TestClient) -> None:
    assert client.get("/fhir/Patientx/1").status_code == 404
    response = client.post("/fhir/Unicorn", content='{"resourceType":"Unicorn"}', headers=FHIR)
    assert response.status_code == 404
    assert "Unicorn" in outcome_text(response)


# --- update -------------------------------------------------------------------------------


def test_update_creates_a_new_version_and_keeps_the_old(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    updated = client.put(
        f"/fhir/Patient/{pid}", content=json.dumps(patient(id=pid, gender="other")), headers=FHIR
    )
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{pid}/_history/2").json()["gender"] == "other"


def test_update_with_a_new_client_id_creates_the_resource(client: TestClient) -> None:
    response = client.put(
        "/fhir/Patient/my-id-1", content=json.dumps(patient(id="my-id-1")), headers=FHIR
    )
    assert response.status_code == 201
    assert response.json()["id"] == "my-id-1"


def test_stale_if_match_gets_412(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    ok = client.put(
        f"/fhir/Patient/{pid}",
        content=json.dumps(patient(id=pid)),
        headers={**FHIR, "If-Match": 'W/"1"'},
    )
    assert ok.status_code == 200
    stale = client.put(
        f"/fhir/Patient/{pid}",
        content=json.dumps(patient(id=pid)),
        headers={**FHIR, "If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    assert "stale" in outcome_text(stale)
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_update_id_mismatch_is_400_and_writes_nothing(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    response = client.put(
        f"/fhir/Patient/{pid}", content=json.dumps(patient(id="other")), headers=FHIR
    )
    assert response.status_code == 400
    assert "does not match" in outcome_text(response)
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_update_without_id_in_body_is_400(client: TestClient) -> None:
    response = client.put("/fhir/Patient/abc", content=json.dumps(patient()), headers=FHIR)
    assert response.status_code == 400


# --- patch --------------------------------------------------------------------------------


def test_json_patch_changes_one_element(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "female"}]
    response = client.patch(
        f"/fhir/Patient/{pid}",
        content=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["gender"] == "female"
    assert response.json()["meta"]["versionId"] == "2"


def test_patch_that_makes_the_resource_invalid_is_refused(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "robot"}]
    response = client.patch(
        f"/fhir/Patient/{pid}",
        content=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 400
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "male"


def test_patch_with_a_failing_test_op_is_422(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    ops = [{"op": "test", "path": "/gender", "value": "female"}]
    response = client.patch(
        f"/fhir/Patient/{pid}",
        content=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 422


def test_patch_needs_the_json_patch_media_type(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    response = client.patch(f"/fhir/Patient/{pid}", content="[]", headers=FHIR)
    assert response.status_code == 415


# --- delete -------------------------------------------------------------------------------


def test_delete_is_logical_and_keeps_history(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert history["total"] == 2
    assert history["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in history["entry"][0]
    # Deleting again changes nothing.
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}/_history").json()["total"] == 2


def test_a_deleted_resource_can_be_brought_back_by_update(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    client.delete(f"/fhir/Patient/{pid}")
    response = client.put(f"/fhir/Patient/{pid}", content=json.dumps(patient(id=pid)), headers=FHIR)
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "3"


def test_delete_of_unknown_resource_is_404(client: TestClient) -> None:
    assert client.delete("/fhir/Patient/never-was").status_code == 404


# --- history ------------------------------------------------------------------------------


def test_history_pages_newest_first_and_follows_next_links(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    for gender in ["female", "other", "unknown", "male"]:
        client.put(
            f"/fhir/Patient/{pid}", content=json.dumps(patient(id=pid, gender=gender)), headers=FHIR
        )
    seen: list[str] = []
    url: str | None = f"/fhir/Patient/{pid}/_history?_count=2"
    while url:
        page = client.get(url).json()
        assert page["type"] == "history"
        seen += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == ["5", "4", "3", "2", "1"]


def test_paging_is_stable_while_new_versions_are_written(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    for gender in ["female", "other"]:
        client.put(
            f"/fhir/Patient/{pid}", content=json.dumps(patient(id=pid, gender=gender)), headers=FHIR
        )
    first = client.get(f"/fhir/Patient/{pid}/_history?_count=2").json()
    client.put(f"/fhir/Patient/{pid}", content=json.dumps(patient(id=pid)), headers=FHIR)
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = client.get(next_url).json()
    assert [e["resource"]["meta"]["versionId"] for e in second["entry"]] == ["1"]


def test_type_and_system_history_with_since(client: TestClient) -> None:
    create(client, patient())
    marker = client.get("/fhir/Patient/_history").json()["entry"][0]["response"]["lastModified"]
    time.sleep(0.01)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    create(client, obs)
    types = [e["resource"]["resourceType"] for e in client.get("/fhir/_history").json()["entry"]]
    assert types == ["Observation", "Patient"]
    newer = client.get("/fhir/_history", params={"_since": marker}).json()["entry"]
    assert {e["resource"]["resourceType"] for e in newer} >= {"Observation"}
    assert [
        e["resource"]["resourceType"] for e in client.get("/fhir/Patient/_history").json()["entry"]
    ] == ["Patient"]


def test_history_with_a_bad_since_is_400(client: TestClient) -> None:
    response = client.get("/fhir/_history", params={"_since": "yesterday"})
    assert response.status_code == 400
    assert "_since" in outcome_text(response)


# --- Prefer, content negotiation ----------------------------------------------------------


def test_prefer_return_minimal_has_no_body(client: TestClient) -> None:
    response = create(client, patient(), Prefer="return=minimal")
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["location"]


def test_prefer_return_operation_outcome(client: TestClient) -> None:
    response = create(client, patient(), Prefer="return=OperationOutcome")
    assert response.json()["resourceType"] == "OperationOutcome"


def test_pretty_output_is_indented(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    assert "\n  " in client.get(f"/fhir/Patient/{pid}?_pretty=true").text


@pytest.mark.parametrize("fmt", ["json", "application/fhir+json", "application/json"])
def test_json_formats_are_served(client: TestClient, fmt: str) -> None:
    assert client.get("/fhir/metadata", params={"_format": fmt}).status_code == 200


@pytest.mark.parametrize("fmt", ["xml", "application/fhir+xml", "ttl"])
def test_unsupported_format_is_406(client: TestClient, fmt: str) -> None:
    assert client.get("/fhir/metadata", params={"_format": fmt}).status_code == 406


def test_accept_xml_only_is_406(client: TestClient) -> None:
    assert (
        client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}).status_code == 406
    )


@pytest.mark.parametrize(
    "content_type", ["application/xml", "text/plain", "application/x-www-form-urlencoded"]
)
def test_unsupported_content_type_is_415(client: TestClient, content_type: str) -> None:
    response = client.post(
        "/fhir/Patient", content=json.dumps(patient()), headers={"Content-Type": content_type}
    )
    assert response.status_code == 415


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{not json", "malformed JSON"),
        ("[]", "JSON object"),
        ('{"resourceType": "Observation"}', "does not match"),
        ('{"name": []}', "does not match"),
        ('{"resourceType":"Patient","a":1,"a":2}', "duplicate"),
        ('{"resourceType":"Patient","gender":"robot"}', "gender"),
        ('{"resourceType":"Patient","birthDate":"1974-02-30"}', "birthDate"),
        ('{"resourceType":"Patient","unknownElement":true}', "unknownElement"),
        ('{"resourceType":"Patient","active":"yes"}', "active"),
        ("[" * 100 + "]" * 100, "nesting"),
    ],
)
def test_bad_bodies_get_a_precise_400_and_write_nothing(
    client: TestClient, body: str, expected: str
) -> None:
    response = client.post("/fhir/Patient", content=body, headers=FHIR)
    assert response.status_code == 400, response.text
    assert expected in outcome_text(response)
    assert client.get("/fhir/Patient/_history").json()["entry"] == []


def test_oversized_body_is_413(client: TestClient) -> None:
    big = json.dumps(
        patient(text={"status": "generated", "div": "<div>" + "x" * 5_100_000 + "</div>"})
    )
    response = client.post("/fhir/Patient", content=big, headers=FHIR)
    assert response.status_code == 413
    assert client.get("/fhir/Patient/_history").json()["entry"] == []


def test_validation_errors_name_the_element_path(client: TestClient) -> None:
    response = create(client, patient(name=[{"given": ["A", 7]}]))
    assert response.status_code == 400
    expressions = [e for issue in response.json()["issue"] for e in issue.get("expression", [])]
    assert any("Patient.name[0].given[1]" in e for e in expressions), expressions


def test_unknown_route_is_404_outcome(client: TestClient) -> None:
    response = client.get("/fhir/Patient/1/_history/1/extra")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_bad_if_match_is_400(client: TestClient) -> None:
    pid = create(client, patient()).json()["id"]
    response = client.put(
        f"/fhir/Patient/{pid}",
        content=json.dumps(patient(id=pid)),
        headers={**FHIR, "If-Match": "banana"},
    )
    assert response.status_code == 400


# --- conditional interactions -------------------------------------------------------------

MRN = {"system": "http://hospital.example/mrn", "value": "MRN-7"}


def test_conditional_create_returns_the_existing_match(client: TestClient) -> None:
    first = create(
        client,
        patient(identifier=[MRN]),
        **{"If-None-Exist": "identifier=http://hospital.example/mrn|MRN-7"},
    )
    assert first.status_code == 201
    second = create(
        client,
        patient(identifier=[MRN]),
        **{"If-None-Exist": "identifier=http://hospital.example/mrn|MRN-7"},
    )
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


def test_conditional_create_with_several_matches_is_412(client: TestClient) -> None:
    create(client, patient(identifier=[MRN]))
    create(client, patient(identifier=[MRN]))
    response = create(
        client, patient(), **{"If-None-Exist": "identifier=http://hospital.example/mrn|MRN-7"}
    )
    assert response.status_code == 412


def test_conditional_update_updates_the_single_match_or_creates(client: TestClient) -> None:
    url = "/fhir/Patient?identifier=http://hospital.example/mrn|MRN-7"
    made = client.put(url, content=json.dumps(patient(identifier=[MRN])), headers=FHIR)
    assert made.status_code == 201
    again = client.put(
        url, content=json.dumps(patient(identifier=[MRN], gender="female")), headers=FHIR
    )
    assert again.status_code == 200
    assert again.json()["id"] == made.json()["id"]
    assert again.json()["meta"]["versionId"] == "2"


def test_conditional_delete_removes_the_match(client: TestClient) -> None:
    pid = create(client, patient(identifier=[MRN])).json()["id"]
    response = client.delete("/fhir/Patient?identifier=http://hospital.example/mrn|MRN-7")
    assert response.status_code == 200
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410


def test_conditional_delete_needs_criteria(client: TestClient) -> None:
    assert client.delete("/fhir/Patient").status_code == 400


def test_capability_statement_lists_the_interactions_that_work(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient_entry["interaction"]}
    assert codes == {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
    assert {i["code"] for i in statement["rest"][0]["interaction"]} == {
        "transaction",
        "batch",
        "history-system",
    }
    assert statement["patchFormat"] == ["application/json-patch+json"]
