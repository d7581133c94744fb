"""Scenario 4: reads under load with wrk, on PostgreSQL, against two same-run baselines.

- reads: ``GET /fhir/Patient/{id}`` cycling over ~1,000 pre-created Patient ids (a generated
  wrk Lua script picks the ids), served by ``carechart serve`` (1 worker) on PostgreSQL, by
  two callers (``wrk -H "Authorization: Bearer ..."``):

  * **system**: a backend service with ``system/*.cruds`` (token minted directly, see
    ``benchlib.system_token``): authentication checks the client's registration; the guard
    reaches every patient;
  * **physician**: a physician user signed in through ``POST /api/v1/auth/login``, whose
    ``practitioner_id`` is every read Patient's ``generalPractitioner``: authentication also
    checks (and touches) the session, and the guard loads the care relationships (one more
    query) before it admits the Patient;

  every read is audited (one record, appended to the hash chain in the read's transaction);
- baseline (a): ``GET /bench/trivial`` of ``benchmarks/trivial_app.py``: the real app and
  uvicorn settings, answering the same bytes from memory (no authentication, no database);
- baseline (b): ``pgbench -S`` (primary-key SELECTs) on a pgbench-initialised scratch
  database: what PostgreSQL itself does for point reads with the same concurrency.

wrk runs with 16 connections, 2 threads, ``--latency``; trivial, system and physician runs
alternate so the noise of a shared machine falls on all. Reported: median requests/s and
p50/p99, and the ratio of each to the trivial route of the same run.

Run alone: ``.venv/bin/python benchmarks/bench_read_load.py [--duration S] [--reps N]``
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as b

CONNECTIONS = 16
THREADS = 2
PATIENTS = 1000
TARGET_RATIO = 0.60
TARGET_P99_MS = 25.0


@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


@dataclass
class LoadResult:
    duration: float
    reads: list[WrkRun] = field(default_factory=list)  # system client
    physician: list[WrkRun] = field(default_factory=list)
    trivial: list[WrkRun] = field(default_factory=list)
    pgbench_tps: float = float("nan")
    pgbench_latency_ms: float = float("nan")
    body_bytes: int = 0
    server_cpu_per_request_ms: float = float("nan")  # system client
    physician_cpu_per_request_ms: float = float("nan")
    single_reads: WrkRun | None = None  # wrk -t1 -c1
    single_physician: WrkRun | None = None
    single_trivial: WrkRun | None = None
    audit_records: int = 0  # audit_event rows at the end
    # What the server's PostgreSQL backends were doing during the wrk runs, per caller:
    # (wait_event_type, wait_event) or ("running", "") -> samples; and samples taken.
    waits: dict[str, collections.Counter[tuple[str, str]]] = field(default_factory=dict)
    wrk_missing: bool = False
    pgbench_error: str = ""
    patients: int = PATIENTS


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> WrkRun:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    if not rps:
        raise RuntimeError(f"could not parse wrk output:\n{output}")
    return WrkRun(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


def lua_script(path: Path, ids: list[str] | None, fixed_path: str | None = None) -> None:
    """A wrk script: each request takes the next id (threads start at different offsets)."""
    accept = 'wrk.headers["Accept"] = "application/fhir+json"\n'
    if fixed_path is not None:
        path.write_text(accept + f'wrk.path = "{fixed_path}"\n')
        return
    assert ids
    table = ",\n".join(f'  "{i}"' for i in ids)
    path.write_text(
        accept
        + f"local ids = {{\n{table}\n}}\n"
        + "local n = #ids\n"
        + "local k = 0\n"
        + "local threads = 0\n"
        + "function setup(thread)\n"
        + "  threads = threads + 1\n"
        + '  thread:set("start", threads * 397)\n'
        + "end\n"
        + "function request()\n"
        + "  k = k + 1\n"
        + "  local id = ids[((start or 0) + k) % n + 1]\n"
        + '  return wrk.format("GET", "/fhir/Patient/" .. id)\n'
        + "end\n"
    )


def wrk(
    port: int,
    script: Path,
    duration: float,
    threads: int = THREADS,
    connections: int = CONNECTIONS,
    headers: dict[str, str] | None = None,
) -> WrkRun:
    """``headers``: sent with every request (``-H``), e.g. ``Server.auth()``."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        *(arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")),
        "-s",
        str(script),
        f"http://{b.HOST}:{port}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse_wrk(done.stdout)


