"""Shared fixtures: every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``CARECHART_TEST_POSTGRES_URL`` (default: the local server); each
xdist worker gets its own database. When PostgreSQL is unreachable its tests are skipped,
unless ``CARECHART_REQUIRE_POSTGRES`` is set (CI), where that is an error.
Isolation between tests is by tenant: each test writes under a fresh tenant id, which is
exactly the isolation the product relies on.
"""

from __future__ import annotations

import base64
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import FastAPI  # noqa: E402

from carechart.app import create_app  # noqa: E402
from carechart.auth.config import AuthComponents, install  # noqa: E402
from carechart.config import Settings  # noqa: E402
from carechart.context import AppContext  # noqa: E402
from carechart.crypto.keys import KeyRing, MasterKey  # noqa: E402
from carechart.db.engine import make_engine  # noqa: E402
from carechart.db.migrate import upgrade  # noqa: E402

DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
SHARED_DATA = ROOT.parent / "shared" / "data"


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def postgres_url() -> str | None:
    """URL of this worker's test database, created on first use; None when unreachable."""
    admin_url = sa.make_url(os.environ.get("CARECHART_TEST_POSTGRES_URL", DEFAULT_PG))
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    # One database per worker of this run: concurrent runs on the same server (a developer's
    # and a helper's) must not reset each other's schema.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:8]
    name = f"carechart_test_{run}_{_worker()}"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except sa.exc.OperationalError:
        if os.environ.get("CARECHART_REQUIRE_POSTGRES"):
            raise
        return None
    return admin_url.set(database=name).render_as_string(hide_password=False)


def _reset_postgres(url: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A migrated database on each engine, shared by the session (tests isolate by tenant)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "carechart.db"
        eng = make_engine(f"sqlite:///{path}")
    else:
        url = postgres_url()
        if url is None:
            pytest.skip("PostgreSQL is not reachable")
        _reset_postgres(url)
        eng = make_engine(url)
    upgrade(eng)
    yield eng
    eng.dispose()
    if request.param == "postgresql":
        _drop_database(eng.url)


def _drop_database(url: sa.URL) -> None:
    admin = sa.create_engine(
        url.set(
            database=sa.make_url(os.environ.get("CARECHART_TEST_POSTGRES_URL", DEFAULT_PG)).database
        ),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def master_key() -> MasterKey:
    return MasterKey.from_bytes(os.urandom(32))


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(tmp_path: Path, tenant: str, master_key: MasterKey) -> Settings:
    return Settings(
        data_dir=tmp_path,
        default_tenant=tenant,
        master_key=base64.b64encode(master_key.key).decode(),
        max_body_bytes=5_000_000,
        # Rate limits have their own tests (tests/ratelimit); elsewhere one test client makes
        # more requests per minute than any person would.
        rate_limit_per_ip=0,
        rate_limit_per_user=0,
        rate_limit_sensitive=0,
    )


@pytest.fixture
def ctx(engine: Engine, settings: Settings, master_key: MasterKey) -> AppContext:
    return AppContext(settings=settings, engine=engine, keyring=KeyRing(master_key, engine))


@pytest.fixture
def auth_parts(master_key: MasterKey) -> AuthComponents:
    """The identity service's parts with light password hashing and a movable clock."""
    from tests.auth.identity import MovableClock, light_components

    return light_components(master_key, MovableClock())


@pytest.fixture
def app(ctx: AppContext, auth_parts: AuthComponents) -> FastAPI:
    application = create_app(ctx.settings, ctx)
    install(application, auth_parts)
    return application


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    """A client without credentials."""
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def client(app: FastAPI, ctx: AppContext, auth_parts: AuthComponents) -> Iterator[TestClient]:
    """A backend service with every ``system/`` scope: the storage and API tests' caller.
    What narrower callers may do is the access tests' subject (tests/access)."""
    from tests.access.personas import bearer, system_token

    token = system_token(ctx, auth_parts)
    with TestClient(app, raise_server_exceptions=False, headers=bearer(token)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def fhir_package() -> Path:
    """The official R4 package (pinned and checksum-verified by tools/fhir_package.py)."""
    from tools.fhir_package import ensure_package

    return ensure_package()
