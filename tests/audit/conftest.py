"""Fixtures for the audit tests: the audit table on the shared engine, a key ring, and the
auditor-facing routers mounted on the application with signed-in staff of each role."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from tests.auth.identity import (
    MovableClock,
    admin_with_mfa,
    bearer,
    create_user,
    light_components,
    login,
)

from carechart.app import create_app
from carechart.audit.chain import AuditRecord, StoredEvent, append, stored_events
from carechart.audit.endpoints import router as audit_router
from carechart.audit.fhir import fhir_router
from carechart.auth.config import AuthComponents, install
from carechart.auth.principal import Role
from carechart.context import AppContext
from carechart.crypto.keys import KeyRing, MasterKey
from carechart.db.auth_schema import AUTH_TABLES, audit_event
from carechart.db.engine import unit_of_work
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


# --- the auditor-facing routers, mounted the way the lead will mount them -----------------


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    role: Role
    headers: dict[str, str]


def mount_audit(app: FastAPI, parts: AuthComponents) -> FastAPI:
    # create_app already mounts the identity routers; the tests bring lighter hashing.
    install(app, parts)
    app.include_router(audit_router)
    # What create_app must do too: include the AuditEvent routes before the generic
    # /fhir/{type}/... routes, which would otherwise answer for AuditEvent.
    existing = len(app.router.routes)
    app.include_router(fhir_router)
    added = app.router.routes[existing:]
    app.router.routes[:] = added + app.router.routes[:existing]
    return app


@pytest.fixture
def auth_parts(master_key: MasterKey) -> AuthComponents:
    return light_components(master_key, MovableClock())


@pytest.fixture
def audit_client(
    audit_engine: Engine, ctx: AppContext, auth_parts: AuthComponents
) -> Iterator[TestClient]:
    metadata.create_all(audit_engine, tables=list(AUTH_TABLES))
    app = mount_audit(create_app(ctx.settings, ctx), auth_parts)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def sign_in(
    audit_client: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> Callable[[Role], SignedIn]:
    """A full session of a new account of the role (admins pass TOTP first)."""

    def signed_in(role: Role) -> SignedIn:
        if role is Role.admin:
            admin = admin_with_mfa(audit_client, ctx, auth_parts)
            return SignedIn(admin.user.id, role, bearer(admin.access_token))
        patient_id = "pat-self" if role is Role.patient else None
        user, password = create_user(ctx, auth_parts, role=role, patient_id=patient_id)
        answer = login(audit_client, user.email, password)
        assert answer.status_code == 200, answer.text
        return SignedIn(user.id, role, bearer(answer.json()["access_token"]))

    return signed_in


@pytest.fixture
def auditor(sign_in: Callable[[Role], SignedIn]) -> SignedIn:
    return sign_in(Role.auditor)


Seed = Callable[[Sequence[tuple[datetime, AuditRecord]]], list[StoredEvent]]


@pytest.fixture
def seed(audit_engine: Engine, keyring: KeyRing, tenant: str) -> Seed:
    """Append (recorded_at, record) pairs to the test tenant's chain, in order."""

    def write(items: Sequence[tuple[datetime, AuditRecord]]) -> list[StoredEvent]:
        with unit_of_work(audit_engine, write=True) as conn:
            return [
                append(conn, keyring, tenant=tenant, record=record, now=at) for at, record in items
            ]

    return write


@pytest.fixture
def trail(audit_engine: Engine, tenant: str) -> Callable[[], list[StoredEvent]]:
    """The test tenant's whole chain, as stored."""

    def read() -> list[StoredEvent]:
        with unit_of_work(audit_engine, write=False) as conn:
            return list(stored_events(conn, tenant))

    return read
