"""_include / _revinclude (http://hl7.org/fhir/R4/search.html §3.1.1.6.4), on both engines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Connection

from carechart.crypto.keys import KeyRing
from carechart.errors import BadRequest
from carechart.fhir.search import IncludeSpec, includes, parse_include, parse_include_params

Put = Callable[..., str]


@pytest.fixture
def run(conn: Connection, keyring: KeyRing, tenant: str) -> Any:
    def _run(
        rtype: str, ids: list[str], params: list[tuple[str, str]], max_results: int = 100
    ) -> list[tuple[str, str]]:
        inc, rev = parse_include_params(params)
        return includes(conn, keyring, tenant, rtype, ids, inc, rev, max_results=max_results)

    return _run


@pytest.fixture
def chart(put: Put) -> dict[str, str]:
    put({"resourceType": "Organization", "id": "org", "name": "Acme"})
    put({"resourceType": "Practitioner", "id": "dr"})
    put(
        {
            "resourceType": "Patient",
            "id": "p1",
            "managingOrganization": {"reference": "Organization/org"},
        }
    )
    put({"resourceType": "Patient", "id": "gone"}, deleted=True)
    put({"resourceType": "Group", "id": "g1", "type": "person", "actual": True})
    o1 = put(
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/dr"}],
        }
    )
    o2 = put(
        {
            "resourceType": "Observation",
            "id": "o2",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Group/g1"},
        }
    )
    o3 = put(
        {
            "resourceType": "Observation",
            "id": "o3",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/gone"},
        }
    )
    put(
        {
            "resourceType": "Provenance",
            "id": "prov",
            "target": [{"reference": "Observation/o1"}],
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/dr"}}],
        }
    )
    return {"o1": o1, "o2": o2, "o3": o3}


def test_include_follows_the_reference_parameter(chart: dict[str, str], run: Any) -> None:
    got = run("Observation", ["o1", "o2"], [("_include", "Observation:subject")])
    assert set(got) == {("Patient", "p1"), ("Group", "g1")}


def test_include_with_target_type_restricts(chart: dict[str, str], run: Any) -> None:
    got = run("Observation", ["o1", "o2"], [("_include", "Observation:subject:Patient")])
    assert got == [("Patient", "p1")]


def test_include_never_returns_deleted_resources(chart: dict[str, str], run: Any) -> None:
    assert run("Observation", ["o3"], [("_include", "Observation:subject")]) == []


def test_include_wildcard_follows_every_reference(chart: dict[str, str], run: Any) -> None:
    got = run("Observation", ["o1"], [("_include", "*")])
    assert set(got) == {("Patient", "p1"), ("Practitioner", "dr")}


def test_revinclude_finds_referring_resources(chart: dict[str, str], run: Any) -> None:
    got = run("Observation", ["o1", "o2"], [("_revinclude", "Provenance:target")])
    assert got == [("Provenance", "prov")]


def test_iterate_follows_included_resources(chart: dict[str, str], run: Any) -> None:
    iterated = run(
        "Observation",
        ["o1"],
        [("_include", "Observation:subject"), ("_include:iterate", "Patient:organization")],
    )
    assert iterated == [("Patient", "p1"), ("Organization", "org")]
    rev_then_fwd = run(
        "Observation",
        ["o1"],
        [("_revinclude", "Provenance:target"), ("_include:iterate", "Provenance:agent")],
    )
    assert rev_then_fwd == [("Provenance", "prov"), ("Practitioner", "dr")]


def test_include_stops_at_max_results(chart: dict[str, str], run: Any) -> None:
    got = run("Observation", ["o1", "o2"], [("_include", "*")], max_results=1)
    assert len(got) == 1


def test_include_iterate_stops_after_bounded_rounds(put: Put, run: Any) -> None:
    # A chain of Patients linked by Patient.link.other: p0 -> p1 -> ... -> p6.
    for i in range(7):
        body: dict[str, Any] = {"resourceType": "Patient", "id": f"p{i}"}
        if i < 6:
            body["link"] = [{"other": {"reference": f"Patient/p{i + 1}"}, "type": "seealso"}]
        put(body)
    got = run("Patient", ["p0"], [("_include:iterate", "Patient:link")])
    assert got == [("Patient", "p1"), ("Patient", "p2"), ("Patient", "p3"), ("Patient", "p4")]


def test_parse_include_accepts_the_r4_forms() -> None:
    assert parse_include("_include", "Observation:subject:Patient") == IncludeSpec(
        "Observation", "subject", "Patient", iterate=False, reverse=False
    )
    assert parse_include("_include:recurse", "*").iterate
    assert parse_include("_revinclude:iterate", "Provenance:target").reverse


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("_include", "Observation", "SourceType:parameter"),
        ("_include", "Nope:subject", "not a resource type"),
        ("_include", "Observation:code", "not a reference parameter"),
        ("_include", "Observation:subject:Organization", "not a target type"),
        ("_include:deep", "Observation:subject", "iterate"),
        ("_revinclude", "*", "SourceType:parameter"),
        ("_revinclude", "Provenance:*", "needs a parameter"),
    ],
)
def test_malformed_include_is_a_precise_bad_request(name: str, value: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_include(name, value)


def test_plain_include_from_another_type_is_refused(chart: dict[str, str], run: Any) -> None:
    with pytest.raises(BadRequest, match="iterate"):
        run("Observation", ["o1"], [("_include", "Patient:organization")])
