"""Fixtures for the search engine tests, on the shared migrated SQLite and PostgreSQL
databases (``engine`` and ``master_key`` come from tests/conftest.py). Tests isolate by tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from sqlalchemy.engine import Connection, Engine

from carechart.crypto.keys import KeyRing, MasterKey
from carechart.db.schema import resource
from carechart.fhir.search import index_resource


@pytest.fixture(scope="session")
def keyring(engine: Engine, master_key: MasterKey) -> KeyRing:
    return KeyRing(master_key, engine)


@pytest.fixture
def tenant(keyring: KeyRing) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    # Create the tenant's data key before any test transaction holds the SQLite write lock.
    keyring.active(name)
    return name


@pytest.fixture
def other_tenant(keyring: KeyRing) -> str:
    name = f"o-{uuid.uuid4().hex[:12]}"
    keyring.active(name)
    return name


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    """One unit of work, rolled back after the test (tenants keep tests apart anyway)."""
    with engine.connect() as connection:
        transaction = connection.begin()
        yield connection
        transaction.rollback()


_clock = count()


def store_resource(
    conn: Connection,
    keyring: KeyRing,
    tenant: str,
    body: dict[str, Any],
    *,
    deleted: bool = False,
    last_updated: datetime | None = None,
) -> str:
    """Write a resource row (body bytes are a dummy: search never reads them) and index it."""
    rtype, rid = body["resourceType"], body.get("id") or str(uuid.uuid4())
    when = last_updated or datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=next(_clock))
    body = {**body, "id": rid}
    body.setdefault("meta", {})
    body["meta"] = {**body["meta"], "lastUpdated": when.isoformat().replace("+00:00", "Z")}
    conn.execute(
        resource.insert().values(
            tenant_id=tenant,
            resource_type=rtype,
            id=rid,
            version_id=1,
            last_updated=when,
            deleted=deleted,
            patient_id=None,
            key_version=1,
            body=b"sealed",
        )
    )
    index_resource(conn, keyring, tenant, rtype, rid, None if deleted else body)
    return rid


@pytest.fixture(name="store_resource")
def store_resource_fixture() -> Callable[..., str]:
    return store_resource


@pytest.fixture
def put(conn: Connection, keyring: KeyRing, tenant: str) -> Callable[..., str]:
    def _put(body: dict[str, Any], **kwargs: Any) -> str:
        return store_resource(conn, keyring, tenant, body, **kwargs)

    return _put
