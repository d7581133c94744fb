"""Re-indexing and blind-index sizing rebuild exactly what writes build."""

from __future__ import annotations

import json

import sqlalchemy as sa
from starlette.testclient import TestClient

import carechart.db.search_schema as search_schema
from carechart.context import AppContext
from carechart.fhir.maintenance import reindex, resize_blind_indexes

FHIR = {"Content-Type": "application/fhir+json"}


def _index_rows(ctx: AppContext) -> dict[str, list[tuple[object, ...]]]:
    tenant = ctx.settings.default_tenant
    found: dict[str, list[tuple[object, ...]]] = {}
    with ctx.engine.connect() as conn:
        for table in search_schema.metadata.sorted_tables:
            if (
                not table.name.startswith("search_")
                or "tenant_id" not in table.c
                or table.name == "search_snapshot"
            ):
                continue
            if "resource_id" not in table.c:
                continue
            rows = conn.execute(sa.select(table).where(table.c.tenant_id == tenant)).all()
            found[table.name] = sorted(tuple(map(str, row)) for row in rows)
    return found


def test_reindex_rebuilds_the_same_index_rows(client: TestClient, ctx: AppContext) -> None:
    pid = client.post(
        "/fhir/Patient",
        content=json.dumps(
            {"resourceType": "Patient", "name": [{"family": "Reindexed"}], "gender": "male"}
        ),
        headers=FHIR,
    ).json()["id"]
    client.post(
        "/fhir/Observation",
        content=json.dumps(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{pid}"},
            }
        ),
        headers=FHIR,
    )
    before = _index_rows(ctx)
    tenant = ctx.settings.default_tenant
    with ctx.engine.begin() as conn:
        for table in search_schema.metadata.sorted_tables:
            if table.name.startswith("search_") and "resource_id" in table.c:
                conn.execute(table.delete().where(table.c.tenant_id == tenant))
    assert client.get("/fhir/Patient", params={"gender": "male"}).json()["total"] == 0
    assert reindex(ctx, tenant) == 2
    assert _index_rows(ctx) == before
    assert client.get("/fhir/Patient", params={"gender": "male"}).json()["total"] == 1
    assert client.get("/fhir/Patient", params={"family": "reind"}).json()["total"] == 1


def test_blind_indexes_are_narrowed_to_shared_buckets_and_still_found(
    client: TestClient, ctx: AppContext
) -> None:
    ids = [
        client.post(
            "/fhir/Patient",
            content=json.dumps({"resourceType": "Patient", "name": [{"family": f"Bucket{i}"}]}),
            headers=FHIR,
        ).json()["id"]
        for i in range(6)
    ]
    changes = resize_blind_indexes(ctx, ctx.settings.default_tenant)
    family = next(c for c in changes if c.resource_type == "Patient" and c.code == "family")
    assert family.new_bits < family.old_bits == 32
    # Narrow tokens make candidates common; the router's confirmation keeps answers exact.
    bundle = client.get("/fhir/Patient", params={"family": "bucket3"}).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [ids[3]]
    # New writes use the recorded width too.
    new_id = client.post(
        "/fhir/Patient",
        content=json.dumps({"resourceType": "Patient", "name": [{"family": "Bucket9"}]}),
        headers=FHIR,
    ).json()["id"]
    assert [
        e["resource"]["id"]
        for e in client.get("/fhir/Patient", params={"family": "bucket9"}).json()["entry"]
    ] == [new_id]
