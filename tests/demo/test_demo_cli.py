"""``carechart demo load``: the accounts table is printed once, and nothing about a patient."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from carechart.config import get_settings
from carechart.context import AppContext
from carechart.demo.cli import demo_app, first_run
from carechart.demo.clinic import email_domain, patient_chart, plan_clinic

# Mounted as carechart.cli mounts it: `carechart demo load ...`.
app = typer.Typer()
app.add_typer(demo_app, name="demo")


@pytest.fixture
def cli_env(
    ctx: AppContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AppContext]:
    """The command sees the test's database, master key and tenant."""
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


def test_demo_load_prints_each_one_time_password_once_and_no_patient_data(
    cli_env: AppContext,
) -> None:
    result = CliRunner().invoke(app, ["demo", "load", "--patients", "6", "--seed", "41"])
    assert result.exit_code == 0, result.output
    domain = email_domain(41, cli_env.settings.default_tenant)
    rows = re.findall(
        rf"([a-z.]+@{re.escape(domain)})\s*│\s*([a-z_]+)\s*│\s*([A-Za-z0-9_-]{{20,}})",
        result.stdout,
    )
    assert len(rows) == 9  # 4 physicians, a nurse, front desk, billing, lab, auditor
    assert {role for _, role, _ in rows} == {
        "physician",
        "nurse",
        "front_desk",
        "billing",
        "lab_technician",
        "auditor",
    }
    for _, _, password in rows:
        assert result.output.count(password) == 1
    assert "must be changed at first sign-in" in result.stdout
    assert "Patient" in result.stderr
    assert "6 patients" in result.stderr
    clinic = plan_clinic(41, 6)
    for index in range(6):
        patient = patient_chart(clinic, index)[0][2]
        assert patient["identifier"][0]["value"] not in result.output
        assert patient["birthDate"] not in result.output
        assert patient["telecom"][0]["value"] not in result.output


def test_demo_load_refuses_a_seed_already_loaded(cli_env: AppContext) -> None:
    first = CliRunner().invoke(app, ["demo", "load", "--patients", "1", "--seed", "3"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["demo", "load", "--patients", "1", "--seed", "3"])
    assert again.exit_code == 1
    assert "already loaded" in again.output


def test_demo_load_rejects_a_bad_date(cli_env: AppContext) -> None:
    result = CliRunner().invoke(app, ["demo", "load", "--as-of", "yesterday"])
    assert result.exit_code == 2


def test_serve_first_run_prints_the_accounts_once(
    ctx: AppContext, capsys: pytest.CaptureFixture[str]
) -> None:
    first_run(ctx)
    printed = capsys.readouterr().out
    assert "Demo staff accounts" in printed
    assert "must be changed at first sign-in" in printed
    assert printed.count("@seed1.") == 9
    first_run(ctx)
    assert capsys.readouterr().out == ""
