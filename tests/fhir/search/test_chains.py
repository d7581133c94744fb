"""Chained parameters, _has, composites and reference modifiers
(http://hl7.org/fhir/R4/search.html §3.1.1.6, §3.1.1.6.1, §3.1.1.5.8, §3.1.1.5.6),
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Connection

from carechart.crypto.keys import KeyRing
from carechart.errors import BadRequest
from carechart.fhir.search import (
    blind_params,
    chain_blind_params,
    confirm_blind_match,
    confirm_candidate,
    search,
)

Put = Callable[..., str]
LOINC = "http://loinc.org"


@pytest.fixture
def find(conn: Connection, keyring: KeyRing, tenant: str) -> Any:
    def _find(rtype: str, query: str, **kwargs: Any) -> set[str]:
        params = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
        return set(search(conn, keyring, tenant, rtype, params, **kwargs).ids)  # type: ignore[arg-type]

    return _find


def obs(code: str = "718-7", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        **extra,
    }


def ref(target: str) -> dict[str, str]:
    return {"reference": target}


@pytest.fixture
def world(put: Put) -> dict[str, str]:
    """Two patients in two organizations, observations about each, a deleted patient."""
    acme = put({"resourceType": "Organization", "id": "acme", "name": "Acme Clinic"})
    zeta = put({"resourceType": "Organization", "id": "zeta", "name": "Zeta Hospital"})
    peter = put(
        {
            "resourceType": "Patient",
            "id": "peter",
            "name": [{"family": "Peterson", "given": ["Peter"]}],
            "gender": "male",
            "managingOrganization": ref(f"Organization/{acme}"),
        }
    )
    anna = put(
        {
            "resourceType": "Patient",
            "id": "anna",
            "name": [{"family": "Andersen", "given": ["Anna"]}],
            "gender": "female",
            "managingOrganization": ref(f"Organization/{zeta}"),
        }
    )
    put({"resourceType": "Patient", "id": "gone", "gender": "male"}, deleted=True)
    grp = put({"resourceType": "Group", "id": "grp", "type": "person", "actual": True})
    return {
        "acme": acme,
        "zeta": zeta,
        "peter": peter,
        "anna": anna,
        "grp": grp,
        "o_peter": put(obs("1234-5", subject=ref("Patient/peter"))),
        "o_anna": put(obs("718-7", subject=ref("Patient/anna"))),
        "o_gone": put(obs("1234-5", subject=ref("Patient/gone"))),
        "o_group": put(obs("1234-5", subject=ref("Group/grp"))),
    }


def test_chain_with_explicit_type_matches_through_the_reference(
    world: dict[str, str], find: Any
) -> None:
    assert find("Observation", "subject:Patient.gender=male") == {world["o_peter"]}
    assert find("Observation", "subject:Patient.gender=female,male") == {
        world["o_peter"],
        world["o_anna"],
    }


def test_chain_without_type_infers_every_target_having_the_parameter(
    world: dict[str, str], find: Any
) -> None:
    # patient has one target type (Patient); subject has several, gender only on Patient.
    assert find("Observation", "patient.gender=female") == {world["o_anna"]}
    assert find("Observation", "subject.gender=male") == {world["o_peter"]}
    # _id exists on every target type: Group and Patient both answer.
    assert find("Observation", "subject._id=grp,anna") == {world["o_group"], world["o_anna"]}


def test_chain_never_goes_through_a_deleted_resource(world: dict[str, str], find: Any) -> None:
    assert world["o_gone"] not in find("Observation", "subject:Patient.gender=male")
    assert find("Observation", "subject:Patient.gender:missing=true") == set()


def test_multi_level_chain(world: dict[str, str], find: Any) -> None:
    assert find("Observation", "subject:Patient.organization.name=acme") == {world["o_peter"]}
    assert find("Observation", "patient.organization:Organization.name=zeta") == {world["o_anna"]}
    assert find("Observation", "subject:Patient.organization._id=zeta") == {world["o_anna"]}


def test_chain_into_blind_parameter_matches_blind_tokens(world: dict[str, str], find: Any) -> None:
    assert find("Observation", "subject:Patient.name=peter") == {world["o_peter"]}
    assert find("Observation", "subject.family=anders") == {world["o_anna"]}
    assert find("Observation", "patient.name:exact=Anna") == {world["o_anna"]}
    params = [("subject:Patient.name", "peter"), ("code", "1234-5")]
    assert chain_blind_params("Observation", params) == [("subject:Patient.name", "peter")]
    assert blind_params("Observation", params) == []


def test_chain_with_modifier_on_last_link_and_and_semantics(
    world: dict[str, str], find: Any
) -> None:
    assert find("Observation", "subject:Patient.gender:not=male") == {world["o_anna"]}
    assert find("Observation", "subject:Patient.gender=male&code=1234-5") == {world["o_peter"]}


def test_chain_errors_and_unknown_links(
    world: dict[str, str], find: Any, conn: Connection, keyring: KeyRing, tenant: str
) -> None:
    with pytest.raises(BadRequest, match="not a target type"):
        find("Observation", "subject:Organization.name=x")
    with pytest.raises(BadRequest, match="not a reference"):
        find("Observation", "code.name=x")
    with pytest.raises(BadRequest, match="levels deep"):
        find("Observation", "subject:Patient.link.link.link.link.gender=male")
    with pytest.raises(BadRequest, match="name one"):
        find("Provenance", "target._lastUpdated=gt2000")
    result = search(conn, keyring, tenant, "Observation", [("subject:Patient.bogus", "1")])
    assert result.unknown_params == ["subject:Patient.bogus"]
    with pytest.raises(BadRequest, match="bogus"):
        find("Observation", "subject.bogus=1", strict=True)


def test_has_finds_resources_referenced_by_matching_resources(
    world: dict[str, str], find: Any
) -> None:
    assert find("Patient", "_has:Observation:patient:code=1234-5") == {world["peter"]}
    assert find("Patient", "_has:Observation:subject:code=718-7") == {world["anna"]}
    assert find("Group", "_has:Observation:subject:code=1234-5") == {world["grp"]}
    assert find("Patient", "_has:Observation:patient:code=9999-9") == set()
    assert find("Patient", "_has:Observation:patient:code:not=1234-5") == {world["anna"]}


def test_nested_has_and_has_with_chain(world: dict[str, str], find: Any, put: Put) -> None:
    put(
        {
            "resourceType": "Provenance",
            "target": [ref(f"Observation/{world['o_anna']}")],
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": ref("Practitioner/dr")}],
        }
    )
    assert find("Patient", "_has:Observation:subject:_has:Provenance:target:agent=dr") == {
        world["anna"]
    }
    assert find(
        "Organization", "_has:Patient:organization:_has:Observation:patient:code=1234-5"
    ) == {world["acme"]}
    assert find("Observation", "_has:Provenance:target:agent=Practitioner/dr") == {world["o_anna"]}


def test_has_errors(find: Any) -> None:
    with pytest.raises(BadRequest, match="_has"):
        find("Patient", "_has:Observation:patient=1")
    with pytest.raises(BadRequest, match="not a resource type"):
        find("Patient", "_has:Nope:patient:code=1")
    with pytest.raises(BadRequest, match="cannot refer"):
        find("Organization", "_has:Observation:patient:code=1")


def bp(systolic: float, diastolic: float, **extra: Any) -> dict[str, Any]:
    return obs(
        "85354-9",
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {
                    "value": systolic,
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {
                    "value": diastolic,
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
        ],
        **extra,
    )


def test_component_composite_matches_within_the_same_component(put: Put, find: Any) -> None:
    high = put(bp(150, 70))
    low = put(bp(110, 95))
    q = "component-code-value-quantity"
    assert find("Observation", f"{q}={LOINC}|8480-6$gt140") == {high}
    # 95 is a diastolic value: it must not satisfy a systolic criterion.
    assert find("Observation", f"{q}={LOINC}|8480-6$gt90") == {high, low}
    assert find("Observation", f"{q}={LOINC}|8480-6$gt120") == {high}
    assert find("Observation", f"{q}=8462-4$gt90") == {low}
    assert find("Observation", f"{q}=8462-4$gt90|http://unitsofmeasure.org|mm[Hg]") == {low}
    assert find("Observation", f"{q}=8462-4$gt200,8480-6$lt120") == {low}  # OR
    assert find("Observation", f"{q}=8480-6$gt140&{q}=8462-4$lt80") == {high}  # AND
    assert find("Observation", f"combo-code-value-quantity={LOINC}|8462-4$95") == {low}


def test_root_composites_code_value_quantity_concept_date_string(put: Put, find: Any) -> None:
    sys = put(obs("8480-6", valueQuantity={"value": 120, "unit": "mmHg"}))
    dia = put(obs("8462-4", valueQuantity={"value": 120, "unit": "mmHg"}))
    concept = put(
        obs("44100-6", valueCodeableConcept={"coding": [{"system": "urn:snomed", "code": "pos"}]})
    )
    dated = put(obs("21112-8", valueDateTime="2020-05-01"))
    text = put(obs("8251-1", valueString="Pale yellow"))
    assert find("Observation", f"code-value-quantity={LOINC}|8480-6$gt100") == {sys}
    assert find("Observation", "code-value-quantity=8462-4$120") == {dia}
    assert find("Observation", "code-value-quantity=8462-4$gt200") == set()
    assert find("Observation", "code-value-concept=44100-6$urn:snomed|pos") == {concept}
    assert find("Observation", "code-value-concept=8480-6$pos") == set()
    assert find("Observation", "code-value-date=21112-8$ge2020-01") == {dated}
    assert find("Observation", "code-value-string=8251-1$pale") == {text}
    assert find("Observation", "combo-code-value-quantity=8480-6$120") == {sys}


def test_composite_errors(find: Any) -> None:
    with pytest.raises(BadRequest, match="components"):
        find("Observation", "code-value-quantity=8480-6")
    with pytest.raises(BadRequest, match="composite"):
        find("Observation", "code-value-quantity:missing=true")
    with pytest.raises(BadRequest, match="code-value-quantity"):
        find("Observation", "code-value-quantity=8480-6$abc")


def test_composite_escaped_dollar_is_part_of_the_value(put: Put, find: Any) -> None:
    a = put(obs("x$y", valueString="a$b"))
    assert find("Observation", r"code-value-string=x\$y$a\$b") == {a}


def test_reference_identifier_modifier_is_blind_and_confirmable(
    put: Put, find: Any, conn: Connection, keyring: KeyRing, tenant: str
) -> None:
    body = obs(subject={"identifier": {"system": "http://mrn", "value": "123"}})
    a = put(body)
    put(obs(subject={"identifier": {"system": "http://mrn", "value": "124"}}))
    put(obs(subject=ref("Patient/123")))
    assert find("Observation", "subject:identifier=http://mrn|123") == {a}
    assert find("Observation", "subject:identifier=123") == {a}
    params = [("subject:identifier", "http://mrn|123")]
    assert blind_params("Observation", params) == params
    assert confirm_candidate("Observation", body, params)
    assert not confirm_blind_match("Observation", body, "subject:identifier", "http://mrn|124")
    with pytest.raises(BadRequest, match="identifier"):
        find("Observation", "subject:identifier=http://mrn|")


def test_reference_below_on_canonical_urls(put: Put, find: Any) -> None:
    a = put(
        {
            "resourceType": "PlanDefinition",
            "status": "active",
            "relatedArtifact": [
                {"type": "derived-from", "resource": "http://acme.org/PlanDefinition/base|2"}
            ],
        }
    )
    assert find("PlanDefinition", "derived-from:below=http://acme.org/PlanDefinition") == {a}
    assert find("PlanDefinition", "derived-from=http://acme.org/PlanDefinition/base") == {a}
    with pytest.raises(BadRequest, match="below"):
        find("PlanDefinition", "derived-from:below=base")


def test_control_parameters_are_known_not_unknown(
    conn: Connection, keyring: KeyRing, tenant: str, put: Put
) -> None:
    a = put(obs())
    params = [
        ("_include", "Observation:subject"),
        ("_revinclude:iterate", "Provenance:target"),
        ("_summary", "true"),
        ("_elements", "code"),
        ("_total", "accurate"),
        ("_format", "json"),
        ("_pretty", "true"),
    ]
    result = search(conn, keyring, tenant, "Observation", params, strict=True)
    assert result.ids == [a]
    assert result.unknown_params == []
