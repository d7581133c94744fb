"""``carechart import`` and ``carechart export`` on the command line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from tests.conftest import SHARED_DATA
from typer.testing import CliRunner

from carechart.config import get_settings
from carechart.context import AppContext
from carechart.transfer.cli import export_command, import_command

# Mounted as carechart.cli mounts them: `carechart import ...`, `carechart export ...`.
app = typer.Typer()
app.command("import")(import_command)
app.command("export")(export_command)

SYNTHEA_FILE = sorted((SHARED_DATA / "synthea").glob("*.json"))[0]


@pytest.fixture
def cli_env(
    ctx: AppContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AppContext]:
    monkeypatch.setenv("CARECHART_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(
        "CARECHART_DATABASE_URL", ctx.engine.url.render_as_string(hide_password=False)
    )
    assert ctx.settings.master_key is not None
    monkeypatch.setenv("CARECHART_MASTER_KEY", ctx.settings.master_key)
    monkeypatch.setenv("CARECHART_DEFAULT_TENANT", ctx.settings.default_tenant)
    get_settings.cache_clear()
    yield ctx
    get_settings.cache_clear()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """One Synthea patient and a file that is not a Bundle of any importable kind."""
    folder = tmp_path / "source"
    folder.mkdir()
    shutil.copy(SYNTHEA_FILE, folder / SYNTHEA_FILE.name)
    (folder / "zz_broken.json").write_text('{"resourceType": "Bundle", "type": "document"}')
    return folder


def test_import_prints_counts_and_rejections_without_file_names(
    cli_env: AppContext, source: Path
) -> None:
    result = CliRunner().invoke(app, ["import", str(source)])
    assert result.exit_code == 1, result.output  # something was rejected
    assert "Imported" in result.stderr
    assert "Patient" in result.stderr
    assert "file 2 (sha256" in result.stderr
    assert "document" in result.stderr
    # Synthea names its files after the patient: the console does not repeat them.
    patient_name = SYNTHEA_FILE.name.split("_")[1]
    assert patient_name not in result.output
    assert "zz_broken" not in result.output


def test_import_names_files_when_asked(cli_env: AppContext, source: Path) -> None:
    (source / SYNTHEA_FILE.name).unlink()
    result = CliRunner().invoke(app, ["import", str(source), "--show-names"])
    assert result.exit_code == 1
    assert "zz_broken.json" in result.stderr


def test_import_of_a_missing_path_exits_2(cli_env: AppContext, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["import", str(tmp_path / "nowhere")])
    assert result.exit_code == 2


def test_export_then_verify_then_a_flipped_byte_is_named(
    cli_env: AppContext, source: Path, tmp_path: Path
) -> None:
    (source / "zz_broken.json").unlink()
    assert CliRunner().invoke(app, ["import", str(source)]).exit_code == 0
    out = tmp_path / "export"
    exported = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "Patient.ndjson" in exported.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {item["url"] for item in manifest["output"]} >= {"Patient.ndjson", "Encounter.ndjson"}
    verified = CliRunner().invoke(app, ["export", "--verify", str(out)])
    assert verified.exit_code == 0, verified.output
    assert "export verifies" in verified.stderr
    path = out / "Encounter.ndjson"
    data = bytearray(path.read_bytes())
    data[10] ^= 0x20
    path.write_bytes(bytes(data))
    broken = CliRunner().invoke(app, ["export", "--verify", str(out)])
    assert broken.exit_code == 1
    assert "Encounter.ndjson: SHA-256 does not match the manifest" in broken.stderr


def test_export_of_chosen_types(cli_env: AppContext, source: Path, tmp_path: Path) -> None:
    (source / "zz_broken.json").unlink()
    CliRunner().invoke(app, ["import", str(source)])
    out = tmp_path / "export"
    result = CliRunner().invoke(
        app, ["export", "--out", str(out), "--type", "Patient", "--type", "Condition"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.ndjson")) == ["Condition.ndjson", "Patient.ndjson"]
    unknown = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "x"), "--type", "Unicorn"])
    assert unknown.exit_code == 2


def test_export_needs_exactly_one_of_out_and_verify(cli_env: AppContext, tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["export"]).exit_code == 2
    both = ["export", "--out", str(tmp_path / "a"), "--verify", str(tmp_path)]
    assert CliRunner().invoke(app, both).exit_code == 2
