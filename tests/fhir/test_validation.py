"""Validation on write against the R4 definitions (json.html, datatypes.html, references.html)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carechart import jsonio
from carechart.fhir.validation import validate_resource

ROOT = Path(__file__).resolve().parents[2]


def _fhir_package() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "carechart_tools_fhir_package", ROOT / "tools" / "fhir_package.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package() -> Path:
    path: Path = _fhir_package().ensure_package()
    return path


def issues_at(resource: Any) -> dict[str | None, str]:
    return {i.expression: i.message for i in validate_resource(resource)}


def assert_valid(resource: Any) -> None:
    assert validate_resource(resource) == []


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **elements}


def observation(**elements: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
    }
    return {**base, **elements}


def extension(**elements: Any) -> dict[str, Any]:
    return patient(extension=[{"url": "http://example.org/x", **elements}])


# --- resourceType ---------------------------------------------------------------------------


def test_minimal_patient_is_valid() -> None:
    assert_valid(patient())


def test_missing_resource_type_is_reported() -> None:
    assert issues_at({"id": "x"}) == {None: "resourceType is missing"}


def test_unknown_resource_type_is_reported() -> None:
    assert "not a known FHIR R4 resource type" in issues_at({"resourceType": "Patientt"})[None]


def test_abstract_resource_type_is_not_accepted() -> None:
    assert None in issues_at({"resourceType": "DomainResource"})


def test_resource_must_be_an_object() -> None:
    assert issues_at(["Patient"]) == {None: "A resource must be a JSON object"}


# --- unknown elements and choice types -------------------------------------------------------


def test_unknown_element_is_named_with_path() -> None:
    issues = issues_at(patient(name=[{"family": "Chalmers", "nickname": "Jim"}]))
    assert issues == {"Patient.name[0].nickname": "Unknown element nickname"}


def test_unknown_top_level_element_is_reported() -> None:
    assert "Patient.colour" in issues_at(patient(colour="blue"))


def test_misplaced_choice_suffix_is_an_unknown_element() -> None:
    issues = issues_at(observation(valueFoo="1"))
    assert "Observation.valueFoo" in issues
    assert "not an allowed type for value[x]" in issues["Observation.valueFoo"]


def test_choice_type_not_allowed_for_element_is_rejected() -> None:
    assert "Patient.deceasedString" in issues_at(patient(deceasedString="yes"))


def test_allowed_choice_type_is_accepted() -> None:
    assert_valid(patient(deceasedBoolean=False))
    assert_valid(observation(valueQuantity={"value": Decimal("72.5"), "unit": "kg"}))


def test_two_types_of_one_choice_are_rejected() -> None:
    issues = issues_at(patient(deceasedBoolean=True, deceasedDateTime="2020-01-01"))
    assert "Only one deceased[x] element is allowed" in issues.values()


def test_missing_required_choice_is_reported() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
    }
    assert "MedicationRequest.medication[x]" in issues_at(request)
    assert_valid({**request, "medicationCodeableConcept": {"text": "aspirin"}})


# --- cardinality and JSON shape --------------------------------------------------------------


def test_missing_required_element_is_reported() -> None:
    issues = issues_at({"resourceType": "Observation", "code": {"text": "x"}})
    assert issues == {"Observation.status": "Required element is missing"}


def test_required_primitive_present_only_as_extension_counts() -> None:
    absent = {"extension": [{"url": "http://example.org/why", "valueString": "unknown"}]}
    assert_valid({"resourceType": "Observation", "_status": absent, "code": {"text": "x"}})


def test_repeating_element_must_be_an_array() -> None:
    assert issues_at(patient(name={"family": "Chalmers"})) == {
        "Patient.name": "Element must be a JSON array"
    }


def test_single_element_must_not_be_an_array() -> None:
    assert issues_at(patient(gender=["male"])) == {"Patient.gender": "Element must not be an array"}


def test_empty_array_is_rejected() -> None:
    assert issues_at(patient(name=[])) == {"Patient.name": "Arrays must not be empty"}


def test_empty_object_is_rejected() -> None:
    assert issues_at(patient(maritalStatus={})) == {
        "Patient.maritalStatus": "Objects must not be empty"
    }


def test_null_is_rejected() -> None:
    assert "Patient.birthDate" in issues_at(patient(birthDate=None))


def test_empty_string_is_rejected() -> None:
    assert "Patient.name[0].family" in issues_at(patient(name=[{"family": ""}]))


def test_complex_element_must_be_an_object() -> None:
    assert "Patient.maritalStatus" in issues_at(patient(maritalStatus="married"))


def test_all_issues_are_reported_not_just_the_first() -> None:
    issues = issues_at(patient(birthDate="1970-02-30", gender="robot", foo=1, name=[]))
    assert set(issues) == {"Patient.birthDate", "Patient.gender", "Patient.foo", "Patient.name"}


# --- primitive datatypes (datatypes.html#primitive) -----------------------------------------


def test_boolean_must_be_a_json_boolean() -> None:
    assert_valid(patient(active=True))
    assert "Patient.active" in issues_at(patient(active="true"))
    assert "Patient.active" in issues_at(patient(active=1))


def test_integer_rejects_fraction_and_boolean() -> None:
    assert_valid(patient(multipleBirthInteger=2))
    assert "Patient.multipleBirthInteger" in issues_at(patient(multipleBirthInteger=Decimal("2.0")))
    assert "Patient.multipleBirthInteger" in issues_at(patient(multipleBirthInteger=True))


def test_integer_is_32_bit() -> None:
    assert_valid(patient(multipleBirthInteger=2**31 - 1))
    assert "Patient.multipleBirthInteger" in issues_at(patient(multipleBirthInteger=2**31))


def test_unsigned_int_rejects_negative() -> None:
    assert_valid(patient(photo=[{"size": 0}]))
    assert "Patient.photo[0].size" in issues_at(patient(photo=[{"size": -1}]))


def test_positive_int_rejects_zero() -> None:
    assert_valid(extension(valuePositiveInt=1))
    assert "Patient.extension[0].valuePositiveInt" in issues_at(extension(valuePositiveInt=0))


def test_decimal_accepts_numbers_only() -> None:
    assert_valid(observation(valueQuantity={"value": 72}))
    assert_valid(observation(valueQuantity={"value": Decimal("72.50")}))
    for bad in (True, "72.5"):
        assert "Observation.valueQuantity.value" in issues_at(
            observation(valueQuantity={"value": bad})
        )


def test_decimal_from_parsed_json_is_accepted() -> None:
    assert_valid(
        jsonio.loads(
            b'{"resourceType":"Observation","status":"final",'
            b'"code":{"text":"x"},"valueQuantity":{"value":1.50}}'
        )
    )


def test_string_must_be_a_json_string() -> None:
    assert "Patient.name[0].family" in issues_at(patient(name=[{"family": 12}]))


def test_string_with_no_break_space_is_valid() -> None:
    assert_valid(patient(name=[{"family": "Chalmers\u00a0"}]))


def test_code_rejects_leading_or_trailing_whitespace() -> None:
    assert_valid(observation(valueQuantity={"code": "mg/dL"}))
    assert_valid(observation(valueQuantity={"code": "a b"}))
    for bad in (" mg", "mg ", "a  b"):
        assert "Observation.valueQuantity.code" in issues_at(
            observation(valueQuantity={"code": bad})
        )


@pytest.mark.parametrize("good", ["example", "a.b-C9", "x" * 64])
def test_id_accepts_spec_pattern(good: str) -> None:
    assert_valid(patient(id=good))


@pytest.mark.parametrize("bad", ["has_underscore", "x" * 65, "sp ace", "é"])
def test_id_rejects_outside_spec_pattern(bad: str) -> None:
    assert "Patient.id" in issues_at(patient(id=bad))


def test_uri_rejects_whitespace() -> None:
    assert_valid(patient(identifier=[{"system": "urn:oid:1.2.3", "value": "1"}]))
    assert "Patient.identifier[0].system" in issues_at(patient(identifier=[{"system": "a b"}]))


def test_oid_and_uuid_follow_spec_regex() -> None:
    assert_valid(extension(valueOid="urn:oid:1.2.840.113619"))
    assert "Patient.extension[0].valueOid" in issues_at(extension(valueOid="1.2.3"))
    assert_valid(extension(valueUuid="urn:uuid:c757873d-ec9a-4326-a141-556f43239520"))
    assert "Patient.extension[0].valueUuid" in issues_at(extension(valueUuid="urn:uuid:C757"))


def test_markdown_rejects_empty() -> None:
    assert_valid(extension(valueMarkdown="**bold**"))
    assert "Patient.extension[0].valueMarkdown" in issues_at(extension(valueMarkdown=""))


def test_base64_binary_is_checked() -> None:
    assert_valid(patient(photo=[{"data": "aGVsbG8="}]))
    assert_valid(patient(photo=[{"data": "aGVs\nbG8="}]))
    assert "Patient.photo[0].data" in issues_at(patient(photo=[{"data": "abc"}]))
    assert "Patient.photo[0].data" in issues_at(patient(photo=[{"data": "ab$d"}]))


@pytest.mark.parametrize("good", ["2023", "2023-02", "2023-02-28", "2024-02-29", "2000-02-29"])
def test_valid_dates_are_accepted(good: str) -> None:
    assert_valid(patient(birthDate=good))


def test_feb_30_is_not_a_date() -> None:
    assert "Patient.birthDate" in issues_at(patient(birthDate="2023-02-30"))


@pytest.mark.parametrize(
    "bad", ["2023-02-29", "1900-02-29", "2023-04-31", "2023-13", "0000", "23-01-01"]
)
def test_invalid_dates_are_rejected(bad: str) -> None:
    assert "Patient.birthDate" in issues_at(patient(birthDate=bad))


def test_date_error_does_not_echo_the_value() -> None:
    (issue,) = validate_resource(patient(birthDate="1970-02-30"))
    assert "1970" not in issue.message


def test_datetime_with_time_needs_timezone() -> None:
    assert_valid(patient(deceasedDateTime="2023-01-01T10:00:00Z"))
    assert_valid(patient(deceasedDateTime="2023-01-01T10:00:00.123+05:30"))
    assert_valid(patient(deceasedDateTime="2023-01"))
    assert "Patient.deceasedDateTime" in issues_at(patient(deceasedDateTime="2023-01-01T10:00:00"))
    assert "Patient.deceasedDateTime" in issues_at(patient(deceasedDateTime="2023-02-30T10:00:00Z"))


def test_instant_needs_full_precision() -> None:
    assert_valid(patient(meta={"lastUpdated": "2023-01-01T10:00:00Z"}))
    assert "Patient.meta.lastUpdated" in issues_at(patient(meta={"lastUpdated": "2023-01-01"}))


def test_time_is_checked() -> None:
    assert_valid(extension(valueTime="23:59:59"))
    assert "Patient.extension[0].valueTime" in issues_at(extension(valueTime="24:00:00"))


def test_narrative_div_must_be_xhtml() -> None:
    good = '<div xmlns="http://www.w3.org/1999/xhtml">hi</div>'
    assert_valid(patient(text={"status": "generated", "div": good}))
    issues = issues_at(patient(text={"status": "generated", "div": "<p>hi</p>"}))
    assert "Patient.text.div" in issues


@given(st.integers(1, 9999), st.integers(1, 12), st.integers(1, 31))
def test_date_validity_matches_the_calendar(year: int, month: int, day: int) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d}"
    try:
        dt.date(year, month, day)
        real = True
    except ValueError:
        real = False
    assert (validate_resource(patient(birthDate=text)) == []) is real


@given(st.integers(-(2**40), 2**40))
def test_integer_range_matches_32_bit(value: int) -> None:
    valid = -(2**31) <= value <= 2**31 - 1
    assert (validate_resource(patient(multipleBirthInteger=value)) == []) is valid


# --- primitive extensions: the _element siblings (json.html#primitive) ----------------------

EXT = {"extension": [{"url": "http://example.org/certainty", "valueCode": "estimated"}]}


def test_primitive_extension_sibling_is_accepted() -> None:
    assert_valid(patient(birthDate="1970", _birthDate={"id": "b1", **EXT}))


def test_primitive_extension_sibling_is_validated() -> None:
    issues = issues_at(patient(birthDate="1970", _birthDate={"colour": "red"}))
    assert issues == {"Patient.birthDate.colour": "Unknown element colour"}


def test_primitive_extension_sibling_must_be_an_object() -> None:
    assert "Patient.birthDate" in issues_at(patient(birthDate="1970", _birthDate="x"))


def test_underscore_of_non_primitive_is_unknown() -> None:
    assert "Patient._name" in issues_at(patient(_name={"id": "x"}))


def test_primitive_array_null_aligned_with_extension_is_valid() -> None:
    assert_valid(patient(name=[{"given": ["Jim", None], "_given": [None, EXT]}]))


def test_primitive_array_null_without_extension_is_rejected() -> None:
    issues = issues_at(patient(name=[{"given": ["Jim", None]}]))
    assert "Patient.name[0].given[1]" in issues


def test_primitive_extension_array_must_align() -> None:
    issues = issues_at(patient(name=[{"given": ["Jim", "Bob"], "_given": [EXT]}]))
    assert "Patient.name[0].given" in issues


# --- Extension (extensibility.html) ----------------------------------------------------------


def test_extension_needs_url() -> None:
    assert issues_at(patient(extension=[{"valueString": "x"}])) == {
        "Patient.extension[0].url": "Required element is missing"
    }


def test_extension_needs_value_or_nested_extensions() -> None:
    assert "Patient.extension[0]" in issues_at(extension())
    nested = {"extension": [{"url": "part", "valueString": "x"}]}
    assert_valid(extension(**nested))


def test_extension_must_not_have_both_value_and_extensions() -> None:
    both = extension(valueString="x", extension=[{"url": "part", "valueString": "y"}])
    assert "Patient.extension[0]" in issues_at(both)


def test_extension_with_two_values_is_rejected() -> None:
    assert "Patient.extension[0].valueInteger" in issues_at(
        extension(valueString="x", valueInteger=1)
    )


def test_modifier_extension_is_validated() -> None:
    issues = issues_at(patient(modifierExtension=[{"url": "http://e.org/m"}]))
    assert "Patient.modifierExtension[0]" in issues


# --- references (references.html) ------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/123",
        "Patient/123/_history/2",
        "http://example.org/fhir/Patient/123",
        "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "urn:oid:1.2.3.4",
        "Patient?identifier=http://e.org|1",
    ],
)
def test_valid_reference_formats_are_accepted(reference: str) -> None:
    assert_valid(observation(subject={"reference": reference}))


@pytest.mark.parametrize("reference", ["patient 123", "Patient/", "Patient/a_b", "urn:uuid:x"])
def test_malformed_reference_is_rejected(reference: str) -> None:
    assert "Observation.subject.reference" in issues_at(
        observation(subject={"reference": reference})
    )


def test_reference_to_unknown_type_is_rejected() -> None:
    issues = issues_at(observation(subject={"reference": "Martian/1"}))
    assert issues == {"Observation.subject.reference": "Reference names an unknown resource type"}


def test_reference_to_type_outside_targets_is_rejected() -> None:
    issues = issues_at(observation(subject={"reference": "Medication/1"}))
    assert "not allowed here" in issues["Observation.subject.reference"]


def test_reference_with_only_display_is_valid() -> None:
    assert_valid(observation(subject={"display": "Someone"}))


# --- contained resources (references.html#contained) ----------------------------------------


def contained_patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **elements}


def test_local_reference_to_contained_resource_is_valid() -> None:
    assert_valid(observation(contained=[contained_patient()], subject={"reference": "#p1"}))


def test_local_reference_without_contained_resource_is_rejected() -> None:
    issues = issues_at(observation(subject={"reference": "#p2"}))
    assert "Observation.subject.reference" in issues


def test_contained_resource_is_validated_recursively() -> None:
    resource = observation(
        contained=[contained_patient(colour="red")], subject={"reference": "#p1"}
    )
    assert issues_at(resource) == {"Observation.contained[0].colour": "Unknown element colour"}


def test_contained_resource_must_not_contain_resources() -> None:
    inner = contained_patient(contained=[{"resourceType": "Organization", "id": "o1"}])
    issues = issues_at(observation(contained=[inner], subject={"reference": "#p1"}))
    assert "Observation.contained[0].contained" in issues


def test_contained_resource_must_not_have_version_or_last_updated() -> None:
    inner = contained_patient(meta={"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"})
    issues = issues_at(observation(contained=[inner], subject={"reference": "#p1"}))
    assert {
        "Observation.contained[0].meta.versionId",
        "Observation.contained[0].meta.lastUpdated",
    } <= set(issues)


def test_contained_entry_without_resource_type_is_reported() -> None:
    assert "Observation.contained[0]" in issues_at(observation(contained=[{"id": "x"}]))


# --- resources inside resources --------------------------------------------------------------


def test_bundle_entry_resource_is_validated() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient(birthDate="2023-02-30")}],
    }
    assert "Bundle.entry[0].resource.birthDate" in issues_at(bundle)


def test_bundle_entry_resources_are_separate_reference_scopes() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": observation(
                    contained=[contained_patient()], subject={"reference": "#p1"}
                )
            },
            {"resource": observation(subject={"reference": "#p1"})},
        ],
    }
    assert set(issues_at(bundle)) == {"Bundle.entry[1].resource.subject.reference"}


def test_parameters_resource_is_validated() -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "p", "resource": {"resourceType": "Nope"}}],
    }
    assert "Parameters.parameter[0].resource.resourceType" in issues_at(params)


# --- required bindings (terminologies.html#required) ----------------------------------------


def test_code_outside_required_value_set_is_rejected() -> None:
    assert_valid(patient(gender="female"))
    issues = issues_at(patient(gender="robot"))
    assert "administrative-gender" in issues["Patient.gender"]


def test_required_binding_on_datatype_is_checked() -> None:
    assert_valid(patient(name=[{"use": "official"}]))
    assert "Patient.name[0].use" in issues_at(patient(name=[{"use": "secret"}]))


CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


def allergy(system: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": "Patient/1"},
        "clinicalStatus": {"coding": [{"system": system, "code": code}]},
    }


def test_codeable_concept_with_code_outside_required_value_set_is_rejected() -> None:
    assert_valid(allergy(CLINICAL, "active"))
    issues = issues_at(allergy(CLINICAL, "bogus"))
    assert "AllergyIntolerance.clinicalStatus.coding[0].code" in issues


def test_codeable_concept_coding_of_another_system_is_not_judged() -> None:
    assert_valid(allergy("http://example.org/local", "bogus"))


def test_unexpandable_required_value_set_is_not_checked() -> None:
    # Attachment.contentType is bound to BCP-13 mime types, not in the package.
    assert_valid(patient(photo=[{"contentType": "image/x-anything"}]))


# --- contentReference (elementdefinition.html#contentReference) ------------------------------


def test_nested_questionnaire_items_follow_content_reference() -> None:
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [
            {
                "linkId": "1",
                "type": "group",
                "item": [{"linkId": "1.1", "type": "string", "colour": "x"}, {"type": "string"}],
            }
        ],
    }
    assert issues_at(questionnaire) == {
        "Questionnaire.item[0].item[0].colour": "Unknown element colour",
        "Questionnaire.item[0].item[1].linkId": "Required element is missing",
    }


# --- the specification's own examples --------------------------------------------------------

#: Official 4.0.1 examples that are genuinely invalid by the base definitions.
INVALID_EXAMPLES: dict[str, str] = {
    "DeviceMetric-example.json": "parent references DeviceDefinition; R4 allows only Device",
    "DeviceUseStatement-example.json": "reasonReference to Procedure is not an allowed target",
    "ImplementationGuide-fhir.json": "no name/status (min 1) and a reference id over 64 chars",
    "ig-r4.json": "the package's copy of ImplementationGuide-fhir.json, same problems",
    "MedicationRequest-medrx0301.json": "dispenseRequest.performer references a Practitioner; "
    "only Organization is allowed",
    "Observation-clinical-gender.json": "performer references an Encounter",
    "Questionnaire-qs1.json": "nested items without the required linkId",
    "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json": (
        "id is 67 characters; ids are at most 64"
    ),
    **{
        f"SearchParameter-{vs}-extensions-{rt}-{code}.json": "no base (min 1)"
        for vs, rt in (("codesystem", "CodeSystem"), ("valueset", "ValueSet"))
        for code in ("author", "effective", "end", "keyword", "workflow")
    },
}

CORE_TYPES = (
    "Patient",
    "Observation",
    "MedicationRequest",
    "Encounter",
    "AllergyIntolerance",
    "Condition",
    "Bundle",
)


def _examples(types: tuple[str, ...] | None = None) -> list[Path]:
    package = _package()
    paths = sorted(package.glob("*-*.json"))
    if types is not None:
        paths = [p for p in paths if p.name.split("-", 1)[0] in types]
    return paths


@pytest.mark.parametrize("path", _examples(CORE_TYPES), ids=lambda p: p.stem)
def test_core_spec_example_is_valid(path: Path) -> None:
    issues = validate_resource(jsonio.loads(path.read_bytes()))
    if path.name in INVALID_EXAMPLES:
        assert issues, f"allowlisted as invalid but valid: {INVALID_EXAMPLES[path.name]}"
    else:
        assert issues == []


def test_every_spec_example_is_valid_except_the_allowlisted() -> None:
    failures: dict[str, list[str]] = {}
    for path in _examples():
        issues = validate_resource(jsonio.loads(path.read_bytes()))
        if issues:
            failures[path.name] = [f"{i.expression}: {i.message}" for i in issues[:3]]
    unexpected = {name: found for name, found in failures.items() if name not in INVALID_EXAMPLES}
    assert unexpected == {}
    # The allowlist stays honest: every entry must still be invalid.
    assert set(INVALID_EXAMPLES) <= set(failures)


def test_spec_example_bytes_parse_with_plain_json_too() -> None:
    # Guards the example loop above: the package files are JSON objects with a resourceType.
    for path in _examples(("Patient",)):
        assert "resourceType" in json.loads(path.read_text(encoding="utf-8"))
