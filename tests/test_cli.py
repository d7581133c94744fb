"""The `carechart` command."""

from __future__ import annotations

from typer.testing import CliRunner

from carechart.cli import app


def test_serve_refuses_a_non_loopback_host_until_authentication_exists() -> None:
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "loopback" in result.output


def test_db_upgrade_creates_the_schema(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from carechart.config import get_settings

    monkeypatch.setenv("CARECHART_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["db", "upgrade"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert (tmp_path / "carechart.db").exists()


def test_search_reindex_command_runs(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from carechart.config import get_settings

    monkeypatch.setenv("CARECHART_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["search", "reindex"])
        bad = CliRunner().invoke(app, ["search", "reindex", "--type", "Unicorn"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "re-indexed 0 resources" in result.output
    assert bad.exit_code == 2