class WaitSampler:
    """Samples ``pg_stat_activity`` of one database every ``interval`` seconds in a thread:
    what each active backend is waiting on (the audit chain's advisory lock, a row lock,
    the WAL flush of a commit...) or running. One extra connection; ~10 queries/s."""

    def __init__(self, database: str, interval: float = 0.1) -> None:
        self.database = database
        self.interval = interval
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg  # the venv's driver; carechart itself is not imported

        query = (
            "SELECT coalesce(wait_event_type, 'running'), coalesce(wait_event, '') "
            "FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(
            f"host={b.HOST} user=root dbname={self.database}", autocommit=True
        ) as conn:
            while not self._stop.wait(self.interval):
                for kind, event in conn.execute(query, (self.database,)).fetchall():
                    self.counts[(str(kind), str(event))] += 1
                self.counts[("", "samples")] += 1

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _waits_text(counts: collections.Counter[tuple[str, str]]) -> str:
    samples = counts.get(("", "samples"), 0)
    if not samples:
        return "n/a"
    items = [(k, n) for k, n in counts.most_common() if k != ("", "samples")]
    active = sum(n for _, n in items)
    parts = [
        f"{(kind + ':' + event) if event else kind} {n / samples:.1f}"
        for (kind, event), n in items[:5]
    ]
    return f"{active / samples:.1f} active backends on average: " + ", ".join(parts)


