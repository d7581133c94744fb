"""Fixtures of the SMART tests: the SMART tables, the SMART routers mounted on the application
(what the lead adds to ``create_app``), a small clinic and an administrator."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient
from tests.auth.identity import SignedInAdmin, admin_with_mfa
from tests.auth.smart.smart_kit import Clinic, mount_smart, seed_clinic

from carechart.app import create_app
from carechart.auth.config import AuthComponents, install
from carechart.context import AppContext
from carechart.db.schema import metadata
from carechart.db.smart_schema import SMART_TABLES


@pytest.fixture(scope="session")
def smart_engine(engine: Engine) -> Engine:
    # Until the migration is regenerated with these tables; create_all is idempotent.
    metadata.create_all(engine, tables=list(SMART_TABLES))
    return engine


@pytest.fixture
def app(smart_engine: Engine, ctx: AppContext, auth_parts: AuthComponents) -> FastAPI:
    application = mount_smart(create_app(ctx.settings, ctx))
    install(application, auth_parts)
    return application


@pytest.fixture
def admin(anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents) -> SignedInAdmin:
    return admin_with_mfa(anonymous, ctx, auth_parts)


@pytest.fixture
def clinic(
    client: TestClient, anonymous: TestClient, ctx: AppContext, auth_parts: AuthComponents
) -> Clinic:
    """Patients p1, p2 (Dr A's) and p3 (Dr B's); a physician and a nurse who are Dr A, a
    patient user who is p1; Observations for each patient."""
    return seed_clinic(client, ctx, auth_parts)
