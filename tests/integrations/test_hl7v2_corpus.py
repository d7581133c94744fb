"""Every real message in ../shared/data/hl7v2: parse or Hl7ParseError, an ACK for each,
and concrete FHIR values from a few ORU^R01 files."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from carechart.integrations.hl7v2.errors import Hl7ParseError
from carechart.integrations.hl7v2.inbound import receive
from carechart.integrations.hl7v2.oru import map_oru_r01
from carechart.integrations.hl7v2.parser import parse_message

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "hl7v2"
FILES = sorted(CORPUS.rglob("*.hl7"))
pytestmark = pytest.mark.skipif(not FILES, reason="shared HL7 corpus not present")


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def test_corpus_has_all_132_messages() -> None:
    assert len(FILES) == 132


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_each_file_parses_or_raises_parse_error_and_gets_an_ack(path: Path) -> None:
    data = path.read_bytes()
    try:
        message = parse_message(data)
    except Hl7ParseError:
        message = None
    result = receive(data)
    if message is not None and message.message_type == "ACK":
        assert result.ack is None  # an ACK is never acknowledged (v2.5.1 section 2.9.2)
        return
    assert result.ack is not None
    assert result.ack_code is not None
    ack = parse_message(result.ack)
    assert ack.message_type == "ACK"
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(1) == result.ack_code.value
    if message is not None:
        assert msa.get(2) == message.control_id
        assert ack.version == message.version
    if result.ack_code.value == "AA":
        assert result.bundle is not None
    else:
        assert ack.all("ERR"), "AE/AR must say why in an ERR segment"


def test_corpus_outcome_counts() -> None:
    counts: dict[str, int] = {}
    for path in FILES:
        code = receive(path.read_bytes()).ack_code
        key = code.value if code else "none"
        counts[key] = counts.get(key, 0) + 1
    assert counts == {"AA": 79, "AE": 23, "AR": 29, "none": 1}


def _observations(name: str) -> list[dict[str, Any]]:
    result = map_oru_r01(parse_message((CORPUS / name).read_bytes()))
    return result.resources("Observation")


def _by_loinc(observations: list[dict[str, Any]], loinc: str) -> dict[str, Any]:
    for obs in observations:
        if any(c.get("code") == loinc for c in obs["code"].get("coding", [])):
            return obs
    raise AssertionError(loinc)


def test_oracle_albumin_creatinine_ratio_values_units_and_flags() -> None:
    obs = _observations("Oracle/004_Oracle_ORU_R01.hl7")
    assert len(obs) == 3
    ratio = _by_loinc(obs, "14959-1")
    assert ratio["valueQuantity"] == {"value": Decimal("36"), "unit": "mg/g crea"}
    assert ratio["interpretation"][0]["coding"][0]["code"] == "H"  # the sender's own flag
    assert ratio["referenceRange"][0]["text"] == "<30"
    creatinine = _by_loinc(obs, "2161-8")
    assert creatinine["valueQuantity"]["code"] == "mg/dL"
    assert creatinine["referenceRange"][0]["low"]["value"] == Decimal("28")
    # No sender flag: computed from the 28-217 range.
    assert creatinine["interpretation"][0]["coding"][0]["code"] == "N"
    assert creatinine["status"] == "final"
    assert creatinine["effectiveDateTime"] == "2023-03-17"
    notes = " ".join(n["text"] for n in ratio["note"])
    assert "AMERICAN ESOTERIC LABORATORIES-MEMPHIS" in notes


def test_micro_sign_unit_is_decoded_and_coded_as_ucum() -> None:
    (obs,) = _observations("Test/Automated/008_ORU_R01_micro_character_encoding.hl7")
    assert obs["valueQuantity"]["value"] == Decimal("0.5")
    assert obs["valueQuantity"]["unit"] == "µmol/L"
    assert obs["valueQuantity"]["code"] == "umol/L"
    assert obs["interpretation"][0]["coding"][0]["code"] == "N"


def test_oru_bundle_links_patient_report_observations_and_specimen() -> None:
    result = map_oru_r01(parse_message((CORPUS / "TN/001_TN_ORU_R01_LRI.hl7").read_bytes()))
    bundle = result.bundle
    assert bundle["type"] == "transaction"
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(u.startswith("urn:uuid:") for u in urls)
    (patient_entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patient_entry["request"]["ifNoneExist"].startswith("identifier=")
    reports = result.resources("DiagnosticReport")
    assert reports
    for report in reports:
        assert report["subject"]["reference"] == patient_entry["fullUrl"]
        for ref in report.get("result", []) + report.get("specimen", []):
            assert ref["reference"] in urls
    specimens = result.resources("Specimen")
    assert specimens
    assert specimens[0]["type"]["coding"][0]["code"] == "440500007"
    observations = result.resources("Observation")
    assert all(o["subject"]["reference"] == patient_entry["fullUrl"] for o in observations)


def test_epic_placeholder_birth_date_is_rejected_as_data_type_error() -> None:
    result = receive((CORPUS / "Epic/002_Epic_ORU_R01.hl7").read_bytes())
    assert result.ack_code is not None
    assert result.ack_code.value == "AE"
    assert result.ack is not None
    assert "ERR|PID^1^7^102&Data type error&HL70357" in result.ack
