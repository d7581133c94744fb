"""On PostgreSQL the application runs as a role that cannot rewrite the audit trail, not even
by disabling its triggers (SECURITY C3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from carechart.db.roles import create_app_role
from carechart.errors import BadRequest


@pytest.fixture
def app_role(engine: Engine) -> Iterator[str]:
    if engine.dialect.name != "postgresql":
        pytest.skip("database roles are a PostgreSQL feature")
    role = f"carechart_app_{uuid.uuid4().hex[:8]}"
    create_app_role(engine, role)
    yield role
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        conn.execute(sa.text(f'DROP ROLE "{role}"'))


def _as(engine: Engine, role: str, statement: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f'SET LOCAL ROLE "{role}"'))
        conn.execute(sa.text(statement))


def test_the_app_role_writes_data_and_appends_audit_but_cannot_rewrite_it(
    engine: Engine, app_role: str
) -> None:
    _as(engine, app_role, "SELECT count(*) FROM resource")
    _as(engine, app_role, "SELECT count(*) FROM audit_event")
    for statement in (
        "UPDATE audit_event SET outcome = 'success'",
        "DELETE FROM audit_event",
        "TRUNCATE audit_event",
        "ALTER TABLE audit_event DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_event_no_update_delete ON audit_event",
    ):
        with pytest.raises(sa.exc.ProgrammingError) as refused:
            _as(engine, app_role, statement)
        assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value)


def test_role_names_are_checked_before_any_sql(engine: Engine) -> None:
    with pytest.raises(BadRequest):
        create_app_role(engine, 'x"; DROP TABLE resource; --')
