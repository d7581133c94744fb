"""Fixtures for the audit tests: the audit table on the shared engine, a key ring."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine

from carechart.crypto.keys import KeyRing, MasterKey
from carechart.db.auth_schema import audit_event
from carechart.db.schema import metadata


@pytest.fixture(scope="session")
def audit_engine(engine: Engine) -> Engine:
    # Until the initial migration is regenerated with these tables, create them here;
    # create_all is idempotent.
    metadata.create_all(engine, tables=[audit_event])
    return engine


@pytest.fixture
def keyring(audit_engine: Engine, master_key: MasterKey, tenant: str) -> KeyRing:
    ring = KeyRing(master_key, audit_engine)
    # The tenant key is created in its own transaction, before any unit of work opens
    # (SQLite has one writer).
    ring.active(tenant)
    return ring


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
