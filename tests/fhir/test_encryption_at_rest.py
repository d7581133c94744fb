"""Every stored body is sealed: no trace of PHI in the raw database (SECURITY D2)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from carechart.context import AppContext
from carechart.db.schema import resource

FHIR = {"Content-Type": "application/fhir+json"}


def _all_table_text(engine: Engine) -> bytes:
    """Every value of every table, as bytes, the way a dump would show them."""
    dump = bytearray()
    inspector = sa.inspect(engine)
    with engine.connect() as conn:
        for table in inspector.get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                for value in row:
                    if isinstance(value, (bytes, memoryview)):
                        dump += bytes(value)
                    elif value is not None:
                        dump += str(value).encode()
    return bytes(dump)


def test_canary_phi_never_reaches_the_database(client: TestClient, ctx: AppContext) -> None:
    canary = f"Zqx{uuid.uuid4().hex[:10]}"
    phone = "+1-555-" + canary[-7:]
    body = {
        "resourceType": "Patient",
        "name": [{"family": canary, "given": [canary + "G"]}],
        "telecom": [{"system": "phone", "value": phone}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": canary + "SSN"}],
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{canary} note</div>',
        },
    }
    pid = client.post("/fhir/Patient", content=json.dumps(body), headers=FHIR).json()["id"]
    client.put(
        f"/fhir/Patient/{pid}",
        content=json.dumps({**body, "id": pid, "gender": "female"}),
        headers=FHIR,
    )
    assert canary in client.get(f"/fhir/Patient/{pid}").text

    engine = ctx.engine
    dump = _all_table_text(engine)
    for secret in (canary, canary.lower(), canary.upper(), phone, canary + "SSN"):
        assert secret.encode() not in dump, f"{secret!r} found in the database"
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        assert database is not None
        engine.dispose()  # flush the WAL into the main file too
        raw = Path(database).read_bytes() + (
            Path(database + "-wal").read_bytes() if Path(database + "-wal").exists() else b""
        )
        assert canary.encode() not in raw
        assert canary.lower().encode() not in raw


def test_a_body_copied_into_another_row_fails_to_open(client: TestClient, ctx: AppContext) -> None:
    first = client.post(
        "/fhir/Patient", content='{"resourceType":"Patient","gender":"male"}', headers=FHIR
    ).json()["id"]
    second = client.post(
        "/fhir/Patient", content='{"resourceType":"Patient","gender":"female"}', headers=FHIR
    ).json()["id"]
    tenant = ctx.settings.default_tenant
    with ctx.engine.begin() as conn:
        sealed = conn.execute(
            sa.select(resource.c.body).where(resource.c.tenant_id == tenant, resource.c.id == first)
        ).scalar_one()
        conn.execute(
            resource.update()
            .where(resource.c.tenant_id == tenant, resource.c.id == second)
            .values(body=sealed)
        )
    response = client.get(f"/fhir/Patient/{second}")
    assert response.status_code == 500
    assert response.json()["issue"][0]["diagnostics"] == "sealed data failed authentication"
    assert "male" not in response.text
