"""Index extraction per parameter type (search.html §3.1.1.5), and the Patient compartment."""

from __future__ import annotations

from typing import Any

from carechart.db.search_schema import FLOAT_END, HIGH_END
from carechart.fhir.search import compartment_patients
from carechart.fhir.search.extract import extract, plan_for
from carechart.fhir.search.normalize import normalize_text, parse_date, soundex


def rows_of(resource: dict[str, Any], kind: str, code: str) -> list[dict[str, Any]]:
    rows, _blind = extract(resource["resourceType"], resource)
    return [
        {k: v for k, v in r.items() if k not in ("code", "grp")}
        for r in rows.get(kind, [])
        if r["code"] == code
    ]


def ms(text: str) -> int:
    parsed = parse_date(text)
    assert parsed is not None
    return parsed.low


def test_string_rows_from_address_parts_are_normalised() -> None:
    org = {
        "resourceType": "Organization",
        "name": "Hôpital Saint-Éloi",
        "address": [{"line": ["1 Rue"], "city": "Montpellier", "postalCode": "34000"}],
    }
    assert rows_of(org, "string", "name") == [
        {"value_norm": "hopital saint-eloi", "value_exact": "Hôpital Saint-Éloi"}
    ]
    assert {r["value_norm"] for r in rows_of(org, "string", "address")} == {
        "1 rue",
        "montpellier",
        "34000",
    }


def test_token_rows_from_codeable_concept_identifier_and_boolean() -> None:
    obs = {
        "resourceType": "Observation",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hb"}],
            "text": "Hémoglobine",
        },
        "identifier": [
            {
                "system": "urn:x",
                "value": "A1",
                "type": {"coding": [{"system": "urn:t", "code": "MR"}]},
            }
        ],
    }
    code_rows = rows_of(obs, "token", "code")
    assert {
        "system": "http://loinc.org",
        "value": "718-7",
        "text_norm": "hb",
        "type_system": None,
        "type_code": None,
    } in code_rows
    assert any(r["value"] is None and r["text_norm"] == "hemoglobine" for r in code_rows)
    ident = rows_of(obs, "token", "identifier")
    assert ident == [
        {
            "system": "urn:x",
            "value": "A1",
            "text_norm": None,
            "type_system": "urn:t",
            "type_code": "MR",
        }
    ]
    org = {"resourceType": "Organization", "active": False}
    assert rows_of(org, "token", "active")[0]["value"] == "false"


def test_date_rows_are_ranges_by_precision_and_zone() -> None:
    day = rows_of(
        {"resourceType": "Observation", "effectiveDateTime": "2020-02-29"}, "date", "date"
    )
    assert day == [{"low": ms("2020-02-29T00:00:00Z"), "high": ms("2020-03-01T00:00:00Z") - 1}]
    zoned = rows_of(
        {"resourceType": "Observation", "effectiveDateTime": "2020-01-01T10:00:00+02:00"},
        "date",
        "date",
    )
    assert zoned == [{"low": ms("2020-01-01T08:00:00Z"), "high": ms("2020-01-01T08:00:00Z") + 999}]
    period = rows_of(
        {"resourceType": "Observation", "effectivePeriod": {"start": "2020-01"}}, "date", "date"
    )
    assert period == [{"low": ms("2020-01-01"), "high": HIGH_END}]


def test_number_and_quantity_rows() -> None:
    risk = {
        "resourceType": "RiskAssessment",
        "prediction": [{"probabilityDecimal": 0.25}, {"probabilityRange": {"low": {"value": 1}}}],
    }
    assert rows_of(risk, "number", "probability") == [
        {"low": 0.25, "high": 0.25},
        {"low": 1.0, "high": FLOAT_END},
    ]
    obs = {
        "resourceType": "Observation",
        "valueQuantity": {
            "value": 5.4,
            "comparator": "<",
            "unit": "mg",
            "system": "http://unitsofmeasure.org",
            "code": "mg",
        },
    }
    assert rows_of(obs, "quantity", "value-quantity") == [
        {
            "low": -FLOAT_END,
            "high": 5.4,
            "system": "http://unitsofmeasure.org",
            "unit_code": "mg",
            "unit": "mg",
        }
    ]


def test_reference_and_uri_rows() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1/_history/3"},
        "performer": [{"reference": "http://other/fhir/Practitioner/7"}, {"reference": "#c1"}],
    }
    assert rows_of(obs, "reference", "subject") == [
        {"target_type": "Patient", "target_id": "p1", "url": None}
    ]
    assert rows_of(obs, "reference", "performer") == [
        {"target_type": "Practitioner", "target_id": "7", "url": "http://other/fhir/Practitioner/7"}
    ]
    vs = {"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/a"}
    assert rows_of(vs, "uri", "url") == [{"uri": "http://example.org/fhir/ValueSet/a"}]


def test_phi_parameters_yield_blind_keys_not_rows() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Nuñez", "given": ["Ana"]}],
        "birthDate": "1980-07-02",
        "telecom": [{"system": "phone", "value": "+1 (555) 010-9999"}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"}],
        "gender": "female",
    }
    rows, blind = extract("Patient", patient)
    assert {r["code"] for kind in rows.values() for r in kind} >= {"gender", "_lastUpdated"} - {
        "_lastUpdated"
    }
    assert not any(r["code"] in blind for kind in rows.values() for r in kind)
    assert {"p:n", "p:nu", "p:nunez", "x:Nuñez"} <= blind["family"]
    assert blind["birthdate"] == {"d:1980", "d:1980-07", "d:1980-07-02"}
    assert "v:+15550109999" in blind["phone"]
    assert "sv:http://hl7.org/fhir/sid/us-ssn|123-45-6789" in blind["identifier"]
    assert "s:" + soundex("Nunez") in blind["phonetic"]
    assert plan_for("Patient")["family"].blind
    assert not plan_for("Patient")["gender"].blind


def test_normalisation_and_soundex() -> None:
    assert normalize_text("  ÉRDŐS   Pál ") == "erdos pal"
    assert soundex("Robert") == soundex("Rupert") == "r163"
    assert soundex("Ashcraft") == "a261"


def test_compartment_patients() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1"},
        "performer": [
            {"reference": "Patient/p2"},
            {"reference": "Practitioner/x"},
            {"reference": "http://x/Patient/9"},
        ],
    }
    assert compartment_patients(obs) == ["p1", "p2"]
    patient = {
        "resourceType": "Patient",
        "id": "me",
        "link": [{"other": {"reference": "Patient/other"}}],
    }
    assert compartment_patients(patient) == ["me", "other"]
    assert compartment_patients({"resourceType": "Organization", "id": "o"}) == []
