"""Two updates with the same If-Match: exactly one wins (http.html#concurrency)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from starlette.testclient import TestClient

from carechart.context import AppContext
from carechart.errors import PreconditionFailed

FHIR = {"Content-Type": "application/fhir+json"}


def test_concurrent_updates_with_the_same_if_match_one_wins(
    client: TestClient, ctx: AppContext
) -> None:
    pid = client.post("/fhir/Patient", content='{"resourceType":"Patient"}', headers=FHIR).json()[
        "id"
    ]
    for _round in range(5):
        version = client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"]
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def attempt(n: int, version: str = version, barrier: threading.Barrier = barrier) -> str:
            body = {
                "resourceType": "Patient",
                "id": pid,
                "gender": ["male", "female", "other", "unknown"][n],
            }
            # Real concurrent transactions on separate connections, straight to the store.
            # PostgreSQL: all four transactions are open before any writes. SQLite takes its
            # single write lock at BEGIN, so there they line up just before it.
            postgres = ctx.engine.dialect.name == "postgresql"
            try:
                if not postgres:
                    barrier.wait(timeout=10)
                with ctx.store(write=True) as store:
                    if postgres:
                        barrier.wait(timeout=10)
                    store.update("Patient", pid, body, if_match=f'W/"{version}"')
                return "won"
            except PreconditionFailed:
                return "412"

        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(attempt, range(4)))
        assert sorted(outcomes) == ["412", "412", "412", "won"], outcomes
        latest = client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"]
        assert int(latest) == int(version) + 1
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert history["total"] == 6
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == [
        "6",
        "5",
        "4",
        "3",
        "2",
        "1",
    ]


def test_concurrent_http_updates_with_the_same_if_match(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", content='{"resourceType":"Patient"}', headers=FHIR).json()[
        "id"
    ]

    def put(gender: str) -> int:
        body = json.dumps({"resourceType": "Patient", "id": pid, "gender": gender})
        return client.put(
            f"/fhir/Patient/{pid}", content=body, headers={**FHIR, "If-Match": 'W/"1"'}
        ).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = sorted(pool.map(put, ["male", "female", "other", "unknown"]))
    assert statuses == [200, 412, 412, 412]
