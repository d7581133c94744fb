"""Fixtures for the identity tests: the auth tables on the shared engine, a key ring, and the
identity routers mounted on the application with light hashing and a movable clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from tests.auth.identity import MovableClock, light_components

from carechart.app import create_app
from carechart.auth.config import AuthComponents, install
from carechart.auth.endpoints import router as auth_router
from carechart.auth.endpoints import well_known_router
from carechart.context import AppContext
from carechart.crypto.keys import KeyRing, MasterKey
from carechart.db.auth_schema import AUTH_TABLES
from carechart.db.schema import metadata


@pytest.fixture(scope="session")
def auth_engine(engine: Engine) -> Engine:
    # Until the initial migration is regenerated with these tables, create them here;
    # create_all is idempotent.
    metadata.create_all(engine, tables=list(AUTH_TABLES))
    return engine


@pytest.fixture
def keyring(auth_engine: Engine, master_key: MasterKey, tenant: str) -> KeyRing:
    ring = KeyRing(master_key, auth_engine)
    # The tenant key is created in its own transaction, before any unit of work opens
    # (SQLite has one writer).
    ring.active(tenant)
    return ring


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- the HTTP identity service -------------------------------------------------------------


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def auth_parts(master_key: MasterKey, clock: MovableClock) -> AuthComponents:
    return light_components(master_key, clock)


def mount_identity(app: FastAPI, parts: AuthComponents) -> FastAPI:
    # What the lead will add to create_app: the two routers.
    app.include_router(auth_router)
    app.include_router(well_known_router)
    install(app, parts)
    return app


@pytest.fixture
def auth_client(
    auth_engine: Engine, ctx: AppContext, auth_parts: AuthComponents
) -> Iterator[TestClient]:
    app = mount_identity(create_app(ctx.settings, ctx), auth_parts)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
