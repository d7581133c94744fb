"""Import of Bundles and NDJSON (whole files or nothing, bad lines skipped) and export to
NDJSON with a SHA-256 manifest that detects a changed byte (SECURITY D5)."""

from __future__ import annotations

import json
import shutil
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tests.conftest import SHARED_DATA

from carechart.context import AppContext
from carechart.db.auth_schema import audit_event
from carechart.db.engine import unit_of_work
from carechart.errors import BadRequest
from carechart.transfer import export_tenant, import_path, verify_export

SYNTHEA = SHARED_DATA / "synthea"


def synthea_counts() -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(path.read_text())
        counts.update(entry["resource"]["resourceType"] for entry in bundle["entry"])
    return counts


def audit(ctx: AppContext, tenant: str | None = None) -> list[tuple[str, str, str | None]]:
    t = audit_event
    with unit_of_work(ctx.engine, write=False) as conn:
        rows = conn.execute(
            sa.select(t.c.action, t.c.outcome, t.c.resource_type)
            .where(t.c.tenant_id == (tenant or ctx.settings.default_tenant))
            .order_by(t.c.chain_index)
        ).all()
    return [(row.action, row.outcome, row.resource_type) for row in rows]


def count(ctx: AppContext, resource_type: str, tenant: str | None = None) -> int:
    with ctx.store(write=False, tenant=tenant) as store:
        total = store.search(resource_type, [("_summary", "count")]).total
    assert total is not None
    return total


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Doe"}], "gender": "female", **extra}


def transaction(*resources: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{index:012d}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for index, resource in enumerate(resources)
        ],
    }


def observation(subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


# --- import ---------------------------------------------------------------------------------


def test_the_synthea_bundles_import_whole_with_one_audit_record_each(ctx: AppContext) -> None:
    report = import_path(ctx, SYNTHEA)
    assert report.rejected == []
    assert report.files == 10
    assert report.created == synthea_counts()
    assert count(ctx, "Patient") == 10
    assert count(ctx, "Observation") == synthea_counts()["Observation"]
    imports = [record for record in audit(ctx) if record[0] == "import"]
    assert imports == [("import", "success", None)] * 10
    # References between entries were resolved to the ids the server assigned.
    with ctx.store(write=False) as store:
        found = store.search("Observation", [("_count", "1")])
        body = json.loads(store.read_many("Observation", found.ids)[0].body or b"{}")
        assert store.exists("Patient", body["subject"]["reference"].split("/")[1])


def test_a_malformed_file_is_rejected_whole_with_a_reason_and_the_others_go_in(
    ctx: AppContext, tmp_path: Path
) -> None:
    write_json(tmp_path / "a_good.json", transaction(patient(), patient()))
    bad = transaction(patient(), patient(gender="robot"))
    write_json(tmp_path / "b_bad_entry.json", bad)
    (tmp_path / "c_truncated.json").write_text('{"resourceType": "Bundle", "type": "transac')
    write_json(tmp_path / "d_searchset.json", {**transaction(patient()), "type": "searchset"})
    (tmp_path / "notes.txt").write_text("not FHIR")
    report = import_path(ctx, tmp_path)
    assert report.files == 4
    assert report.ignored == 1
    assert report.created == {"Patient": 2}
    assert count(ctx, "Patient") == 2, "nothing of a rejected file is stored"
    reasons = {r.path.name: r.reason for r in report.rejected}
    assert set(reasons) == {"b_bad_entry.json", "c_truncated.json", "d_searchset.json"}
    assert all(r.line is None for r in report.rejected)
    assert "Bundle.entry[1]" in reasons["b_bad_entry.json"]
    assert "gender" in reasons["b_bad_entry.json"]
    assert "robot" not in reasons["b_bad_entry.json"], "reasons do not echo values"
    assert "malformed JSON" in reasons["c_truncated.json"]
    assert "searchset" in reasons["d_searchset.json"]
    assert [o for a, o, _ in audit(ctx) if a == "import"] == ["success"] + ["failure"] * 3


def test_a_batch_bundle_is_imported_as_one_transaction(ctx: AppContext, tmp_path: Path) -> None:
    write_json(tmp_path / "batch.json", transaction(patient(), patient(gender="x"), kind="batch"))
    report = import_path(ctx, tmp_path)
    assert len(report.rejected) == 1
    assert count(ctx, "Patient") == 0


def test_an_import_neither_deletes_nor_reads(ctx: AppContext, tmp_path: Path) -> None:
    bundle = transaction(patient())
    bundle["entry"].append({"request": {"method": "DELETE", "url": "Patient/abc"}})
    report = import_path(ctx, write_json(tmp_path / "delete.json", bundle))
    assert "POST or PUT" in report.rejected[0].reason
    assert count(ctx, "Patient") == 0


def test_a_collection_keeps_ids_so_references_between_entries_hold(
    ctx: AppContext, tmp_path: Path
) -> None:
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:f2c5b7a4-0d6e-4a7e-9d33-2b1b1c0e0a11",
                "resource": observation("urn:uuid:5d0b5d40-6ad7-4b8e-a1f4-0b7c7f3e4c22"),
            },
            {
                "fullUrl": "urn:uuid:5d0b5d40-6ad7-4b8e-a1f4-0b7c7f3e4c22",
                "resource": patient(id="p-keep"),
            },
            {"resource": observation("Patient/p-keep")},
        ],
    }
    report = import_path(ctx, write_json(tmp_path / "collection.json", collection))
    assert report.rejected == []
    assert report.created == {"Patient": 1, "Observation": 2}
    with ctx.store(write=False) as store:
        assert store.exists("Patient", "p-keep")
        found = store.search("Observation", [("subject", "Patient/p-keep")])
    assert found.total == 2


