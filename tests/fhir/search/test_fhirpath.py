"""The FHIRPath subset against the official R4 SearchParameter expressions."""

from __future__ import annotations

import pytest

from carechart.fhir.definitions import load_definitions
from carechart.fhir.search.fhirpath import FhirPathError, compile_path

#: R4 expressions deliberately left uncompiled: none.
UNSUPPORTED: frozenset[str] = frozenset()


def test_every_r4_search_parameter_expression_compiles() -> None:
    failures = []
    compiled = 0
    for param in load_definitions().all_search_parameters():
        expressions = [param.expression, *(c.expression for c in param.components)]
        for expression in filter(None, expressions):
            for base in (None, *param.base):
                try:
                    compile_path(expression, base)
                    compiled += 1
                except FhirPathError as exc:
                    failures.append((param.url, expression, str(exc)))
    assert failures == []
    assert compiled > 2500
    assert not UNSUPPORTED


def test_choice_type_navigation_knows_the_type() -> None:
    path = compile_path("(Observation.value as Quantity)", "Observation")
    obs = {"resourceType": "Observation", "valueQuantity": {"value": 1}}
    assert path.evaluate(obs) == [({"value": 1}, "Quantity")]
    assert path.evaluate({"resourceType": "Observation", "valueString": "x"}) == []


def test_as_function_and_of_type_and_primitive_choice() -> None:
    onset = compile_path("Condition.onset.as(dateTime)", "Condition")
    assert onset.values({"resourceType": "Condition", "onsetDateTime": "2020"}) == ["2020"]
    of_type = compile_path("Condition.onset.ofType(Age)")
    assert of_type.values({"resourceType": "Condition", "onsetAge": {"value": 3}}) == [{"value": 3}]
    # Age is a Quantity: `as Quantity` keeps it.
    as_quantity = compile_path("Condition.onset as Quantity")
    assert as_quantity.values({"resourceType": "Condition", "onsetAge": {"value": 3}})


def test_where_resolve_is_filters_by_reference_target_type() -> None:
    path = compile_path(
        load_definitions().search_parameter("Observation", "patient").expression or "",
        "Observation",
    )
    assert path.values({"resourceType": "Observation", "subject": {"reference": "Patient/1"}})
    assert not path.values({"resourceType": "Observation", "subject": {"reference": "Group/1"}})
    absolute = {"resourceType": "Observation", "subject": {"reference": "http://x/fhir/Patient/9"}}
    assert path.values(absolute)


def test_union_prunes_branches_of_other_resource_types() -> None:
    expression = load_definitions().search_parameter("Patient", "family").expression or ""
    assert "Practitioner" in expression
    path = compile_path(expression, "Patient")
    assert path.values({"resourceType": "Patient", "name": [{"family": "A"}, {"family": "B"}]}) == [
        "A",
        "B",
    ]


def test_where_with_equality_on_string_literal() -> None:
    phone = compile_path("Patient.telecom.where(system='phone')")
    patient = {
        "resourceType": "Patient",
        "telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "555"}],
    }
    assert phone.values(patient) == [{"system": "phone", "value": "555"}]


def test_exists_and_inequality_three_valued() -> None:
    deceased = compile_path("Patient.deceased.exists() and Patient.deceased != false")
    assert deceased.values({"resourceType": "Patient", "deceasedBoolean": True}) == [True]
    assert deceased.values({"resourceType": "Patient", "deceasedBoolean": False}) == [False]
    assert deceased.values({"resourceType": "Patient"}) == [False]
    assert deceased.values({"resourceType": "Patient", "deceasedDateTime": "2020"}) == [True]


def test_extension_function_and_where_url() -> None:
    path = compile_path(
        "Patient.extension('http://x').value | Patient.extension.where(url='http://y').value"
    )
    patient = {
        "resourceType": "Patient",
        "extension": [
            {"url": "http://x", "valueCode": "a"},
            {"url": "http://y", "valueString": "b"},
            {"url": "http://z", "valueString": "c"},
        ],
    }
    assert path.evaluate(patient) == [("a", "code"), ("b", "string")]


def test_resource_level_paths_apply_to_every_type() -> None:
    path = compile_path("Resource.meta.tag", "Observation")
    tag = {"system": "s", "code": "c"}
    assert path.values({"resourceType": "Observation", "meta": {"tag": [tag]}}) == [tag]


def test_indexer_and_contained_resolve() -> None:
    first = compile_path("Bundle.entry[0].resource")
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"id": "a"}}, {"resource": {}}]}
    assert first.values(bundle) == [{"id": "a"}]
    path = compile_path("Observation.subject.where(resolve() is Patient)")
    obs = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "subject": {"reference": "#p"},
    }
    assert path.values(obs) == [{"reference": "#p"}]


@pytest.mark.parametrize(
    "expression",
    ["Patient.name.select(given)", "Patient.name[", "Patient.name.where()", "%context.id", "1 + 2"],
)
def test_outside_the_subset_fails_to_compile(expression: str) -> None:
    with pytest.raises(FhirPathError):
        compile_path(expression)
