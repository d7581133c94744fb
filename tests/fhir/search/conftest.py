"""Fixtures for the search engine tests, on SQLite and on PostgreSQL.

Self-contained: the tables come from ``metadata.create_all`` (resource tables plus the
search-index tables) in a database of their own (a temporary SQLite file; on PostgreSQL a
``carechart_search_<worker>`` database next to ``CARECHART_TEST_POSTGRES_URL``), so these
tests neither need nor disturb the migrated test databases. Tests isolate by tenant.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from carechart.crypto.keys import KeyRing, MasterKey
from carechart.db import search_schema
from carechart.db.engine import make_engine
from carechart.db.schema import resource
from carechart.fhir.search import index_resource

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/carechart_test"


def _postgres_url() -> str | None:
    url = sa.make_url(os.environ.get("CARECHART_TEST_POSTGRES_URL", DEFAULT_PG))
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    name = f"carechart_search_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    try:
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if not found:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except sa.exc.OperationalError:
        if os.environ.get("CARECHART_REQUIRE_POSTGRES"):
            raise
        return None
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path_factory.mktemp('search') / 'search.db'}")
    else:
        url = _postgres_url()
        if url is None:
            pytest.skip("PostgreSQL is not reachable")
        eng = make_engine(url)
    search_schema.metadata.drop_all(eng)
    search_schema.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def keyring(engine: Engine) -> KeyRing:
    return KeyRing(MasterKey.from_bytes(os.urandom(32)), engine)


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