def pgbench(duration: float) -> tuple[float, float]:
    """(tps, average latency ms) of ``pgbench -S -c 16 -j 2`` on a fresh scale-10 database."""
    common = ["-h", b.HOST, "-U", "root"]
    with b.scratch_database("carechart_pgbench") as db:
        subprocess.run(
            ["pgbench", *common, "-i", "-q", "-s", "10", db],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        done = subprocess.run(
            [
                "pgbench",
                *common,
                *("-S", "-c", str(CONNECTIONS), "-j", str(THREADS)),
                *("-T", str(max(1, round(duration))), db),
            ],
            capture_output=True,
            text=True,
            timeout=duration + 120,
            check=True,
        )
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if not tps:
        raise RuntimeError(f"could not parse pgbench output:\n{done.stdout}")
    return float(tps.group(1)), float(lat.group(1)) if lat else float("nan")


def run(duration: float, reps: int, patients: int = PATIENTS) -> LoadResult:
    result = LoadResult(duration=duration, patients=patients)
    if shutil.which("wrk") is None:
        result.wrk_missing = True
        b.log("wrk is missing (apt-get install -y wrk); skipping the wrk runs")
    else:
        with tempfile.TemporaryDirectory(prefix="carechart-wrk-") as tmp:
            work = Path(tmp)
            with b.server("postgresql") as srv:
                ids = b.create_patients(srv, patients, practitioner=b.BENCH_PRACTITIONER)
                # Steady state: autovacuum would have analysed the table by now. Without
                # statistics the planner picks the (tenant, type, last_updated) index and
                # filters on id, i.e. scans all Patients per read (see RESULTS.md).
                assert srv.database
                b.psql("ANALYZE", srv.database)
                doctor = srv.physician(b.BENCH_PRACTITIONER)
                conn = srv.connection()
                status, _, body = b.request(
                    conn, "GET", f"/fhir/Patient/{ids[0]}", None, srv.auth()
                )
                b.expect(status, 200, body, "read Patient (system)")
                status, _, data = b.request(
                    conn, "GET", f"/fhir/Patient/{ids[1]}", None, doctor.auth()
                )
                b.expect(status, 200, data, "read Patient (physician)")
                conn.close()
                result.body_bytes = len(body)
                (work / "body.json").write_bytes(body)
                lua_script(work / "reads.lua", ids)
                lua_script(work / "trivial.lua", None, "/bench/trivial")
                trivial_argv = [
                    str(b.BENCH_DIR / "trivial_app.py"),
                    "--body-file",
                    str(work / "body.json"),
                ]
                reads = work / "reads.lua"
                with b.server("postgresql", argv=trivial_argv) as triv:
                    b.log(f"wrk: {patients} patients created; warming up")

                    def system(seconds: float, t: int = THREADS, c: int = CONNECTIONS) -> WrkRun:
                        auth = srv.auth(valid_for=seconds + 30)
                        return wrk(srv.port, reads, seconds, t, c, auth)

                    def physician(seconds: float, t: int = THREADS, c: int = CONNECTIONS) -> WrkRun:
                        return wrk(srv.port, reads, seconds, t, c, doctor.auth(seconds + 30))

                    system(2)
                    physician(2)
                    wrk(triv.port, work / "trivial.lua", 2)
                    cpu = {"system": [0.0, 0], "physician": [0.0, 0]}
                    for i in range(reps):
                        run_t = wrk(triv.port, work / "trivial.lua", duration)
                        result.trivial.append(run_t)
                        runs: dict[str, WrkRun] = {}
                        for name, fn in (("system", system), ("physician", physician)):
                            cpu0 = b.cpu_seconds(srv.pid)
                            with WaitSampler(srv.database) as sampler:
                                runs[name] = fn(duration)
                            counts = result.waits.setdefault(name, collections.Counter())
                            counts.update(sampler.counts)
                            cpu[name][0] += b.cpu_seconds(srv.pid) - cpu0
                            cpu[name][1] += runs[name].requests
                        result.reads.append(runs["system"])
                        result.physician.append(runs["physician"])
                        b.log(
                            f"wrk rep {i + 1}: system {runs['system'].rps:,.0f} req/s p99 "
                            f"{runs['system'].p99_ms:.1f} ms | physician "
                            f"{runs['physician'].rps:,.0f} req/s p99 "
                            f"{runs['physician'].p99_ms:.1f} ms | trivial {run_t.rps:,.0f} req/s "
                            f"p99 {run_t.p99_ms:.1f} ms"
                        )
                    single = min(5.0, duration)
                    result.single_trivial = wrk(triv.port, work / "trivial.lua", single, 1, 1)
                    result.single_reads = system(single, 1, 1)
                    result.single_physician = physician(single, 1, 1)
                    if cpu["system"][1]:
                        result.server_cpu_per_request_ms = (
                            cpu["system"][0] / cpu["system"][1] * 1000
                        )
                    if cpu["physician"][1]:
                        result.physician_cpu_per_request_ms = (
                            cpu["physician"][0] / cpu["physician"][1] * 1000
                        )
                result.audit_records = int(b.psql("SELECT count(*) FROM audit_event", srv.database))
    if shutil.which("pgbench") is None:
        result.pgbench_error = "pgbench missing"
    else:
        try:
            result.pgbench_tps, result.pgbench_latency_ms = pgbench(duration)
            b.log(f"pgbench -S: {result.pgbench_tps:,.0f} tps")
        except (subprocess.SubprocessError, RuntimeError) as exc:
            result.pgbench_error = str(exc)[:300]
    return result


def _row(label: str, runs: list[WrkRun], triv_rps: float, bold: bool = True) -> str:
    rps = b.median([x.rps for x in runs])
    p99 = b.median([x.p99_ms for x in runs])
    star = "**" if bold else ""
    ratio = f"{rps / triv_rps * 100:.0f}%" if triv_rps else "n/a"
    return (
        f"| {label} | {star}{b.fmt(rps)}{star} | {b.fmt(b.median([x.p50_ms for x in runs]), 2)} "
        f"| {star}{b.fmt(p99, 2)}{star} | {ratio} | {sum(x.errors for x in runs)} |"
    )


def report(r: LoadResult) -> list[str]:
    lines = [
        "## 4. Reads under load (PostgreSQL)",
        "",
        f"`wrk -t{THREADS} -c{CONNECTIONS} -d{round(r.duration)}s --latency -H 'Authorization: "
        f"Bearer …'` on `GET /fhir/Patient/{{id}}` cycling over {r.patients:,} pre-created "
        f"Patients ({r.body_bytes} B body), 1 server worker. Callers: **system** = backend "
        "service (`system/*.cruds`); **physician** = signed-in physician user, general "
        f"practitioner of all {r.patients:,} Patients (care-relationship path). Every read is "
        "authenticated, guarded and audited in its transaction. Trivial, system and physician "
        f"runs alternate, {len(r.reads)} runs each, medians shown. wrk shares the 2 cores with "
        "the server and PostgreSQL.",
        "",
    ]
    if r.wrk_missing:
        lines += ["wrk is not installed: `apt-get install -y wrk`.", ""]
        return lines
    triv_rps = b.median([x.rps for x in r.trivial])
    reads_rps = b.median([x.rps for x in r.reads])
    doc_rps = b.median([x.rps for x in r.physician])
    errors = sum(x.errors for x in r.reads + r.physician + r.trivial)
    lines += [
        "| what | requests/s | p50 ms | p99 ms | / trivial | errors |",
        "|---|---|---|---|---|---|",
        _row("`GET /fhir/Patient/{id}`, system client", r.reads, triv_rps),
        _row("`GET /fhir/Patient/{id}`, physician (care relationship)", r.physician, triv_rps),
        _row("baseline (a) `GET /bench/trivial` (same app, in memory)", r.trivial, triv_rps, False),
        f"| baseline (b) `pgbench -S -c {CONNECTIONS} -j {THREADS}` (scale 10) | "
        f"{b.fmt(r.pgbench_tps)} tps | avg {b.fmt(r.pgbench_latency_ms, 2)} | – | – | "
        f"{r.pgbench_error or '0'} |",
        "",
    ]
    for label, rps, runs in (("system", reads_rps, r.reads), ("physician", doc_rps, r.physician)):
        ratio = rps / triv_rps if triv_rps else float("nan")
        p99 = b.median([x.p99_ms for x in runs])
        lines.append(
            f"- {label}: reads / trivial route **{ratio * 100:.0f}%** (target ≥ "
            f"{TARGET_RATIO * 100:.0f}%: {'met' if ratio >= TARGET_RATIO else 'MISSED'}); "
            f"p99 **{p99:.1f} ms** (target < {TARGET_P99_MS:.0f} ms: "
            f"{'met' if p99 < TARGET_P99_MS else 'MISSED'})"
        )
    if r.pgbench_tps == r.pgbench_tps:
        lines.append(
            f"- reads / pgbench -S: system {reads_rps / r.pgbench_tps * 100:.1f}%, physician "
            f"{doc_rps / r.pgbench_tps * 100:.1f}%"
        )
    else:
        lines.append("- pgbench: n/a")
    lines.append(
        f"- server CPU per read: system {b.fmt(r.server_cpu_per_request_ms, 3)} ms, physician "
        f"{b.fmt(r.physician_cpu_per_request_ms, 3)} ms (server process only, measured during "
        "the wrk runs)"
    )
    if r.single_reads and r.single_trivial and r.single_physician:
        sr, sd, st = r.single_reads, r.single_physician, r.single_trivial
        lines.append(
            f"- one connection (`wrk -t1 -c1`): trivial {b.fmt(st.rps)} req/s, p50 "
            f"{st.p50_ms:.2f} ms; system {b.fmt(sr.rps)} req/s, p50 {sr.p50_ms:.2f} ms "
            f"(+{b.fmt((sr.p50_ms - st.p50_ms) * 1000)} µs over the stack); physician "
            f"{b.fmt(sd.rps)} req/s, p50 {sd.p50_ms:.2f} ms "
            f"(+{b.fmt((sd.p50_ms - st.p50_ms) * 1000)} µs)"
        )
    lines.append(f"- audit records written by the run: {r.audit_records:,}")
    for who in ("system", "physician"):
        if who in r.waits:
            lines.append(
                f"- PostgreSQL during the {who} runs (`pg_stat_activity` every 0.1 s, "
                f"wait_event_type:wait_event, mean backends per sample): "
                f"{_waits_text(r.waits[who])}"
            )
    if errors:
        lines.append(f"- **{errors} wrk errors / non-2xx responses**: figures are suspect")
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    print("\n".join(report(run(args.duration, args.reps))))


if __name__ == "__main__":
    main()