def test_ndjson_bad_lines_are_skipped_and_reported_and_ids_are_kept(
    ctx: AppContext, tmp_path: Path
) -> None:
    lines = [
        json.dumps(patient(id="n-1")),
        "{not json",
        json.dumps(observation("Patient/n-1")),
        json.dumps(patient(id="n-2", gender="robot")),
        "",
        json.dumps({"resourceType": "Unicorn", "id": "u-1"}),
        json.dumps(patient(id="bad id!")),
        json.dumps(patient(id="n-1", gender="male")),
    ]
    (tmp_path / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    report = import_path(ctx, tmp_path)
    assert report.created == {"Patient": 1, "Observation": 1}
    assert report.updated == {"Patient": 1}, "a later line with the same id is a new version"
    assert [(r.line, r.path.name) for r in report.rejected] == [
        (2, "Patient.ndjson"),
        (4, "Patient.ndjson"),
        (6, "Patient.ndjson"),
        (7, "Patient.ndjson"),
    ]
    reasons = [r.reason for r in report.rejected]
    assert "malformed JSON" in reasons[0]
    assert "gender" in reasons[1]
    assert "Unicorn" in reasons[2]
    assert "not a valid FHIR id" in reasons[3]
    with ctx.store(write=False) as store:
        current = store.read("Patient", "n-1")
    assert current.version_id == 2
    assert json.loads(current.body or b"{}")["gender"] == "male"
    assert [o for a, o, _ in audit(ctx) if a == "import"] == ["success"]


def test_an_ndjson_file_of_only_bad_lines_is_a_failed_import(
    ctx: AppContext, tmp_path: Path
) -> None:
    (tmp_path / "bad.ndjson").write_text("[1]\n{}\n")
    report = import_path(ctx, tmp_path)
    assert [r.line for r in report.rejected] == [1, 2]
    assert [o for a, o, _ in audit(ctx) if a == "import"] == ["failure"]


def test_importing_a_missing_path_is_an_error(ctx: AppContext, tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        import_path(ctx, tmp_path / "nowhere")


# --- export -----------------------------------------------------------------------------


@pytest.fixture
def two_synthea_patients(ctx: AppContext, tmp_path: Path) -> AppContext:
    source = tmp_path / "source"
    source.mkdir()
    for path in sorted(SYNTHEA.glob("*.json"))[:2]:
        shutil.copy(path, source / path.name)
    assert import_path(ctx, source).rejected == []
    return ctx


def test_export_writes_private_ndjson_per_type_and_verifies(
    two_synthea_patients: AppContext, tmp_path: Path
) -> None:
    ctx = two_synthea_patients
    out = tmp_path / "export"
    result = export_tenant(ctx, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{f.resource_type}.ndjson" for f in result.files]
        + ["manifest.json", "manifest.json.sha256"]
    )
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    patients = (out / "Patient.ndjson").read_text().splitlines()
    assert len(patients) == 2
    assert all(json.loads(line)["resourceType"] == "Patient" for line in patients)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {item["type"]: item["count"] for item in manifest["output"]} == {
        f.resource_type: f.count for f in result.files
    }
    assert verify_export(out).ok
    exports = [record for record in audit(ctx) if record[0] == "export"]
    assert sorted(r[2] or "" for r in exports) == sorted(f.resource_type for f in result.files)


@pytest.mark.parametrize("target", ["Observation.ndjson", "manifest.json", "manifest.json.sha256"])
def test_a_changed_byte_fails_verification_naming_the_file(
    two_synthea_patients: AppContext, tmp_path: Path, target: str
) -> None:
    out = tmp_path / "export"
    export_tenant(two_synthea_patients, out)
    path = out / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify_export(out)
    assert not result.ok
    expected = "manifest.json" if target == "manifest.json.sha256" else target
    assert expected in {problem.file for problem in result.problems}


def test_verification_names_missing_and_extra_files(
    two_synthea_patients: AppContext, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    export_tenant(two_synthea_patients, out)
    (out / "Claim.ndjson").unlink()
    (out / "Extra.ndjson").write_text("{}\n")
    problems = {(p.file, p.reason) for p in verify_export(out).problems}
    assert ("Claim.ndjson", "missing") in problems
    assert ("Extra.ndjson", "is not listed in the manifest") in problems


def test_export_of_chosen_types_into_a_new_directory_only(
    two_synthea_patients: AppContext, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    result = export_tenant(two_synthea_patients, out, types=["Patient", "Condition", "Goal"])
    assert [f.resource_type for f in result.files] == ["Condition", "Patient"]
    with pytest.raises(BadRequest, match="not empty"):
        export_tenant(two_synthea_patients, out)
    with pytest.raises(BadRequest, match="not a resource type"):
        export_tenant(two_synthea_patients, tmp_path / "other", types=["Unicorn"])


def test_an_export_imports_into_another_territory_unchanged(
    two_synthea_patients: AppContext, tmp_path: Path
) -> None:
    ctx = two_synthea_patients
    first = export_tenant(ctx, tmp_path / "first")
    copy_tenant = "t-copy-" + ctx.settings.default_tenant[-8:]
    report = import_path(ctx, tmp_path / "first", tenant=copy_tenant)
    assert report.rejected == []
    assert report.created == {f.resource_type: f.count for f in first.files}
    second = export_tenant(ctx, tmp_path / "second", tenant=copy_tenant)
    assert [f.count for f in second.files] == [f.count for f in first.files]

    def without_meta(directory: Path, name: str) -> list[dict[str, Any]]:
        bodies = [json.loads(line) for line in (directory / name).read_text().splitlines()]
        for body in bodies:
            body.pop("meta")
        return bodies

    for exported in first.files:
        assert without_meta(tmp_path / "first", exported.name) == without_meta(
            tmp_path / "second", exported.name
        ), exported.name
