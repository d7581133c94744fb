"""Scenario 5: where a read's time goes, layer by layer, in one process (PostgreSQL).

Same data and query each time (a Patient by primary key from ~1,000), one thread,
sequential, microseconds per read (median of several runs, the layers interleaved):

1. raw psycopg, autocommit, one prepared SELECT: the floor (one round trip);
2. SQLAlchemy Core, the same SELECT, autocommit engine, no pre-ping;
3. SQLAlchemy Core with ``conn.begin()`` (BEGIN ... COMMIT), no pre-ping;
4. ``AppContext.store(write=False)`` + ``SqlResourceStore.read`` without a guard: the
   server's own work path (no policy point, no audit record);
5. the same with the guard of an already authenticated backend service (``system/*.cruds``):
   the policy decision and the audit record appended to the hash chain in the read's
   transaction (advisory lock, chain head, INSERT);
6. authentication alone of that service's bearer token, as ``current_principal`` does it
   (its own unit of work: signing keys, the client's registration);
7. the production path of ``GET /fhir/Patient/{id}`` without HTTP, system client: 6 then 5;
8. the same for a physician user signed in with a password (``IdentityService.login``)
   whose ``practitioner_id`` is every Patient's general practitioner: authentication also
   checks and touches the session and loads the account; the guard loads the care
   relationships (``bind``) before it admits the Patient.

Also: the SQL statements of one production-path read by phase (authentication, guard bind,
read, audit append), counted with a SQLAlchemy ``before_cursor_execute`` listener, the
median time of each phase, and the database round trips of the whole read (libpq trace:
frontend ``Query``/``Sync`` messages, which include BEGIN and COMMIT).

The difference between 7 and the HTTP figure of scenario 3 / the wrk -c1 figure of
scenario 4 is the HTTP stack + thread-pool hops.

Run alone: ``.venv/bin/python benchmarks/bench_read_layers.py [-n 1000] [--runs 7]``
(``--json``: one JSON line at the end; run_all uses that). Honours ``CARECHART_BENCH_STUB``
like ``serve.py``.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchlib as b

LAYERS = (
    ("psycopg", "raw psycopg, autocommit, 1 round trip"),
    ("sa_autocommit", "SQLAlchemy Core, autocommit, no pre-ping"),
    ("sa_tx", "SQLAlchemy Core, BEGIN/SELECT/COMMIT, no pre-ping"),
    ("store", "AppContext.store + SqlResourceStore.read, no guard (no audit)"),
    ("guarded", "… + guard of an authenticated system client (policy + audit append)"),
    ("auth_system", "authentication of the system client's token alone (own transaction)"),
    ("full_system", "production path without HTTP, system client (authenticate + guarded read)"),
    ("full_physician", "production path without HTTP, physician (session, care relationships)"),
)
PHASES = ("authenticate", "guard bind", "read", "audit append + commit")
PATIENTS = 1000


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


def _round_trips(ctx: Any, op: Callable[[], None], trace: Path) -> float:
    """Round trips of ``op`` (one or more units of work on the pool's one connection), from
    a libpq protocol trace: frontend ``Query`` (simple protocol) and ``Sync`` (extended
    protocol) messages each await a reply."""
    for _ in range(8):  # past psycopg's prepare threshold, as in steady state
        op()
    with ctx.engine.connect() as conn:  # the pool's (only) connection
        pgconn = conn.connection.dbapi_connection.pgconn
    with trace.open("w") as fh:
        pgconn.trace(fh.fileno())
        try:
            op()
        finally:
            pgconn.untrace()
    count = 0
    for line in trace.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) > 3 and parts[1] == "F" and parts[3] in ("Query", "Sync"):
            count += 1
    return float(count)


def measure(n: int, runs: int) -> dict[str, Any]:
    stub = os.environ.get("CARECHART_BENCH_STUB")
    if stub:
        runpy.run_path(stub, run_name="carechart_bench_stub")
    import psycopg
    import sqlalchemy as sa

    from carechart.access.policy import AccessGuard
    from carechart.auth import clients
    from carechart.auth.config import from_context
    from carechart.auth.principal import ClientInfo, Principal, Role
    from carechart.auth.service import IdentityService, NewAccount, TokenGrant
    from carechart.config import Settings
    from carechart.context import AppContext
    from carechart.db.engine import unit_of_work
    from carechart.db.migrate import upgrade
    from carechart.db.schema import resource

    out: dict[str, Any] = {}
    with b.scratch_database("carechart_bench") as db, tempfile.TemporaryDirectory() as tmp:
        url = b.PG_URL_TEMPLATE.format(db=db)
        settings = Settings(data_dir=Path(tmp), database_url=url)
        ctx = AppContext.from_settings(settings)
        upgrade(ctx.engine)
        tenant = settings.default_tenant
        parts = from_context(ctx)
        ids: list[str] = []
        gp = b.BENCH_PRACTITIONER
        with ctx.store(write=True) as store:
            store.update("Practitioner", gp, {"resourceType": "Practitioner", "id": gp})
            for i in range(PATIENTS):
                ids.append(store.create("Patient", b.sample_patient(i, gp)).version.id)

        def identity(conn: Any) -> IdentityService:
            return IdentityService(conn, ctx.keyring, parts, tenant=tenant, now=parts.clock())

        scope = ("system/*.cruds",)
        with unit_of_work(ctx.engine, write=True) as conn:
            client = clients.create(
                conn,
                tenant=tenant,
                client_id="bench-backend",
                name="benchmark backend service",
                kind="backend",
                scope=scope,
                now=parts.clock(),
            )
            system_token = identity(conn).client_token(client, frozenset(scope), ClientInfo())
        password = "bench meadow lantern 0123456789"
        with unit_of_work(ctx.engine, write=True) as conn:
            identity(conn).create_account(
                NewAccount(
                    email="bench-physician@clinic.example",
                    full_name="Benchmark Physician",
                    role=Role.physician,
                    password=password,
                    practitioner_id=gp,
                ),
                actor=None,
                client=ClientInfo(),
            )
        with unit_of_work(ctx.engine, write=True) as conn:
            grant = (
                identity(conn)
                .login("bench-physician@clinic.example", password, ClientInfo())
                .result()
            )
        assert isinstance(grant, TokenGrant)
        physician_token = grant.access_token
        b.psql("ANALYZE", db)

        info = ClientInfo(source_ip="127.0.0.1", user_agent="bench", correlation_id="bench")
        phase = ["setup"]
        # Per persona and phase, over the reads of the counting pass: the phase's duration,
        # and what was left of it after its statements' driver calls (same read).
        timings: dict[str, dict[str, list[float]]] = {}
        rests: dict[str, dict[str, list[float]]] = {}
        commits: dict[str, dict[str, list[float]]] = {}
        read_sums: dict[str, float] = {}
        commit_sums: dict[str, float] = {}

        def authenticate(token: str) -> Principal:
            """As ``current_principal``: the tenant key, then one write unit of work."""
            ctx.keyring.active(tenant)
            with unit_of_work(ctx.engine, write=True) as conn:
                outcome = identity(conn).authenticate(token)
            return outcome.result()

        @contextmanager
        def timed(who: str | None) -> Iterator[Callable[[str], None]]:
            marks = [time.perf_counter()]

            def mark(name: str) -> None:
                phase[0] = name
                marks.append(time.perf_counter())

            yield mark
            marks.append(time.perf_counter())
            if who is not None:
                per = timings.setdefault(who, {p: [] for p in PHASES})
                rest = rests.setdefault(who, {p: [] for p in PHASES})
                commit = commits.setdefault(who, {p: [] for p in PHASES})
                for name, t0, t1 in zip(PHASES, marks, marks[1:], strict=False):
                    per[name].append((t1 - t0) * 1e6)
                    spent = read_sums.get(name, 0.0) + commit_sums.get(name, 0.0)
                    rest[name].append((t1 - t0) * 1e6 - spent)
                    commit[name].append(commit_sums.get(name, 0.0))

        def production(token: str, rid: str, who: str | None = None) -> None:
            """``GET /fhir/Patient/{id}`` below HTTP: ``current_principal``, then
            ``_in_store`` (guard, store, read, audit append, commit)."""
            with timed(who) as mark:
                phase[0] = "authenticate"
                principal = authenticate(token)
                mark("guard bind")
                guard = AccessGuard(principal, tenant, client=info, now=datetime.now(UTC))
                with ctx.store(write=False, guard=guard) as s:
                    mark("read")
                    s.read("Patient", rid)
                    mark("audit append + commit")
            phase[0] = "setup"

        system = authenticate(system_token.access_token)

        def query(rid: str) -> sa.Select[tuple[bytes | None]]:
            return sa.select(resource.c.body).where(
                resource.c.tenant_id == tenant,
                resource.c.resource_type == "Patient",
                resource.c.id == rid,
            )

        raw = psycopg.connect(f"host={b.HOST} user=root dbname={db}", autocommit=True)
        auto = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        plain = sa.create_engine(url)
        statements: dict[str, dict[str, list[str]]] = {}
        statement_us: dict[str, dict[str, list[list[float]]]] = {}
        started: dict[int, float] = {}
        seen: dict[str, int] = {}

        def before(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            started[id(cursor)] = time.perf_counter()

        def after(
            conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
        ) -> None:
            elapsed = (time.perf_counter() - started.pop(id(cursor), time.perf_counter())) * 1e6
            who = counting[0]
            if who is None:
                return
            per = statements.setdefault(who, {p: [] for p in PHASES})
            times = statement_us.setdefault(who, {p: [] for p in PHASES})
            read_sums[phase[0]] = read_sums.get(phase[0], 0.0) + elapsed
            k = seen.get(phase[0], 0)
            seen[phase[0]] = k + 1
            if len(per[phase[0]]) <= k:
                per[phase[0]].append(" ".join(statement.split())[:160])
                times[phase[0]].append([])
            times[phase[0]][k].append(elapsed)

        real_commit = ctx.engine.dialect.do_commit

        def timed_commit(dbapi_connection: Any) -> None:
            t0 = time.perf_counter()
            real_commit(dbapi_connection)
            if counting[0] is not None:
                elapsed = (time.perf_counter() - t0) * 1e6
                commit_sums[phase[0]] = commit_sums.get(phase[0], 0.0) + elapsed

        counting: list[str | None] = [None]
        try:
            sql = "SELECT body FROM resource WHERE tenant_id=%s AND resource_type=%s AND id=%s"

            def l_psycopg(i: int) -> None:
                assert raw.execute(sql, (tenant, "Patient", ids[i % PATIENTS])).fetchone()

            def l_auto(i: int) -> None:
                with auto.connect() as c:
                    assert c.execute(query(ids[i % PATIENTS])).first()

            def l_tx(i: int) -> None:
                with plain.connect() as c, c.begin():
                    assert c.execute(query(ids[i % PATIENTS])).first()

            def l_store(i: int) -> None:
                with ctx.store(write=False) as s:
                    s.read("Patient", ids[i % PATIENTS])

            def l_guarded(i: int) -> None:
                guard = AccessGuard(system, tenant, client=info, now=datetime.now(UTC))
                with ctx.store(write=False, guard=guard) as s:
                    s.read("Patient", ids[i % PATIENTS])

            def l_auth(i: int) -> None:
                authenticate(system_token.access_token)

            def l_full_system(i: int) -> None:
                production(system_token.access_token, ids[i % PATIENTS])

            def l_full_physician(i: int) -> None:
                production(physician_token, ids[i % PATIENTS])

            trace = Path(tmp) / "trace.txt"
            out["round_trips"] = {
                "store": _round_trips(ctx, lambda: l_store(0), trace),
                "guarded": _round_trips(ctx, lambda: l_guarded(0), trace),
                "full_system": _round_trips(ctx, lambda: l_full_system(0), trace),
                "full_physician": _round_trips(ctx, lambda: l_full_physician(0), trace),
            }
            sa.event.listen(ctx.engine, "before_cursor_execute", before)
            sa.event.listen(ctx.engine, "after_cursor_execute", after)
            ctx.engine.dialect.do_commit = timed_commit  # type: ignore[method-assign]
            tokens = (("system", system_token.access_token), ("physician", physician_token))
            for i in range(min(n, 200)):
                for who, token in tokens:
                    counting[0] = who
                    seen.clear()
                    read_sums.clear()
                    commit_sums.clear()
                    production(token, ids[i % PATIENTS], who)
            counting[0] = None
            sa.event.remove(ctx.engine, "before_cursor_execute", before)
            sa.event.remove(ctx.engine, "after_cursor_execute", after)
            ctx.engine.dialect.do_commit = real_commit  # type: ignore[method-assign]
            out["statements"] = statements
            out["statement_us"] = {
                who: {name: [statistics.median(v) for v in lists] for name, lists in per.items()}
                for who, per in statement_us.items()
            }
            out["statement_samples"] = min(n, 200)
            out["phase_us"] = {
                who: {name: statistics.median(v) for name, v in per.items() if v}
                for who, per in timings.items()
            }
            out["rest_us"] = {
                who: {name: statistics.median(v) for name, v in per.items() if v}
                for who, per in rests.items()
            }
            out["commit_us"] = {
                who: {name: statistics.median(v) for name, v in per.items() if v and max(v) > 0}
                for who, per in commits.items()
            }
            out["us"] = _interleaved(
                {
                    "psycopg": l_psycopg,
                    "sa_autocommit": l_auto,
                    "sa_tx": l_tx,
                    "store": l_store,
                    "guarded": l_guarded,
                    "auth_system": l_auth,
                    "full_system": l_full_system,
                    "full_physician": l_full_physician,
                },
                n,
                runs,
            )
            # CPU of this process (client and server code are one here) per read: what the
            # wall-clock figures spend waiting on PostgreSQL is the difference.
            out["cpu_us"] = {}
            for key, fn in (
                ("store", l_store),
                ("guarded", l_guarded),
                ("full_system", l_full_system),
                ("full_physician", l_full_physician),
            ):
                c0 = time.process_time()
                for i in range(n):
                    fn(i)
                out["cpu_us"][key] = (time.process_time() - c0) / n * 1e6
            out["care_patients"] = PATIENTS
            out["audit_records"] = int(b.psql("SELECT count(*) FROM audit_event", db))
        finally:
            raw.close()
            auto.dispose()
            plain.dispose()
            ctx.engine.dispose()
    return out


def run(n: int = 1000, runs: int = 7) -> dict[str, Any]:
    """Measure in a subprocess (keeps carechart and any stub out of the caller)."""
    done = subprocess.run(
        [b.PYTHON, str(Path(__file__)), "--json", "-n", str(n), "--runs", str(runs)],
        cwd=b.ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_read_layers failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    b.log("read layers: " + ", ".join(f"{k} {v:.0f}" for k, v in result["us"].items()))
    return result


def report(r: dict[str, Any], http_read_us: float | None = None) -> list[str]:
    us: dict[str, float] = r["us"]
    trips: dict[str, float] = r.get("round_trips", {})
    lines = [
        "## 5. Where a read's time goes (PostgreSQL, one thread, sequential)",
        "",
        "In-process, the same Patient-by-primary-key read through successive layers; "
        "median µs per read (layers interleaved). Round trips: libpq trace of one read "
        "(BEGIN and COMMIT included).",
        "",
        "| layer | µs per read | × raw psycopg | round trips | Python CPU µs |",
        "|---|---|---|---|---|",
    ]
    floor = us.get("psycopg", float("nan"))
    cpu: dict[str, float] = r.get("cpu_us", {})
    for key, label in LAYERS:
        v = us.get(key, float("nan"))
        rt = trips.get(key)
        lines.append(
            f"| {label} | {b.fmt(v)} | {v / floor:.1f} | {'' if rt is None else f'{rt:.0f}'} "
            f"| {b.fmt(cpu[key]) if key in cpu else ''} |"
        )
    if http_read_us is not None:
        lines.append(
            f"| HTTP `GET /fhir/Patient/{{id}}`, one client, system (scenario 3) | "
            f"{b.fmt(http_read_us)} | {http_read_us / floor:.1f} | | |"
        )
    store, guarded = us.get("store", float("nan")), us.get("guarded", float("nan"))
    full, doc = us.get("full_system", float("nan")), us.get("full_physician", float("nan"))
    lines += [
        "",
        f"- policy point + audit append on an authenticated read: **+{b.fmt(guarded - store)} "
        f"µs** ({guarded / store:.1f}× the unguarded store read); authentication of a system "
        f"token: {b.fmt(us.get('auth_system', float('nan')))} µs; the production path without "
        f"HTTP is {full / store:.1f}× the unguarded read (system) and {doc / store:.1f}× "
        f"(physician, {r.get('care_patients', PATIENTS):,} patients in care).",
        "",
        "SQL statements of one production-path read, by phase (SQLAlchemy "
        "`before_cursor_execute`; BEGIN/COMMIT are not statements here), and the median µs "
        f"of each phase over {r.get('statement_samples', 0)} reads of each persona "
        "(alternating, with the statement listener on):",
        "",
        "| phase | system: statements | system µs | physician: statements | physician µs |",
        "|---|---|---|---|---|",
    ]
    stmts: dict[str, dict[str, list[str]]] = r.get("statements", {})
    phase_us: dict[str, dict[str, float]] = r.get("phase_us", {})
    total = {"system": 0, "physician": 0}
    for name in PHASES:
        cells = []
        for who in ("system", "physician"):
            n = len(stmts.get(who, {}).get(name, []))
            total[who] += n
            cells += [str(n), b.fmt(phase_us.get(who, {}).get(name, float("nan")))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    whole = {w: sum(phase_us.get(w, {}).values()) for w in ("system", "physician")}
    lines += [
        f"| **total** | **{total['system']}** | {b.fmt(whole['system'])} | "
        f"**{total['physician']}** | {b.fmt(whole['physician'])} |",
        "",
    ]
    st_us: dict[str, dict[str, list[float]]] = r.get("statement_us", {})
    rest_us: dict[str, dict[str, float]] = r.get("rest_us", {})
    commit_us: dict[str, dict[str, float]] = r.get("commit_us", {})
    for who in ("system", "physician"):
        lines += [
            f"Statements of a {who} read, median µs each (the driver call: execute and "
            "round trip), the COMMIT (the DBAPI call), and 'rest' = the phase minus its "
            "statements and COMMIT in the same read (median): Python and BEGIN:",
            "",
        ]
        for name in PHASES:
            texts = stmts.get(who, {}).get(name, [])
            times = st_us.get(who, {}).get(name, [])
            for k, text in enumerate(texts):
                t = times[k] if k < len(times) else float("nan")
                lines.append(f"- {name}: {b.fmt(t)} µs `{text}`")
            if name in commit_us.get(who, {}):
                lines.append(f"- {name}: {b.fmt(commit_us[who][name])} µs COMMIT")
            if name in rest_us.get(who, {}):
                lines.append(f"- {name}: rest {b.fmt(rest_us[who][name])} µs")
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
