"""supported_parameters: the CapabilityStatement lists exactly what search answers."""

from __future__ import annotations

from carechart.fhir.search import supported_parameters


def test_observation_lists_composites_chainable_references_and_modifiers() -> None:
    params = {p.code: p for p in supported_parameters("Observation")}
    assert params["code-value-quantity"].composite
    assert params["code-value-quantity"].type == "composite"
    assert params["subject"].chainable
    assert "identifier" in params["subject"].modifiers
    assert not params["code"].chainable
    assert "text" in params["code"].modifiers
    assert params["code"].definition == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert "_id" in params
    assert "_lastUpdated" in params
    assert "_text" not in params
    assert "_content" not in params


def test_patient_phi_parameters_are_marked_blind_with_fewer_modifiers() -> None:
    params = {p.code: p for p in supported_parameters("Patient")}
    assert params["family"].blind
    assert "contains" not in params["family"].modifiers
    assert not params["gender"].blind
    assert "near" not in params  # special parameters are not supported
