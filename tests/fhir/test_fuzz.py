"""Whatever arrives, the FHIR API answers with a 4xx or a success, never a 5xx (SECURITY E1)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT_KEYS = [
    "resourceType",
    "id",
    "meta",
    "name",
    "given",
    "family",
    "gender",
    "birthDate",
    "telecom",
    "identifier",
    "system",
    "value",
    "use",
    "active",
    "deceasedBoolean",
    "deceasedDateTime",
    "extension",
    "url",
    "valueString",
    "contained",
    "reference",
    "managingOrganization",
    "text",
    "div",
    "status",
    "address",
    "line",
    "_birthDate",
    "multipleBirthInteger",
    "photo",
    "data",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["Patient", "male", "2020-02-30", "Patient/1", "#x", "http://a", "", " x "]),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(PATIENT_KEYS), children, max_size=5)
    ),
    max_leaves=20,
)
QUIET = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@QUIET
@given(body=st.dictionaries(st.sampled_from(PATIENT_KEYS), json_values, max_size=6))
def test_random_patient_shaped_bodies_never_cause_a_5xx(
    client: TestClient, body: dict[str, Any]
) -> None:
    body.setdefault("resourceType", "Patient")
    response = client.post("/fhir/Patient", content=json.dumps(body), headers=FHIR)
    assert response.status_code in (201, 400, 404, 422), response.text
    assert response.json()["resourceType"] in ("Patient", "OperationOutcome")


@QUIET
@given(raw=st.binary(max_size=200))
def test_random_bytes_never_cause_a_5xx(client: TestClient, raw: bytes) -> None:
    response = client.post("/fhir/Patient", content=raw, headers=FHIR)
    assert 400 <= response.status_code < 500


@QUIET
@given(
    bundle=st.dictionaries(
        st.sampled_from(
            ["resourceType", "type", "entry", "request", "method", "url", "resource", "fullUrl"]
        ),
        json_values,
        max_size=5,
    )
)
def test_random_bundles_never_cause_a_5xx(client: TestClient, bundle: dict[str, Any]) -> None:
    bundle.setdefault("resourceType", "Bundle")
    response = client.post("/fhir", content=json.dumps(bundle), headers=FHIR)
    assert response.status_code < 500, response.text


def test_an_integer_past_pythons_digit_limit_is_a_400(client: TestClient) -> None:
    body = '{"resourceType":"Patient","multipleBirthInteger":' + "9" * 5000 + "}"
    assert client.post("/fhir/Patient", content=body, headers=FHIR).status_code == 400


@QUIET
@given(path=st.text(alphabet=st.sampled_from("abcXYZ019-._/$%?&=:"), max_size=40))
def test_random_paths_never_cause_a_5xx(client: TestClient, path: str) -> None:
    for method in ("GET", "DELETE"):
        response = client.request(method, "/fhir/" + path)
        assert response.status_code < 500, (method, path, response.text)


PARAM_NAMES = [
    "name", "family", "birthdate", "identifier", "gender", "_id", "_lastUpdated", "_sort",
    "_count", "_offset", "_include", "_revinclude", "_has:Observation:subject:code",
    "general-practitioner:Practitioner.name", "subject:Patient.name", "code", "date",
    "value-quantity", "code-value-quantity", "subject", "subject:identifier", "_summary",
    "_elements", "_total", "_snapshot", "family:exact", "name:contains", "code:text",
    "code:not", "date:missing", "_tag", "_profile", "identifier:of-type",
]  # fmt: skip
VALUE_ALPHABET = st.sampled_from("abcXYZ0129-_.:|$,\\/*?=&%+ eqgtlesaebap'\"<>")


@QUIET
@given(
    resource_type=st.sampled_from(["Patient", "Observation"]),
    params=st.lists(
        st.tuples(st.sampled_from(PARAM_NAMES), st.text(VALUE_ALPHABET, max_size=30)), max_size=4
    ),
)
def test_random_search_parameters_never_cause_a_5xx(
    client: TestClient, resource_type: str, params: list[tuple[str, str]]
) -> None:
    response = client.get(f"/fhir/{resource_type}", params=params)
    assert response.status_code in (200, 400, 404, 410), (params, response.text)
    strict = client.get(
        f"/fhir/{resource_type}", params=params, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code < 500, (params, strict.text)
