"""The committed R4 definition tables and their loader (carechart.fhir.definitions)."""

from __future__ import annotations

import gzip
import json
from importlib import resources

from carechart.fhir.definitions import load_definitions


def test_loader_is_cached() -> None:
    assert load_definitions() is load_definitions()


def test_resource_types_are_the_concrete_r4_resources() -> None:
    defs = load_definitions()
    assert {"Patient", "Observation", "Bundle", "Parameters", "Binary"} <= defs.resource_types
    assert not {"Resource", "DomainResource", "HumanName", "string"} & defs.resource_types
    assert len(defs.resource_types) == 146
    assert defs.is_resource_type("Patient")
    assert not defs.is_resource_type("patient")


def test_profiles_and_logical_models_are_not_structures() -> None:
    defs = load_definitions()
    assert defs.structure("HumanName") is not None
    assert defs.structure("SimpleQuantity") is None
    assert defs.structure("FiveWs") is None
    assert defs.structure("vitalsigns") is None


def test_all_r4_search_parameters_are_loaded() -> None:
    params = load_definitions().all_search_parameters()
    assert len(params) == 1375
    assert len({p.url for p in params}) == 1375


def test_resource_level_search_parameters_apply_to_every_type() -> None:
    defs = load_definitions()
    patient = {p.code for p in defs.search_parameters("Patient")}
    assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text"} <= patient
    assert {"name", "birthdate", "gender", "identifier"} <= patient
    # _text is defined on DomainResource; Bundle is not a DomainResource.
    bundle = {p.code for p in defs.search_parameters("Bundle")}
    assert "_id" in bundle
    assert "_text" not in bundle


def test_search_parameter_keeps_what_search_needs() -> None:
    defs = load_definitions()
    subject = defs.search_parameter("Observation", "subject")
    assert subject is not None
    assert subject.type == "reference"
    assert subject.expression == "Observation.subject"
    assert "Patient" in subject.target
    date = defs.search_parameter("Observation", "date")
    assert date is not None
    assert "Observation" in date.base
    assert "Observation" in (date.expression or "")


def test_composite_search_parameter_has_components() -> None:
    param = load_definitions().search_parameter("Observation", "code-value-quantity")
    assert param is not None
    assert param.type == "composite"
    assert [c.expression for c in param.components] == ["code", "value.as(Quantity)"]
    assert param.components[0].definition.endswith("clinical-code")


def test_patient_compartment_lists_param_codes() -> None:
    compartment = load_definitions().patient_compartment
    assert compartment["Observation"] == ("subject", "performer")
    assert compartment["Patient"] == ("link",)
    assert compartment["Account"] == ("subject",)
    assert "Practitioner" not in compartment


def test_required_value_set_is_expanded_from_the_package() -> None:
    gender = load_definitions().value_set("http://hl7.org/fhir/ValueSet/administrative-gender")
    assert gender is not None
    assert gender.codes == {
        "http://hl7.org/fhir/administrative-gender": frozenset(
            {"male", "female", "other", "unknown"}
        )
    }


def test_value_set_version_suffix_is_ignored() -> None:
    defs = load_definitions()
    assert defs.value_set("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1") is not None


def test_external_value_sets_are_marked_unexpandable() -> None:
    mime = load_definitions().value_set("http://hl7.org/fhir/ValueSet/mimetypes")
    assert mime is not None
    assert not mime.expandable


def test_questionnaire_nested_item_is_a_content_reference() -> None:
    structure = load_definitions().structure("Questionnaire")
    assert structure is not None
    (item,) = [e for e in structure.elements if e.path == "Questionnaire.item.item"]
    assert item.content_reference == "#Questionnaire.item"


def test_reference_targets_and_choice_types_are_kept() -> None:
    structure = load_definitions().structure("Observation")
    assert structure is not None
    by_path = {e.path: e for e in structure.elements}
    assert "Patient" in by_path["Observation.subject"].types[0].target_types
    assert by_path["Observation.value[x]"].is_choice
    assert "Quantity" in {t.code for t in by_path["Observation.value[x]"].types}
    assert by_path["Observation.status"].min == 1
    assert by_path["Observation.component"].max is None


def test_resource_id_is_typed_id() -> None:
    structure = load_definitions().structure("Patient")
    assert structure is not None
    (id_element,) = [e for e in structure.elements if e.path == "Patient.id"]
    assert id_element.types[0].code == "id"


def test_primitive_regexes_come_from_the_spec() -> None:
    regex = load_definitions().primitive_regex
    assert regex["id"] == "[A-Za-z0-9\\-\\.]{1,64}"
    assert set(regex) >= {"date", "dateTime", "instant", "time", "code", "decimal"}


def test_tables_are_small_and_documented() -> None:
    data = resources.files("carechart.fhir.definitions").joinpath("data")
    total = sum(len(f.read_bytes()) for f in data.iterdir())
    assert total < 3_000_000
    source = data.joinpath("SOURCE.md").read_text(encoding="utf-8")
    assert "hl7.fhir.r4.examples" in source
    assert "CC0" in source
    raw = json.loads(gzip.decompress(data.joinpath("structure.json.gz").read_bytes()))
    assert "Patient" in raw["types"]
