"""The Alembic migrations build exactly the schema the code declares, on both engines."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

import carechart.db.auth_schema  # registers the identity and audit tables
import carechart.db.search_schema  # noqa: F401  (registers the search-index tables)
from carechart.db.migrate import upgrade
from carechart.db.schema import metadata


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)


def test_migrated_schema_matches_the_declared_tables(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == [], "a table changed without a migration: " + repr(differences)[:2000]


def test_migrations_install_the_append_only_audit_triggers(engine: Engine) -> None:
    import sqlalchemy as sa

    query = (
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_event'"
        if engine.dialect.name == "sqlite"
        else "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_event'::regclass AND NOT tgisinternal"
    )
    with engine.connect() as conn:
        names = {row[0] for row in conn.execute(sa.text(query))}
    expected = (
        {"audit_event_no_update", "audit_event_no_delete"}
        if engine.dialect.name == "sqlite"
        else {"audit_event_no_update_delete", "audit_event_no_truncate"}
    )
    assert names == expected
