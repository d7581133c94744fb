"""Search over HTTP: searchset Bundles, paging, _summary, _elements, _total, $everything."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}


def post(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{body['resourceType']}", content=json.dumps(body), headers=FHIR)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def make_patient(client: TestClient, family: str, gender: str = "female") -> str:
    return post(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": family, "given": ["Ann"]}],
            "gender": gender,
            "birthDate": "1980-05-01",
            "text": {
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
            },
            "contact": [{"name": {"family": "Kin"}}],
        },
    )


def observation(patient_id: str, code: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {
            "value": value,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }


def test_search_by_token_returns_a_searchset(client: TestClient) -> None:
    pid = make_patient(client, "Searchable")
    post(client, observation(pid, "2823-3", 4.1))
    post(client, observation(pid, "2345-7", 5.5))
    bundle = client.get("/fhir/Observation", params={"code": "http://loinc.org|2823-3"}).json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    assert bundle["entry"][0]["search"]["mode"] == "match"
    assert bundle["entry"][0]["resource"]["code"]["coding"][0]["code"] == "2823-3"


def test_search_by_blind_indexed_name_finds_the_patient(client: TestClient) -> None:
    pid = make_patient(client, "Oyelaran")
    make_patient(client, "Other")
    bundle = client.get("/fhir/Patient", params={"family": "oyel"}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [pid]


def test_paging_links_walk_every_result_once(client: TestClient) -> None:
    pid = make_patient(client, "Pager")
    for i in range(5):
        post(client, observation(pid, "2823-3", 4.0 + i))
    seen: list[str] = []
    url: str | None = "/fhir/Observation?subject=Patient/" + pid + "&_count=2"
    while url:
        page = client.get(url).json()
        assert page["total"] == 5
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == 5 == len(set(seen))


def test_unknown_parameters_are_reported_and_strict_handling_refuses(client: TestClient) -> None:
    bundle = client.get("/fhir/Patient", params={"shoe-size": "12"}).json()
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "shoe-size" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.get(
        "/fhir/Patient", params={"shoe-size": "12"}, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400


def test_invalid_search_values_are_400(client: TestClient) -> None:
    response = client.get("/fhir/Observation", params={"date": "not-a-date"})
    assert response.status_code == 400
    assert "date" in response.json()["issue"][0]["diagnostics"]


def test_summary_count_returns_only_the_total(client: TestClient) -> None:
    make_patient(client, "Counted")
    make_patient(client, "Counted")
    bundle = client.get("/fhir/Patient", params={"_summary": "count"}).json()
    assert bundle["total"] == 2
    assert bundle["entry"] == []


def test_summary_true_keeps_summary_elements_and_marks_subsetted(client: TestClient) -> None:
    pid = make_patient(client, "Summarised")
    resource = client.get(f"/fhir/Patient/{pid}", params={"_summary": "true"}).json()
    assert "name" in resource
    assert "gender" in resource
    assert "contact" not in resource  # Patient.contact is not a summary element
    assert "text" not in resource
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
    } in resource["meta"]["tag"]


def test_summary_data_drops_the_narrative(client: TestClient) -> None:
    pid = make_patient(client, "Data")
    bundle = client.get("/fhir/Patient", params={"_id": pid, "_summary": "data"}).json()
    assert "text" not in bundle["entry"][0]["resource"]
    assert "contact" in bundle["entry"][0]["resource"]


def test_elements_keeps_only_the_named_elements(client: TestClient) -> None:
    pid = make_patient(client, "Elements")
    resource = client.get(f"/fhir/Patient/{pid}", params={"_elements": "gender"}).json()
    assert set(resource) == {"resourceType", "id", "meta", "gender"}


@pytest.mark.parametrize(
    "params",
    [
        {"_summary": "maybe"},
        {"_elements": "shoeSize"},
        {"_total": "lots"},
        {"_summary": "true", "_elements": "gender"},
    ],
)
def test_bad_result_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    assert client.get("/fhir/Patient", params=params).status_code == 400


def test_total_none_omits_the_total(client: TestClient) -> None:
    make_patient(client, "Totalless")
    assert "total" not in client.get("/fhir/Patient", params={"_total": "none"}).json()


def test_post_search_with_a_form_body(client: TestClient) -> None:
    pid = make_patient(client, "Formed", gender="male")
    response = client.post(
        "/fhir/Patient/_search",
        content="gender=male",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [pid]


def test_everything_returns_the_patients_compartment_only(client: TestClient) -> None:
    pid = make_patient(client, "Everything")
    other = make_patient(client, "Elsewhere")
    mine = {post(client, observation(pid, "2823-3", 4.0 + i)) for i in range(3)}
    post(client, observation(other, "2823-3", 9.9))
    bundle = client.get(f"/fhir/Patient/{pid}/$everything").json()
    ids = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]}
    assert ids == {("Patient", pid)} | {("Observation", i) for i in mine}


def test_everything_pages_with_stable_cursors_and_filters_by_type(client: TestClient) -> None:
    pid = make_patient(client, "Paged")
    for i in range(5):
        post(client, observation(pid, "2823-3", 1.0 + i))
    seen: list[str] = []
    url: str | None = f"/fhir/Patient/{pid}/$everything?_count=2&_type=Observation"
    while url:
        page = client.get(url).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        assert all(e["resource"]["resourceType"] == "Observation" for e in page["entry"])
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == 5 == len(set(seen))


def test_everything_for_an_unknown_patient_is_404(client: TestClient) -> None:
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404


@pytest.mark.parametrize(
    "params", [{"_type": "Unicorn"}, {"_count": "0"}, {"_cursor": "garbage"}, {"_since": "soon"}]
)
def test_everything_bad_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    pid = make_patient(client, "Bad")
    assert client.get(f"/fhir/Patient/{pid}/$everything", params=params).status_code == 400


def test_compartment_search_returns_only_that_patients_resources(client: TestClient) -> None:
    pid = make_patient(client, "Compartment")
    other = make_patient(client, "Outside")
    mine = post(client, observation(pid, "2823-3", 4.2))
    post(client, observation(other, "2823-3", 4.2))
    bundle = client.get(f"/fhir/Patient/{pid}/Observation", params={"code": "2823-3"}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [mine]
    assert bundle["total"] == 1


def test_compartment_search_of_unknown_patient_is_404_and_bad_type_400(client: TestClient) -> None:
    assert client.get("/fhir/Patient/ghost/Observation").status_code == 404
    pid = make_patient(client, "Typed")
    assert client.get(f"/fhir/Patient/{pid}/Organization").status_code == 400


def test_patient_instance_history_is_not_taken_for_a_compartment(client: TestClient) -> None:
    pid = make_patient(client, "Historic")
    assert client.get(f"/fhir/Patient/{pid}/_history").json()["type"] == "history"


def test_include_adds_the_referenced_patient_once(client: TestClient) -> None:
    pid = make_patient(client, "Included")
    for value in (4.0, 4.5):
        post(client, observation(pid, "2823-3", value))
    bundle = client.get(
        "/fhir/Observation", params={"subject": f"Patient/{pid}", "_include": "Observation:subject"}
    ).json()
    modes = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"]]
    assert modes.count(("match", "Observation")) == 2
    assert modes.count(("include", "Patient")) == 1
    assert bundle["total"] == 2


def test_revinclude_adds_the_observations_of_the_patient(client: TestClient) -> None:
    pid = make_patient(client, "Revincluded")
    obs = post(client, observation(pid, "2823-3", 4.0))
    bundle = client.get(
        "/fhir/Patient", params={"_id": pid, "_revinclude": "Observation:subject"}
    ).json()
    included = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert included == [obs]


def test_malformed_include_is_400(client: TestClient) -> None:
    assert client.get("/fhir/Observation", params={"_include": "nonsense"}).status_code == 400


def test_blind_name_search_pages_and_totals_count_true_matches(client: TestClient) -> None:
    wanted = {make_patient(client, "Abernathy") for _ in range(3)}
    make_patient(client, "Zimmerman")
    first = client.get("/fhir/Patient", params={"family": "aber", "_count": "2"}).json()
    assert first["total"] == 3
    second_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = client.get(second_url).json()
    found = [e["resource"]["id"] for e in first["entry"] + second["entry"]]
    assert set(found) == wanted
    assert len(found) == 3


def test_capability_statement_lists_only_supported_search_parameters(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    observation_entry = next(
        r for r in statement["rest"][0]["resource"] if r["type"] == "Observation"
    )
    names = {p["name"] for p in observation_entry["searchParam"]}
    assert {"code", "subject", "date", "code-value-quantity", "_lastUpdated"} <= names
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "near" not in {
        p["name"]
        for p in next(r for r in statement["rest"][0]["resource"] if r["type"] == "Location")[
            "searchParam"
        ]
    }
    assert {"family", "identifier", "birthdate"} <= {
        p["name"] for p in patient_entry["searchParam"]
    }


def test_paging_links_survive_concurrent_writes(client: TestClient) -> None:
    pid = make_patient(client, "Frozen")
    created = [post(client, observation(pid, "2823-3", 4.0 + i)) for i in range(5)]
    first = client.get(
        "/fhir/Observation", params={"subject": f"Patient/{pid}", "_count": "2"}
    ).json()
    seen = [e["resource"]["id"] for e in first["entry"]]
    # Meanwhile: a new match appears and a match on a later page is updated (which moves it
    # to the end of the default last-updated order of a live query).
    post(client, observation(pid, "2823-3", 9.9))
    later = next(i for i in created if i not in seen)
    changed = observation(pid, "2823-3", 7.7)
    changed["id"] = later
    assert (
        client.put(
            f"/fhir/Observation/{later}", content=json.dumps(changed), headers=FHIR
        ).status_code
        == 200
    )
    url: str | None = next(link["url"] for link in first["link"] if link["relation"] == "next")
    while url:
        page = client.get(url).json()
        assert page["total"] == 5
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == sorted(created)


def test_unknown_paging_snapshot_is_410(client: TestClient) -> None:
    response = client.get("/fhir/Observation", params={"_snapshot": "0" * 36, "_offset": "2"})
    assert response.status_code == 410


@pytest.mark.parametrize("params", [{"_tag": ","}, {"code": ","}, {"gender": ",,"}])
def test_a_parameter_with_only_empty_values_is_400(
    client: TestClient, params: dict[str, str]
) -> None:
    response = client.get(
        "/fhir/Observation" if "code" in params else "/fhir/Patient", params=params
    )
    assert response.status_code == 400
    assert "has no value" in response.json()["issue"][0]["diagnostics"]
