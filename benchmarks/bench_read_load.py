"""Scenario 4: reads under load with wrk, on PostgreSQL, against two same-run baselines.

- reads: ``GET /fhir/Patient/{id}`` cycling over ~1,000 pre-created Patient ids (a generated
  wrk Lua script picks the ids), served by ``carechart serve`` (1 worker) on PostgreSQL;
- baseline (a): ``GET /bench/trivial`` of ``benchmarks/trivial_app.py``: the real app and
  uvicorn settings, answering the same bytes from memory;
- baseline (b): ``pgbench -S`` (primary-key SELECTs) on a pgbench-initialised scratch
  database: what PostgreSQL itself does for point reads with the same concurrency.

wrk runs with 16 connections, 2 threads, ``--latency``; reads and trivial alternate so the
noise of a shared machine falls on both. Reported: median requests/s and p50/p99.

Run alone: ``.venv/bin/python benchmarks/bench_read_load.py [--duration S] [--reps N]``
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
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
    reads: list[WrkRun] = field(default_factory=list)
    trivial: list[WrkRun] = field(default_factory=list)
    pgbench_tps: float = float("nan")
    pgbench_latency_ms: float = float("nan")
    body_bytes: int = 0
    server_cpu_per_request_ms: float = float("nan")
    single_reads: WrkRun | None = None  # wrk -t1 -c1
    single_trivial: WrkRun | None = None
    wrk_missing: bool = False
    pgbench_error: str = ""


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
    port: int, script: Path, duration: float, threads: int = THREADS, connections: int = CONNECTIONS
) -> WrkRun:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://{b.HOST}:{port}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse_wrk(done.stdout)


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
    result = LoadResult(duration=duration)
    if shutil.which("wrk") is None:
        result.wrk_missing = True
        b.log("wrk is missing (apt-get install -y wrk); skipping the wrk runs")
    else:
        with tempfile.TemporaryDirectory(prefix="carechart-wrk-") as tmp:
            work = Path(tmp)
            with b.server("postgresql") as srv:
                ids = b.create_patients(srv, patients)
                # Steady state: autovacuum would have analysed the table by now. Without
                # statistics the planner picks the (tenant, type, last_updated) index and
                # filters on id, i.e. scans all Patients per read (see RESULTS.md).
                assert srv.database
                b.psql("ANALYZE", srv.database)
                conn = srv.connection()
                status, _, body = b.request(conn, "GET", f"/fhir/Patient/{ids[0]}")
                conn.close()
                b.expect(status, 200, body, "read Patient")
                result.body_bytes = len(body)
                (work / "body.json").write_bytes(body)
                lua_script(work / "reads.lua", ids)
                lua_script(work / "trivial.lua", None, "/bench/trivial")
                trivial_argv = [
                    str(b.BENCH_DIR / "trivial_app.py"),
                    "--body-file",
                    str(work / "body.json"),
                ]
                with b.server("postgresql", argv=trivial_argv) as triv:
                    b.log(f"wrk: {patients} patients created; warming up")
                    wrk(srv.port, work / "reads.lua", 2)
                    wrk(triv.port, work / "trivial.lua", 2)
                    cpu_requests = 0
                    cpu_used = 0.0
                    for i in range(reps):
                        run_t = wrk(triv.port, work / "trivial.lua", duration)
                        result.trivial.append(run_t)
                        cpu0 = b.cpu_seconds(srv.pid)
                        run_r = wrk(srv.port, work / "reads.lua", duration)
                        cpu_used += b.cpu_seconds(srv.pid) - cpu0
                        cpu_requests += run_r.requests
                        result.reads.append(run_r)
                        b.log(
                            f"wrk rep {i + 1}: reads {run_r.rps:,.0f} req/s p99 {run_r.p99_ms:.1f} ms"
                            f" | trivial {run_t.rps:,.0f} req/s p99 {run_t.p99_ms:.1f} ms"
                        )
                    single = min(5.0, duration)
                    result.single_trivial = wrk(triv.port, work / "trivial.lua", single, 1, 1)
                    result.single_reads = wrk(srv.port, work / "reads.lua", single, 1, 1)
                    if cpu_requests:
                        result.server_cpu_per_request_ms = cpu_used / cpu_requests * 1000
    if shutil.which("pgbench") is None:
        result.pgbench_error = "pgbench missing"
    else:
        try:
            result.pgbench_tps, result.pgbench_latency_ms = pgbench(duration)
            b.log(f"pgbench -S: {result.pgbench_tps:,.0f} tps")
        except (subprocess.SubprocessError, RuntimeError) as exc:
            result.pgbench_error = str(exc)[:300]
    return result


def report(r: LoadResult) -> list[str]:
    lines = [
        "## 4. Reads under load (PostgreSQL)",
        "",
        f"`wrk -t{THREADS} -c{CONNECTIONS} -d{round(r.duration)}s --latency` on "
        f"`GET /fhir/Patient/{{id}}` cycling over {PATIENTS:,} pre-created Patients "
        f"({r.body_bytes} B body), 1 server worker; reads and the trivial baseline alternate, "
        f"{len(r.reads)} runs each, medians shown. wrk shares the 2 cores with the server.",
        "",
    ]
    if r.wrk_missing:
        lines += ["wrk is not installed: `apt-get install -y wrk`.", ""]
    else:
        reads_rps = b.median([x.rps for x in r.reads])
        triv_rps = b.median([x.rps for x in r.trivial])
        ratio = reads_rps / triv_rps if triv_rps else float("nan")
        p99 = b.median([x.p99_ms for x in r.reads])
        errors = sum(x.errors for x in r.reads) + sum(x.errors for x in r.trivial)
        lines += [
            "| what | requests/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|",
            f"| `GET /fhir/Patient/{{id}}` | **{b.fmt(reads_rps)}** | "
            f"{b.fmt(b.median([x.p50_ms for x in r.reads]), 2)} | **{b.fmt(p99, 2)}** | "
            f"{sum(x.errors for x in r.reads)} |",
            f"| baseline (a) `GET /bench/trivial` (same app, in memory) | {b.fmt(triv_rps)} | "
            f"{b.fmt(b.median([x.p50_ms for x in r.trivial]), 2)} | "
            f"{b.fmt(b.median([x.p99_ms for x in r.trivial]), 2)} | "
            f"{sum(x.errors for x in r.trivial)} |",
            f"| baseline (b) `pgbench -S -c {CONNECTIONS} -j {THREADS}` (scale 10) | "
            f"{b.fmt(r.pgbench_tps)} tps | avg {b.fmt(r.pgbench_latency_ms, 2)} | – | "
            f"{r.pgbench_error or '0'} |",
            "",
            f"- reads / trivial route: **{ratio * 100:.0f}%** (target ≥ {TARGET_RATIO * 100:.0f}%: "
            f"{'met' if ratio >= TARGET_RATIO else 'MISSED'})",
            f"- reads p99: **{p99:.1f} ms** (target < {TARGET_P99_MS:.0f} ms: "
            f"{'met' if p99 < TARGET_P99_MS else 'MISSED'})",
            f"- reads / pgbench -S: {reads_rps / r.pgbench_tps * 100:.1f}%"
            if r.pgbench_tps == r.pgbench_tps
            else "- pgbench: n/a",
            f"- server CPU per read: {b.fmt(r.server_cpu_per_request_ms, 3)} ms "
            "(server process only, measured during the wrk runs)",
        ]
        if r.single_reads and r.single_trivial:
            sr, st = r.single_reads, r.single_trivial
            lines += [
                f"- one connection (`wrk -t1 -c1`): reads {b.fmt(sr.rps)} req/s, p50 "
                f"{sr.p50_ms:.2f} ms; trivial {b.fmt(st.rps)} req/s, p50 {st.p50_ms:.2f} ms "
                f"→ the read path adds {b.fmt((sr.p50_ms - st.p50_ms) * 1000)} µs per request "
                "over the stack",
            ]
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
