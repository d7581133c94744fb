"""The database role the application should run as on PostgreSQL (SECURITY C3).

Triggers refuse UPDATE, DELETE and TRUNCATE on ``audit_event``, but the owner of a table can
disable its triggers. The application therefore runs as a role that owns nothing: it may
read and write the data tables, only SELECT and INSERT the audit trail, and cannot ALTER
anything. Migrations run as the owner (the URL an operator uses for ``carechart db
upgrade``); the server runs with this role in ``CARECHART_DATABASE_URL``.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from carechart.db.auth_schema import audit_event
from carechart.db.schema import metadata
from carechart.errors import BadRequest

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def grant_statements(role: str) -> list[str]:
    """The GRANTs of the application role, for every declared table (identifiers are checked
    and quoted: they cannot be bound as parameters)."""
    if not _ROLE_NAME.fullmatch(role):
        raise BadRequest("a role name is lower-case letters, digits and _")
    statements = [f'GRANT USAGE ON SCHEMA public TO "{role}"']
    for table in metadata.sorted_tables:
        if table.name == audit_event.name:
            statements.append(f'GRANT SELECT, INSERT ON "{table.name}" TO "{role}"')
        else:
            statements.append(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table.name}" TO "{role}"')
    statements.append(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    statements.append(f'REVOKE UPDATE, DELETE, TRUNCATE ON "{audit_event.name}" FROM PUBLIC')
    return statements


def create_app_role(engine: Engine, role: str, password: str | None = None) -> None:
    """Create (or re-grant) the application's login role. PostgreSQL only."""
    statements = grant_statements(role)
    if engine.dialect.name != "postgresql":
        raise BadRequest("application roles are a PostgreSQL feature; SQLite has no users")
    with engine.begin() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).first()
        if exists is None:
            conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN NOINHERIT'))
        if password is not None:
            # The password is a literal PostgreSQL cannot take as a parameter in DDL.
            conn.execute(sa.text(f'ALTER ROLE "{role}" PASSWORD {_literal(conn, password)}'))
        for statement in statements:
            conn.execute(sa.text(statement))


def _literal(conn: sa.Connection, value: str) -> str:
    return str(
        sa.literal(value).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    )
