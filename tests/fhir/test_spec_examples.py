"""The specification's own example resources round-trip exactly (the foundation's "done when")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from carechart import jsonio

FHIR = {"Content-Type": "application/fhir+json"}
TYPES = (
    "Patient",
    "Observation",
    "MedicationRequest",
    "Encounter",
    "AllergyIntolerance",
    "Condition",
)
PACKAGE = Path.home() / ".cache" / "carechart" / "hl7.fhir.r4.examples-4.0.1" / "package"


# Official examples that break the R4 definitions themselves (found by the validator's own
# test over every package file): they must be refused, with nothing written.
INVALID_OFFICIAL = {
    "MedicationRequest-medrx0301": "dispenseRequest.performer references a Practitioner; only Organization is allowed",
    "Observation-clinical-gender": "performer references an Encounter, which is not an allowed target",
}


def _example_files() -> list[Path]:
    if not PACKAGE.exists():  # `make test` fetches it first (make fhir-package)
        from tools.fhir_package import ensure_package

        ensure_package()
    return sorted(p for t in TYPES for p in PACKAGE.glob(f"{t}-*.json"))


def _without_meta_times(resource: dict[str, Any]) -> dict[str, Any]:
    copy = dict(resource)
    meta = dict(copy.pop("meta", {}) or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        copy["meta"] = meta
    return copy


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: p.stem)
def test_spec_example_round_trips_exactly(client: TestClient, path: Path) -> None:
    original = jsonio.loads(path.read_bytes())
    response = client.put(
        f"/fhir/{original['resourceType']}/{original['id']}",
        content=path.read_bytes(),
        headers=FHIR,
    )
    if path.stem in INVALID_OFFICIAL:
        assert response.status_code == 400, response.text
        assert client.get(f"/fhir/{original['resourceType']}/{original['id']}").status_code == 404
        return
    assert response.status_code == 201, response.text
    served = jsonio.loads(client.get(f"/fhir/{original['resourceType']}/{original['id']}").content)
    # Same content, same decimal text: compare the canonical serialisation of both.
    assert jsonio.dumps(_without_meta_times(served)) == jsonio.dumps(_without_meta_times(original))


def _transaction_examples() -> list[Path]:
    _example_files()
    found = []
    for path in sorted(PACKAGE.glob("Bundle-*.json")):
        body = json.loads(path.read_text())
        if body.get("type") == "transaction":
            found.append(path)
    return found


@pytest.mark.parametrize("path", _transaction_examples(), ids=lambda p: p.stem)
def test_spec_transaction_examples_are_processed(client: TestClient, path: Path) -> None:
    response = client.post("/fhir", content=path.read_bytes(), headers=FHIR)
    # The spec's transaction examples update and delete resources this server may not hold;
    # what must never happen is a 5xx or a partial write.
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        assert response.json()["type"] == "transaction-response"
    else:
        assert client.get("/fhir/_history").json()["entry"] == []
