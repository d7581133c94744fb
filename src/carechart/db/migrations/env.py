"""Alembic environment: runs on the engine the application hands over."""

from __future__ import annotations

from alembic import context

import carechart.db.auth_schema
import carechart.db.integration_schema
import carechart.db.search_schema
import carechart.db.smart_schema  # noqa: F401  (SMART authorization codes, launches, jti)
from carechart.db.schema import metadata

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
