"""Scenario 5: where a read's time goes, layer by layer, in one process (PostgreSQL).

Same data and query each time (a Patient by primary key from ~1,000), one thread,
sequential, microseconds per read (median of several runs):

1. raw psycopg, autocommit, one prepared SELECT: the floor (one round trip);
2. SQLAlchemy Core, the same SELECT, autocommit engine, no pre-ping;
3. SQLAlchemy Core with ``conn.begin()`` (BEGIN ... COMMIT), no pre-ping;
4. the production path: ``AppContext.store(write=False)`` + ``SqlResourceStore.read``
   (pool pre-ping, transaction, SELECT, unseal).

The difference between 4 and the HTTP figure of scenario 3 / the wrk -c1 figure of
scenario 4 is the HTTP stack + thread-pool hop.

Run alone: ``.venv/bin/python benchmarks/bench_read_layers.py`` (prints JSON on the last
line when ``--json`` is given; run_all uses that). Honours ``CARECHART_BENCH_STUB`` like
``serve.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib as b

LAYERS = (
    ("psycopg", "raw psycopg, autocommit, 1 round trip"),
    ("sa_autocommit", "SQLAlchemy Core, autocommit, no pre-ping"),
    ("sa_tx", "SQLAlchemy Core, BEGIN/SELECT/COMMIT, no pre-ping"),
    ("store", "AppContext.store + SqlResourceStore.read (production path)"),
)


def _interleaved(fns: dict[str, Callable[[int], None]], n: int, runs: int) -> dict[str, float]:
    """µs per op for each function, median over ``runs``; the layers take turns in every run
    so that the noise of a shared machine falls on all of them alike."""
    for fn in fns.values():
        for i in range(min(n, 200)):
            fn(i)  # warm-up (statement caches, prepared statements)
    samples: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(runs):
        for key, fn in fns.items():
            start = time.perf_counter()
            for i in range(n):
                fn(i)
            samples[key].append((time.perf_counter() - start) / n * 1e6)
    return {key: statistics.median(values) for key, values in samples.items()}


def _round_trips(ctx: Any, rid: str, trace: Path) -> float:
    """Round trips of one production-path read, from a libpq protocol trace: frontend
    ``Query`` (simple protocol) and ``Sync`` (extended protocol) messages each await a reply."""
    for _ in range(8):  # past psycopg's prepare threshold, as in steady state
        with ctx.store(write=False) as store:
            store.read("Patient", rid)
    with ctx.engine.connect() as conn:  # the pool's (only) connection
        pgconn = conn.connection.dbapi_connection.pgconn
    with trace.open("w") as fh:
        pgconn.trace(fh.fileno())
        try:
            with ctx.store(write=False) as store:
                store.read("Patient", rid)
        finally:
            pgconn.untrace()
    count = 0
    for line in trace.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) > 3 and parts[1] == "F" and parts[3] in ("Query", "Sync"):
            count += 1
    return float(count)


def measure(n: int, runs: int) -> dict[str, float]:
    stub = os.environ.get("CARECHART_BENCH_STUB")
    if stub:
        runpy.run_path(stub, run_name="carechart_bench_stub")
    import psycopg
    import sqlalchemy as sa

    from carechart.config import Settings
    from carechart.context import AppContext
    from carechart.db.migrate import upgrade
    from carechart.db.schema import resource

    out: dict[str, float] = {}
    with b.scratch_database("carechart_bench") as db, tempfile.TemporaryDirectory() as tmp:
        url = b.PG_URL_TEMPLATE.format(db=db)
        settings = Settings(data_dir=Path(tmp), database_url=url)
        ctx = AppContext.from_settings(settings)
        upgrade(ctx.engine)
        tenant = settings.default_tenant
        ids: list[str] = []
        with ctx.store(write=True) as store:
            for i in range(1000):
                ids.append(store.create("Patient", b.sample_patient(i)).version.id)
        b.psql("ANALYZE", db)

        def query(rid: str) -> sa.Select[tuple[bytes | None]]:
            return sa.select(resource.c.body).where(
                resource.c.tenant_id == tenant,
                resource.c.resource_type == "Patient",
                resource.c.id == rid,
            )

        raw = psycopg.connect(f"host={b.HOST} user=root dbname={db}", autocommit=True)
        auto = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        plain = sa.create_engine(url)
        try:
            sql = "SELECT body FROM resource WHERE tenant_id=%s AND resource_type=%s AND id=%s"

            def l_psycopg(i: int) -> None:
                assert raw.execute(sql, (tenant, "Patient", ids[i % 1000])).fetchone()

            def l_auto(i: int) -> None:
                with auto.connect() as c:
                    assert c.execute(query(ids[i % 1000])).first()

            def l_tx(i: int) -> None:
                with plain.connect() as c, c.begin():
                    assert c.execute(query(ids[i % 1000])).first()

            def l_store(i: int) -> None:
                with ctx.store(write=False) as s:
                    s.read("Patient", ids[i % 1000])

            out = {"round_trips": _round_trips(ctx, ids[0], Path(tmp) / "trace.txt")}
            out |= _interleaved(
                {"psycopg": l_psycopg, "sa_autocommit": l_auto, "sa_tx": l_tx, "store": l_store},
                n,
                runs,
            )
        finally:
            raw.close()
            auto.dispose()
            plain.dispose()
            ctx.engine.dispose()
    return out


def run(n: int = 1000, runs: int = 7) -> dict[str, float]:
    """Measure in a subprocess (keeps carechart and any stub out of the caller)."""
    done = subprocess.run(
        [b.PYTHON, str(Path(__file__)), "--json", "-n", str(n), "--runs", str(runs)],
        cwd=b.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_read_layers failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    b.log("read layers: " + ", ".join(f"{k} {v:.0f}" for k, v in result.items()))
    return result


def report(r: dict[str, float], http_read_us: float | None = None) -> list[str]:
    lines = [
        "## 5. Where a read's time goes (PostgreSQL, one thread, sequential)",
        "",
        "In-process, the same Patient-by-primary-key read through successive layers; "
        "median µs per read (layers interleaved).",
        "",
        "| layer | µs per read | × raw psycopg |",
        "|---|---|---|",
    ]
    floor = r.get("psycopg", float("nan"))
    if "round_trips" in r:
        lines[4:4] = [
            f"Database round trips in one production-path read (libpq trace): "
            f"**{r['round_trips']:.0f}**.",
            "",
        ]
    for key, label in LAYERS:
        v = r.get(key, float("nan"))
        lines.append(f"| {label} | {b.fmt(v)} | {v / floor:.1f} |")
    if http_read_us is not None:
        lines.append(
            f"| HTTP `GET /fhir/Patient/{{id}}`, one client (scenario 3) | {b.fmt(http_read_us)} "
            f"| {http_read_us / floor:.1f} |"
        )
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.n, args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(report(result)))


if __name__ == "__main__":
    main()
