"""Application-level behaviour: failing closed, generic errors, no caching."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from starlette.testclient import TestClient

from carechart.app import create_app
from carechart.config import Settings
from carechart.context import AppContext
from carechart.crypto.keys import KeyRing, MasterKey
from carechart.db.engine import make_engine


def test_unreachable_database_fails_closed_with_503(tmp_path: Path) -> None:
    master = os.urandom(32)
    settings = Settings(data_dir=tmp_path, master_key=base64.b64encode(master).decode())
    engine = make_engine("postgresql+psycopg://root@127.0.0.1:1/nowhere?connect_timeout=2")
    ctx = AppContext(
        settings=settings,
        engine=engine,
        keyring=KeyRing(MasterKey.from_bytes(master), engine),
    )
    with TestClient(create_app(settings, ctx), raise_server_exceptions=False) as client:
        # Verifying the token needs the database (keys, session) too: 503, not 401.
        response = client.get("/fhir/Patient/123", headers={"Authorization": "Bearer a.b.c"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["issue"][0]["code"] == "transient"
        assert "127.0.0.1" not in response.text
        # The public capability statement needs no database.
        assert client.get("/fhir/metadata").status_code == 200


def test_native_paths_get_the_native_error_envelope(client: TestClient) -> None:
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {
        "status": "error",
        "error": {"code": "NOT_FOUND", "message": "no such route", "details": {}},
    }


def test_every_response_says_no_store(client: TestClient) -> None:
    for url in ("/health", "/fhir/metadata", "/fhir/Patient/none"):
        assert client.get(url).headers["cache-control"] == "no-store"
