"""SECURITY A1: no default accounts; the first administrator comes from a command that prints a
one-time password, once."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from tests.auth.identity import bearer, login, new_email, strong_password
from typer.testing import CliRunner

from carechart.auth.cli import create_admin, users_app
from carechart.auth.config import AuthComponents
from carechart.auth.errors import UsernameTaken
from carechart.auth.principal import CHANGE_PASSWORD_SCOPE
from carechart.config import get_settings
from carechart.context import AppContext
from carechart.crypto.keys import MasterKey
from carechart.db.auth_schema import AUTH_TABLES
from carechart.db.engine import make_engine
from carechart.db.migrate import upgrade
from carechart.db.schema import metadata


def test_created_admin_must_change_the_one_time_password_first(
    auth_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> None:
    email = new_email("root")
    created = create_admin(ctx, auth_parts, email=email, full_name="Root Admin")
    assert len(created.one_time_password) >= 12
    first = login(auth_client, email, created.one_time_password).json()
    assert first["scope"] == CHANGE_PASSWORD_SCOPE
    changed = auth_client.post(
        "/api/v1/auth/change-password",
        json={"current_password": created.one_time_password, "new_password": strong_password()},
        headers=bearer(first["access_token"]),
    )
    assert changed.status_code == 200
    # The one-time password is spent.
    assert login(auth_client, email, created.one_time_password).status_code == 401
    with pytest.raises(UsernameTaken):
        create_admin(ctx, auth_parts, email=email.upper(), full_name="Impostor")


def test_create_admin_command_prints_the_password_once_and_refuses_a_taken_email(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, master_key: MasterKey
) -> None:
    monkeypatch.setenv("CARECHART_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CARECHART_MASTER_KEY", base64.b64encode(master_key.key).decode())
    get_settings.cache_clear()
    engine = make_engine(f"sqlite:///{tmp_path / 'carechart.db'}")
    upgrade(engine)
    # Until the initial migration carries user_account.
    metadata.create_all(engine, tables=list(AUTH_TABLES))
    engine.dispose()
    try:
        runner = CliRunner()
        first = runner.invoke(
            users_app, ["create-admin", "--email", "Root@Clinic.example", "--name", "Root"]
        )
        again = runner.invoke(users_app, ["create-admin", "--email", "root@clinic.example"])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    lines = [line for line in first.stdout.splitlines() if line.startswith("password: ")]
    assert len(lines) == 1
    assert len(lines[0].removeprefix("password: ")) >= 12
    assert again.exit_code == 1
    assert "password: " not in again.output
    assert "already exists" in again.output
