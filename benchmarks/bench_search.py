"""Search benchmark (the search issue): 100,000 Patients and 1,000,000 Observations on
PostgreSQL, then p50/p99 of the issue's searches over HTTP.

1. Load: deterministic data from ``search_data.py`` as FHIR transaction Bundles (~500
   entries; Patients PUT with generator ids, their Observations POSTed in the same Bundle)
   sent to a real ``carechart serve --workers 2`` by 2 client threads, so validation,
   sealing and indexing are the real ones. Throughput (resources/s) and the server's peak
   resident memory (VmHWM) are recorded. A time budget (``--load-minutes``) stops the load
   early; the scale reached is reported.
2. Queries: a fresh ``carechart serve`` (1 worker) on the loaded database; one sequential
   client, warm-up, then ``--samples`` requests per query with varied parameters; p50/p99/max
   and result counts. ``$everything`` follows ``next`` links to the end.
3. Index size per resource (``pg_total_relation_size`` per table / resources), peak RSS.
4. For every missed target, the SQL the server runs for the slowest sample (captured
   in-process through the real ASGI app) with ``EXPLAIN (ANALYZE, BUFFERS)`` of its slowest
   statement, in ``benchmarks/out/search-explain.txt``.

Every request carries the bearer token of a backend service with ``system/*.cruds``
(``benchlib.Server.auth``, re-minted before it expires), so each one is authenticated, guarded
and audited; rate limits are off in the servers.

Run: ``.venv/bin/python benchmarks/bench_search.py [--scale 1.0] [--keep | --reuse DB]``.
``--scale 0.01`` is a 2-minute run (1,000 patients, 10,000 observations).
Report: stdout and ``benchmarks/out/search-latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as b
import search_data as d

ROOT = b.ROOT
CARECHART = ROOT / ".venv" / "bin" / "carechart"
#: A fixed key for synthetic data, so that ``--keep``/``--reuse`` can read what was sealed.
MASTER_KEY = base64.b64encode(hashlib.sha256(b"carechart-bench-search").digest()).decode()
SEED = 20240601
FULL_PATIENTS = 100_000
OBS_PER_PATIENT = 10.0
SINGLE_TARGET_MS = 20.0
OTHER_TARGET_MS = 50.0
FLOOR_MS = 200.0
MEMORY_TARGET_MB = 1024.0
REPORT = b.OUT_DIR / "search-latest.md"
EXPLAIN_OUT = b.OUT_DIR / "search-explain.txt"


# ---------------------------------------------------------------------------- server


def _env(db: str, data_dir: Path) -> dict[str, str]:
    return b.server_env(data_dir, b.PG_URL_TEMPLATE.format(db=db), MASTER_KEY)


@contextlib.contextmanager
def serve(db: str, workers: int) -> Iterator[b.Server]:
    with tempfile.TemporaryDirectory(prefix="carechart-search-") as tmp:
        data_dir = Path(tmp)
        port = b.free_port()
        log_path = data_dir / "server.log"
        cmd = [str(CARECHART), "serve", "--port", str(port), "--workers", str(workers)]
        env = _env(db, data_dir)
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            b._wait_health(port, proc, log_path, timeout=120)
            time.sleep(1.0 if workers > 1 else 0)  # let every worker come up
            srv = b.Server("postgresql", port, proc, log_path, database=db, env=env)
            srv.idle_rss_mb = b.rss_mb(proc.pid)
            yield srv
            if proc.poll() is not None:
                raise RuntimeError(f"server died:\n{log_path.read_text()[-3000:]}")
        finally:
            b._stop(proc)


def hwm_per_process(pid: int) -> list[float]:
    return [b._status_kb(p, "VmHWM") / 1024 for p in b.process_tree(pid)]


# ---------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    target_patients: int
    patients: int = 0
    resources: int = 0
    bundles: int = 0
    seconds: float = 0.0
    bundle_ms: list[float] = field(default_factory=list)
    stopped_early: bool = False
    stopped_at: tuple[int, int] | None = None  # (pass, first patient) not loaded
    analyze_runs: int = 0
    hwm_mb: list[float] = field(default_factory=list)  # per process of the server tree
    sampled_peak_mb: float = 0.0
    server_cpu_s: float = 0.0
    progress: list[tuple[float, int, int]] = field(default_factory=list)  # (s, patients, res)


def load(
    srv: b.Server,
    patients: int,
    obs_per_patient: float,
    threads: int,
    chunk: int,
    bundle_size: int,
    budget_s: float,
) -> LoadResult:
    """Patients ``0..patients-1`` in chunks of ``chunk`` patients handed to ``threads`` client
    threads; a chunk is cut into Bundles of ~``bundle_size`` entries. No new chunk starts
    after ``budget_s``; the patients loaded are then a prefix of chunks (see ``done``)."""
    result = LoadResult(target_patients=patients)
    lock = threading.Lock()
    # Work items: (part, lo) — pass 1 (Patients + 3 Observations each) for every chunk, then
    # pass 2 (the rest of the Observations), so a budget cut still has every Patient.
    items = [(1, lo) for lo in range(0, patients, chunk)] + [
        (2, lo) for lo in range(0, patients, chunk)
    ]
    next_chunk = [0]
    errors: list[BaseException] = []
    start = time.perf_counter()
    deadline = start + budget_s
    last_log = [start]

    def worker() -> None:
        conn = srv.connection(timeout=600)
        try:
            while not errors:
                with lock:
                    k = next_chunk[0]
                    if k >= len(items) or time.perf_counter() > deadline:
                        if k < len(items):
                            result.stopped_early = True
                            result.stopped_at = items[k]
                        return
                    next_chunk[0] = k + 1
                part, lo = items[k]
                hi = min(patients, lo + chunk)
                for bundle, n_pat, n_res in d.bundles(
                    SEED, lo, hi, obs_per_patient, bundle_size, part
                ):
                    if part == 2:
                        n_pat = 0
                    body = json.dumps(bundle, separators=(",", ":")).encode()
                    t0 = time.perf_counter()
                    status, _, data = b.request(
                        conn, "POST", "/fhir", body, {"Prefer": "return=minimal", **srv.auth()}
                    )
                    ms = (time.perf_counter() - t0) * 1000
                    b.expect(status, 200, data, f"transaction for patients {lo}..{hi}")
                    with lock:
                        result.bundles += 1
                        result.patients += n_pat
                        result.resources += n_res
                        result.bundle_ms.append(ms)
                        now = time.perf_counter()
                        if now - last_log[0] > 30:
                            last_log[0] = now
                            el = now - start
                            result.progress.append((el, result.patients, result.resources))
                            b.log(
                                f"load: {result.patients:,} patients, {result.resources:,} "
                                f"resources in {el:,.0f} s = {result.resources / el:,.0f}/s "
                                f"(server RSS {b.rss_mb(srv.pid):,.0f} MB)"
                            )
        except BaseException as error:
            errors.append(error)
        finally:
            conn.close()

    # This PostgreSQL runs with autovacuum off: without statistics the planner picks the
    # wrong index for the store's per-resource DELETE/SELECT (see the report), and every
    # write scans all rows of its type. ANALYZE as the tables grow (what autovacuum would do).
    stop_analyze = threading.Event()
    analyzed: list[float] = []

    def analyzer() -> None:
        wait = 10.0
        while not stop_analyze.wait(wait):
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):
                b.psql("ANALYZE", srv.database or "postgres")
            analyzed.append(time.perf_counter() - t0)
            wait = min(wait * 2, 120.0)

    cpu0 = b.cpu_seconds(srv.pid)
    with b.MemorySampler(srv.pid, interval=0.5) as sampler:
        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        analyze_thread = threading.Thread(target=analyzer, daemon=True)
        analyze_thread.start()
        for t in pool:
            t.start()
        for t in pool:
            while t.is_alive():
                t.join(timeout=1.0)
        stop_analyze.set()
    result.analyze_runs = len(analyzed)
    result.seconds = time.perf_counter() - start
    result.server_cpu_s = b.cpu_seconds(srv.pid) - cpu0
    result.sampled_peak_mb = sampler.peak_mb
    result.hwm_mb = hwm_per_process(srv.pid)
    if errors:
        raise errors[0]
    # Work items are handed out in order and every started one finishes: the patients loaded
    # are 0..result.patients-1 (pass 1 is a prefix).
    return result


# ---------------------------------------------------------------------------- queries


@dataclass
class QueryStats:
    name: str
    example: str
    target_ms: float
    kind: str  # "single" or "other"
    ms: list[float] = field(default_factory=list)
    results: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    slowest_path: str = ""
    slowest_ms: float = 0.0
    errors: int = 0

    def pct(self, p: float) -> float:
        if not self.ms:
            return float("nan")
        s = sorted(self.ms)
        k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
        return s[k]

    @property
    def met(self) -> bool:
        return bool(self.ms) and self.pct(99) < self.target_ms and not self.errors


def _get(conn: Any, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any] | None, bytes]:
    status, _, data = b.request(conn, "GET", path, headers=headers)
    return status, (json.loads(data) if status == 200 else None), data


def _local(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def query_plan(
    patients: int, samples: int, rng: random.Random, obs_per_patient: float
) -> list[tuple[str, str, float, str, list[str]]]:
    """(name, example, target, kind, paths) for every query of the issue."""
    facts = [d.patient_facts(SEED, i, obs_per_patient) for i in range(patients)]
    weights = d.family_weights()
    families = list(weights)
    family_w = [weights[f] for f in families]
    loaded_families = sorted({f.family for f in facts})
    q = urllib.parse.quote

    def pick() -> d.PatientFacts:
        return facts[rng.randrange(1, patients)] if patients > 1 else facts[0]

    def fam_prefix() -> str:
        return rng.choices(families, weights=family_w)[0][:3].lower()

    def fam_any() -> str:
        return rng.choice(loaded_families)

    def year_range() -> tuple[str, str]:
        y = rng.randint(2021, 2025)
        return f"{y}-01-01", f"{y + 1}-01-01"

    codes = ["2823-3", "2345-7", "8867-4", "29463-7", "85354-9"]
    heavy = d.patient_id(d.HEAVY_INDEX)
    plan: list[tuple[str, str, float, str, list[str]]] = []
    plan.append(
        (
            "Patient by family prefix (3 letters, population-weighted)",
            "/fhir/Patient?family=smi",
            OTHER_TARGET_MS,
            "other",
            [f"/fhir/Patient?family={fam_prefix()}" for _ in range(samples)],
        )
    )
    plan.append(
        (
            "Patient by identifier (MRN)",
            "/fhir/Patient?identifier=http://hospital.example/mrn|MRN-000123",
            SINGLE_TARGET_MS,
            "single",
            [
                f"/fhir/Patient?identifier={q(d.MRN_SYSTEM + '|' + pick().mrn, safe='')}"
                for _ in range(samples)
            ],
        )
    )
    plan.append(
        (
            "Patient by birthdate (day)",
            "/fhir/Patient?birthdate=1980-05-01",
            SINGLE_TARGET_MS,
            "single",
            [f"/fhir/Patient?birthdate={pick().birth_date}" for _ in range(samples)],
        )
    )
    obs_paths = []
    for _ in range(samples):
        lo, hi = year_range()
        code = rng.choice(codes)
        obs_paths.append(
            f"/fhir/Observation?subject=Patient/{pick().id}"
            f"&code={q('http://loinc.org|' + code, safe='')}&date=ge{lo}&date=lt{hi}"
        )
    plan.append(
        (
            "Observations of one patient by code + date range (1 year)",
            "/fhir/Observation?subject=Patient/<id>&code=http://loinc.org|2823-3"
            "&date=ge2022-01-01&date=lt2023-01-01",
            SINGLE_TARGET_MS,
            "single",
            obs_paths,
        )
    )
    plan.append(
        (
            "Chained: Observation?subject:Patient.name=<family>&code=8867-4&_count=20",
            "/fhir/Observation?subject:Patient.name=Smith&code=8867-4&_count=20",
            OTHER_TARGET_MS,
            "other",
            [
                f"/fhir/Observation?subject:Patient.name={q(fam_any())}&code=8867-4&_count=20"
                for _ in range(samples)
            ],
        )
    )
    plan.append(
        (
            "_include: Observation?subject=Patient/<id>&_include=Observation:subject&_count=50",
            "/fhir/Observation?subject=Patient/<id>&_include=Observation:subject&_count=50",
            SINGLE_TARGET_MS,
            "single",
            [
                f"/fhir/Observation?subject=Patient/{pick().id}"
                "&_include=Observation:subject&_count=50"
                for _ in range(samples)
            ],
        )
    )
    plan.append(
        (
            "$everything of the heavy patient (_count=300, all pages)",
            f"/fhir/Patient/{heavy}/$everything?_count=300",
            OTHER_TARGET_MS,
            "other",
            [f"/fhir/Patient/{heavy}/$everything?_count=300" for _ in range(samples)],
        )
    )
    return plan


def run_queries(
    srv: b.Server, plan: list[tuple[str, str, float, str, list[str]]], warmup: int
) -> list[QueryStats]:
    conn = srv.connection(timeout=120)
    out: list[QueryStats] = []
    try:
        for name, example, target, kind, paths in plan:
            stats = QueryStats(name, example, target, kind)
            # Minted between queries, never inside a timed request; a token lasts 10 minutes.
            auth = srv.auth(valid_for=180)
            for i, path in enumerate(paths[:warmup] + paths):
                if i % 50 == 0:
                    auth = srv.auth(valid_for=180)
                t0 = time.perf_counter()
                url: str | None = path
                pages = 0
                found = 0
                status = 200
                data = b""
                while url:
                    status, body, data = _get(conn, url, auth)
                    pages += 1
                    if body is None:
                        break
                    found += sum(
                        1
                        for e in body.get("entry", [])
                        if e.get("search", {}).get("mode", "match") != "outcome"
                    )
                    nxt = [k["url"] for k in body.get("link", []) if k.get("relation") == "next"]
                    url = _local(nxt[0]) if nxt and "$everything" in path else None
                    if "$everything" not in path:
                        found = body.get("total", found)
                ms = (time.perf_counter() - t0) * 1000
                if i < warmup:
                    continue
                if status != 200:
                    stats.errors += 1
                    if stats.errors <= 3:
                        b.log(f"{path}: HTTP {status}: {data[:300]!r}")
                    continue
                stats.ms.append(ms)
                stats.results.append(found)
                stats.pages.append(pages)
                if ms > stats.slowest_ms:
                    stats.slowest_ms, stats.slowest_path = ms, path
            b.log(
                f"{name}: p50 {stats.pct(50):.1f} ms, p99 {stats.pct(99):.1f} ms, "
                f"max {max(stats.ms, default=float('nan')):.1f} ms, "
                f"median results {statistics.median(stats.results) if stats.results else 0}"
                + (f", {stats.errors} errors" if stats.errors else "")
            )
            out.append(stats)
    finally:
        conn.close()
    return out


# ---------------------------------------------------------------------------- sizes


def table_sizes(db: str) -> tuple[list[tuple[str, int, int, int, int]], dict[str, int]]:
    """Per table: (name, rows, total bytes, heap bytes, index bytes); resources by type."""
    rows = b.psql(
        "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid), "
        "pg_relation_size(c.oid), pg_indexes_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
        "AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC",
        db,
    )
    tables = []
    for line in rows.splitlines():
        name, tuples, total, heap, idx = line.split("|")
        tables.append((name, int(tuples), int(total), int(heap), int(idx)))
    counts = {}
    for line in b.psql(
        "SELECT resource_type, count(*) FROM resource WHERE NOT deleted GROUP BY 1 ORDER BY 2 DESC",
        db,
    ).splitlines():
        t, n = line.split("|")
        counts[t] = int(n)
    return tables, counts


def rows_by_type(db: str, table: str) -> dict[str, int]:
    out = {}
    for line in b.psql(f"SELECT resource_type, count(*) FROM {table} GROUP BY 1", db).splitlines():
        t, n = line.split("|")
        out[t] = int(n)
    return out


# ---------------------------------------------------------------------------- explain


def capture_sql(db: str, path: str) -> list[tuple[float, str, Any]]:
    """Run ``path`` through the real ASGI app in-process and return the SQL it executes:
    (ms, statement, parameters), in order."""
    import sqlalchemy as sa

    from carechart.app import create_app
    from carechart.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=b.PG_URL_TEMPLATE.format(db=db),
            master_key=MASTER_KEY,
            rate_limit_per_ip=0,
            rate_limit_per_user=0,
            rate_limit_sensitive=0,
        )
        token = b.system_token(_env(db, Path(tmp)))
        app = create_app(settings)
        engine = app.state.ctx.engine
        captured: list[tuple[float, str, Any]] = []
        started: dict[int, float] = {}

        def before(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            started[id(cursor)] = time.perf_counter()

        def after(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            ms = (time.perf_counter() - started.pop(id(cursor), time.perf_counter())) * 1000
            captured.append((ms, statement, params))

        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)

        async def call() -> int:
            raw_path, _, query = path.partition("?")
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "GET", "scheme": "http", "path": urllib.parse.unquote(raw_path),
                "raw_path": raw_path.encode(), "query_string": query.encode(),
                "headers": [
                    (b"host", b"127.0.0.1"), (b"accept", b"application/fhir+json"),
                    (b"authorization", f"Bearer {token}".encode()),
                ],
                "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "root_path": "",
            }  # fmt: skip
            status = [0]

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]

            async with app.router.lifespan_context(app):
                await app(scope, receive, send)  # warm (caches, definitions)
                captured.clear()
                await app(scope, receive, send)
            return status[0]

        asyncio.run(call())
        engine.dispose()
        return captured


def explain(db: str, statement: str, params: Any) -> str:
    import psycopg

    with psycopg.connect(f"postgresql://root@127.0.0.1:5432/{db}") as conn:
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + statement,
            params or None,  # type: ignore[arg-type]
        ).fetchall()
        return "\n".join(r[0] for r in rows)


def _inline(statement: str, params: Any, limit: int = 4000) -> str:
    """The statement with its parameters written in (for reading; long ones cut)."""
    if isinstance(params, dict):
        for k, v in sorted(params.items(), key=lambda kv: -len(kv[0])):
            text = repr(v)
            if len(text) > 200:
                text = text[:200] + f"... ({len(v) if hasattr(v, '__len__') else '?'} values)"
            statement = statement.replace(f"%({k})s", text)
    return statement if len(statement) <= limit else statement[:limit] + " ..."


# ---------------------------------------------------------------------------- report


def _status(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def render(
    meta: dict[str, Any],
    loaded: LoadResult | None,
    load_meta: dict[str, Any],
    stats: list[QueryStats],
    sizes: tuple[list[tuple[str, int, int, int, int]], dict[str, int]],
    type_rows: dict[str, dict[str, int]],
    query_hwm: list[float],
    query_rss_peak: float,
    explains: list[str],
) -> str:
    tables, counts = sizes
    total_res = sum(counts.values())
    lines = [
        "# Search benchmark (PostgreSQL)",
        "",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Machine: {meta['nproc']} cores ({meta['cpu']}), PostgreSQL {meta['postgresql']}, "
        f"Python {meta['python']}; code: {meta['code']}.",
        "",
        "## Scale",
        "",
        "| | target | loaded |",
        "|---|---|---|",
        f"| Patients | {load_meta['target_patients']:,} | **{counts.get('Patient', 0):,}** |",
        f"| Observations | {int(load_meta['target_patients'] * OBS_PER_PATIENT):,} | "
        f"**{counts.get('Observation', 0):,}** |",
        f"| all resources | | {total_res:,} ({', '.join(f'{t} {n:,}' for t, n in counts.items())}) |",
        "",
    ]
    if load_meta.get("stopped_early"):
        lines += [
            f"**The full scale was not loaded**: the load stopped at its time budget "
            f"({load_meta['budget_min']:.0f} min) at pass {load_meta['stopped_at'][0]}, patient "
            f"{load_meta['stopped_at'][1]:,} (pass 1 = each Patient with 3 Observations; pass 2 "
            "= the rest of its Observations, in patient order); the figures below are at the "
            "scale loaded.",
            "",
        ]
    if loaded is not None:
        rate = loaded.resources / loaded.seconds if loaded.seconds else float("nan")
        lines += [
            "## Load",
            "",
            *(
                [
                    f"(Figures of the load that filled database `{load_meta['db']}`; this run reused it.)",
                    "",
                ]
                if load_meta.get("reused")
                else []
            ),
            f"{loaded.bundles:,} transaction Bundles of ~{load_meta['bundle_size']} entries, "
            f"{load_meta['threads']} client threads → `carechart serve --workers "
            f"{load_meta['workers']}`; validation, sealing and indexing real. Two passes: every "
            "Patient (PUT, generator id) with its first 3 Observations, then the rest of the "
            f"Observations (POST). `ANALYZE` ran {loaded.analyze_runs} times during the load "
            "(autovacuum is off on this PostgreSQL).",
            "",
            "| resources | seconds | resources/s | per server CPU-s | median Bundle ms "
            "| server peak RSS (sampled, tree) | VmHWM per process MB |",
            "|---|---|---|---|---|---|---|",
            f"| {loaded.resources:,} | {loaded.seconds:,.0f} | **{rate:,.0f}** | "
            f"{loaded.resources / loaded.server_cpu_s if loaded.server_cpu_s else float('nan'):,.0f} | "
            f"{b.median(loaded.bundle_ms):,.0f} | {loaded.sampled_peak_mb:,.0f} MB | "
            f"{', '.join(f'{x:,.0f}' for x in loaded.hwm_mb)} |",
            "",
        ]
        if loaded.progress:
            lines += [
                "Rate over time: "
                + "; ".join(
                    f"{s / 60:.0f} min: {r:,} res ({r / s:,.0f}/s)"
                    for s, _, r in loaded.progress[:: max(1, len(loaded.progress) // 8)]
                ),
                "",
            ]
    elif load_meta:
        lines += [f"Data reused from database `{load_meta['db']}` (not reloaded).", ""]
    lines += [
        "## Queries",
        "",
        f"HTTP against `carechart serve --workers 1` on the loaded database, one sequential "
        f"client (keep-alive) with a backend service's bearer token (`system/*.cruds`: "
        f"authenticated, guarded and audited), {meta['warmup']} warm-up requests per query then "
        f"{meta['samples']} samples with varied parameters; ms are wall-clock per request "
        "($everything: all pages).",
        "",
        "| query | p50 ms | p99 ms | max ms | results (median / max) | target p99 | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        res = f"{statistics.median(s.results):,.0f} / {max(s.results):,}" if s.results else "–"
        if s.pages and max(s.pages) > 1:
            res += f" ({max(s.pages)} pages)"
        err = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {s.name}<br>`{s.example}` | {s.pct(50):,.1f} | **{s.pct(99):,.1f}** | "
            f"{max(s.ms, default=float('nan')):,.1f} | {res} | < {s.target_ms:.0f} ms | "
            f"{_status(s.met)}{err} |"
        )
    patient_stats = [s for s in stats if s.name.startswith("Patient")]
    floor_ok = all(s.pct(99) < FLOOR_MS and not s.errors for s in patient_stats)
    lines += [
        "",
        f"Seeds' floor ('search patients < 200 ms' at 100,000+ records; p99 of the three Patient "
        f"searches at {counts.get('Patient', 0):,} Patients): "
        + _status(floor_ok)
        + " ("
        + ", ".join(f"{s.pct(99):,.1f} ms" for s in patient_stats)
        + ").",
        "",
        "Targets: p99 < 20 ms for single-patient lookups (identifier, birthdate, one patient's "
        "Observations by code/date, one patient's Observations with `_include`), < 50 ms for "
        "the rest (family prefix, chained, $everything).",
        "",
        "## Memory",
        "",
        "| phase | server peak RSS | target |",
        "|---|---|---|",
    ]
    if loaded is not None:
        top = max(loaded.hwm_mb, default=0)
        lines.append(
            f"| load (`--workers {load_meta['workers']}`) | VmHWM per process: "
            f"{', '.join(f'{x:,.0f}' for x in loaded.hwm_mb)} MB (largest {top:,.0f}); sampled tree "
            f"RSS peak {loaded.sampled_peak_mb:,.0f} MB | < 1 GiB: "
            f"{_status(loaded.sampled_peak_mb < MEMORY_TARGET_MB)} |"
        )
    lines.append(
        f"| queries (`--workers 1`) | VmHWM per process: {', '.join(f'{x:,.0f}' for x in query_hwm)} MB; "
        f"sampled tree RSS peak {query_rss_peak:,.0f} MB | < 1 GiB: "
        f"{_status(max(query_hwm, default=0) < MEMORY_TARGET_MB)} |"
    )
    lines += [
        "",
        "## Storage per resource",
        "",
        f"`pg_total_relation_size` (heap + indexes + TOAST) per table; 'per resource' divides by "
        f"all {total_res:,} current resources; the Patient / Observation columns apportion the "
        "table by its rows of that type.",
        "",
        "| table | rows | total MB | of which indexes MB | bytes / resource | "
        "Patient bytes / Patient | Observation bytes / Observation |",
        "|---|---|---|---|---|---|---|",
    ]
    grand = 0

    def per(t: str, total: int, by_type: dict[str, int], n_rows: int) -> str:
        if not by_type or not counts.get(t):
            return "–"
        return f"{total * by_type.get(t, 0) / n_rows / counts[t]:,.0f}"

    for name, tuples, total, _heap, idx in tables:
        if not (name.startswith("resource") or name.startswith("search_")):
            continue
        grand += total
        by_type = type_rows.get(name, {})
        n_rows = sum(by_type.values()) or tuples

        lines.append(
            f"| {name} | {n_rows:,} | {total / 1e6:,.1f} | {idx / 1e6:,.1f} | "
            f"{total / max(1, total_res):,.0f} | {per('Patient', total, by_type, n_rows)} | "
            f"{per('Observation', total, by_type, n_rows)} |"
        )
    search_total = sum(t[2] for t in tables if t[0].startswith("search_"))
    lines += [
        f"| **all** | | {grand / 1e6:,.1f} | | **{grand / max(1, total_res):,.0f}** | | |",
        "",
        f"Search index tables alone: {search_total / 1e6:,.1f} MB = "
        f"{search_total / max(1, total_res):,.0f} bytes per resource.",
        "",
    ]
    if explains:
        lines += ["## Missed targets: the slow SQL", "", *explains, ""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        f"cd /work/main && .venv/bin/python benchmarks/bench_search.py --scale {load_meta.get('scale', 1.0)} --keep"
        "   # prints the database name",
        ".venv/bin/python benchmarks/bench_search.py --reuse <database>   # queries only",
        "```",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 100,000 patients")
    ap.add_argument("--keep", action="store_true", help="keep the database at the end")
    ap.add_argument(
        "--reuse", metavar="DB", help="query an already loaded database (implies --keep)"
    )
    ap.add_argument("--load-minutes", type=float, default=45.0, help="load time budget")
    ap.add_argument("--workers", type=int, default=2, help="server workers during the load")
    ap.add_argument("--threads", type=int, default=2, help="client threads during the load")
    ap.add_argument("--bundle-size", type=int, default=500)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--no-explain", action="store_true")
    args = ap.parse_args()
    b.OUT_DIR.mkdir(exist_ok=True)
    meta = b.machine()
    meta.update(samples=args.samples, warmup=args.warmup)
    loaded: LoadResult | None = None
    keep = args.keep or bool(args.reuse)
    db = args.reuse or f"carechart_search_{uuid.uuid4().hex[:8]}"
    meta_path = b.OUT_DIR / f"search-{db}.json"
    if not args.reuse:
        b.psql(f'CREATE DATABASE "{db}"')
        b.log(f"database {db}")
    try:
        if args.reuse:
            load_meta = json.loads(meta_path.read_text())
            load_meta["reused"] = True
            saved = load_meta.get("load")
            if saved:  # the figures of the load that filled this database
                loaded = LoadResult(
                    target_patients=load_meta["target_patients"],
                    patients=load_meta["loaded_patients"],
                    resources=saved["resources"],
                    bundles=saved["bundles"],
                    seconds=saved["seconds"],
                    bundle_ms=saved.get("bundle_ms")
                    or [saved.get("median_bundle_ms", float("nan"))],
                    stopped_early=load_meta.get("stopped_early", False),
                    hwm_mb=saved["hwm_mb"],
                    sampled_peak_mb=saved["sampled_peak_mb"],
                    server_cpu_s=saved["server_cpu_s"],
                    progress=[tuple(p) for p in saved.get("progress", [])],
                    analyze_runs=saved.get("analyze_runs", 0),
                )
        else:
            patients = max(2, int(FULL_PATIENTS * args.scale))
            load_meta = {
                "db": db, "scale": args.scale, "target_patients": patients,
                "budget_min": args.load_minutes, "bundle_size": args.bundle_size,
                "threads": args.threads, "workers": args.workers,
            }  # fmt: skip
            chunk = max(10, min(500, patients // 40))
            with serve(db, args.workers) as srv:
                loaded = load(
                    srv, patients, OBS_PER_PATIENT, args.threads, chunk, args.bundle_size,
                    args.load_minutes * 60,
                )  # fmt: skip
            load_meta["stopped_early"] = loaded.stopped_early
            load_meta["stopped_at"] = loaded.stopped_at
            # Loaded patients: every chunk started finished, chunks handed out in order.
            load_meta["loaded_patients"] = loaded.patients
            load_meta["load"] = {
                "resources": loaded.resources, "seconds": loaded.seconds,
                "bundles": loaded.bundles, "hwm_mb": loaded.hwm_mb,
                "sampled_peak_mb": loaded.sampled_peak_mb, "server_cpu_s": loaded.server_cpu_s,
                "bundle_ms": loaded.bundle_ms, "progress": loaded.progress,
                "analyze_runs": loaded.analyze_runs,
            }  # fmt: skip
            meta_path.write_text(json.dumps(load_meta, indent=1))
            b.log(
                f"loaded {loaded.resources:,} resources ({loaded.patients:,} patients) in "
                f"{loaded.seconds:,.0f} s = {loaded.resources / loaded.seconds:,.0f}/s"
            )
            b.psql("VACUUM ANALYZE", db)
        n_pat = load_meta["loaded_patients"]
        plan = query_plan(n_pat, args.samples, random.Random(7), OBS_PER_PATIENT)
        with serve(db, 1) as srv:
            with b.MemorySampler(srv.pid, interval=0.2) as sampler:
                stats = run_queries(srv, plan, args.warmup)
            query_hwm = hwm_per_process(srv.pid)
        sizes = table_sizes(db)
        type_rows = {
            name: rows_by_type(db, name)
            for name, *_ in sizes[0]
            if (name.startswith("search_") and name != "search_blind_bits") or name in ("resource",)
        }
        explains: list[str] = []
        if not args.no_explain:
            dumps: list[str] = []
            for s in stats:
                if s.met or not s.slowest_path:
                    continue
                try:
                    captured = capture_sql(db, s.slowest_path)
                except Exception as error:
                    explains.append(f"- {s.name}: could not capture SQL: {error!r}")
                    continue
                total_sql = sum(ms for ms, *_ in captured)
                slow = sorted(captured, key=lambda c: -c[0])
                head = (
                    f"### {s.name}\n\nSlowest sample `{s.slowest_path}` ({s.slowest_ms:,.1f} ms over "
                    f"HTTP): {len(captured)} SQL statements, {total_sql:,.1f} ms in the database "
                    "driver in-process; slowest statements: "
                    + ", ".join(f"{ms:,.1f} ms" for ms, *_ in slow[:5])
                    + "."
                )
                explains.append(head)
                dumps.append(f"===== {s.name}\n{s.slowest_path}\n")
                for ms, stmt, params in slow[:2]:
                    try:
                        plan_text = explain(db, stmt, params)
                    except Exception as error:
                        plan_text = f"EXPLAIN failed: {error!r}"
                    dumps.append(f"--- {ms:,.1f} ms\n{_inline(stmt, params)}\n\n{plan_text}\n")
                explains.append(
                    f"Plans of the two slowest statements: `{EXPLAIN_OUT.relative_to(ROOT)}`.\n"
                )
            EXPLAIN_OUT.write_text("\n".join(dumps))
        text = render(
            meta, loaded, load_meta, stats, sizes, type_rows, query_hwm, sampler.peak_mb, explains
        )
        REPORT.write_text(text)
        print(text)
    finally:
        if keep:
            b.log(
                f"kept database {db} (re-run queries: --reuse {db}; drop: dropdb -h 127.0.0.1 {db})"
            )
        else:
            with contextlib.suppress(Exception):
                b.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            with contextlib.suppress(OSError):
                meta_path.unlink()


if __name__ == "__main__":
    main()
