"""Fixtures of the HL7 ingest and event tests: the integration tables on the shared engine,
an HL7 service with an in-process event bus, and the application with the HL7 route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from carechart.app import create_app
from carechart.auth.config import AuthComponents, install
from carechart.context import AppContext
from carechart.db.integration_schema import INTEGRATION_TABLES
from carechart.db.schema import metadata
from carechart.integrations.events.outbox import InProcessBus, OutboxDispatcher
from carechart.integrations.hl7v2.endpoints import set_hl7_service
from carechart.integrations.hl7v2.service import Hl7Service


@pytest.fixture(scope="session")
def integration_engine(engine: Engine) -> Engine:
    # Until the initial migration is regenerated with these tables, create them here;
    # create_all is idempotent.
    metadata.create_all(engine, tables=list(INTEGRATION_TABLES))
    return engine


@pytest.fixture
def bus() -> Iterator[InProcessBus]:
    bus = InProcessBus()
    yield bus
    bus.close()


@pytest.fixture
def dispatcher(ctx: AppContext, integration_engine: Engine, bus: InProcessBus) -> OutboxDispatcher:
    return OutboxDispatcher(ctx.engine, bus)


@pytest.fixture
def service(ctx: AppContext, dispatcher: OutboxDispatcher) -> Hl7Service:
    return Hl7Service(ctx, dispatcher=dispatcher)


@pytest.fixture
def app(
    ctx: AppContext, auth_parts: AuthComponents, integration_engine: Engine, service: Hl7Service
) -> FastAPI:
    """The application (which mounts ``POST /api/v1/hl7``) with the test's HL7 service."""
    application = create_app(ctx.settings, ctx)
    install(application, auth_parts)
    set_hl7_service(application, service)
    return application
