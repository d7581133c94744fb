"""All benchmark scenarios; prints a markdown report and writes ``benchmarks/out/latest.md``.

``make bench`` = ``.venv/bin/python benchmarks/run_all.py``           (~12-15 minutes)
quick version:   ``.venv/bin/python benchmarks/run_all.py --quick``   (~6 minutes)

Scenarios (validation, encryption, authentication, the policy point and the audit trail on,
as the server runs normally; rate limits off):
1. validation rate (``bench_validation.py``, one core)
2. ingest of the Synthea transaction Bundles over HTTP, SQLite and PostgreSQL
3. single-client create and read rate over HTTP, SQLite and PostgreSQL
4. reads under load (wrk) on PostgreSQL, as a backend service and as a physician (care
   relationship), against a trivial route and pgbench -S
5. where a read's time goes: the same read through successive layers, in-process, with the
   cost of authentication, the policy point and the audit append (statements per phase)

Every HTTP request carries a bearer token: a backend service with ``system/*.cruds``
registered directly in the server's database (``benchlib.system_token``), or a physician
signed in through ``/api/v1/auth/login`` (scenario 4). Tokens last 10 minutes and are
re-minted between phases.

Needs: PostgreSQL on 127.0.0.1:5432 (trust auth, user root), ``psql``, ``pgbench``, ``wrk``.
Every server and scratch database is created fresh and removed at the end.

``--stub FILE`` (or ``CARECHART_BENCH_STUB``) preloads a stand-in for
``carechart.fhir.search`` in the servers; the report then says so on its first lines.
Benchmarks are not tests: they print, and never fail on a missed target.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import bench_crud
import bench_ingest
import bench_read_layers
import bench_read_load
import bench_validation_report
import benchlib as b


def _search_importable() -> bool:
    code = "from carechart.fhir.search import compartment_patients, index_resource, search"
    done = subprocess.run([b.PYTHON, "-c", code], capture_output=True, timeout=120, cwd=b.ROOT)
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="~2 minute version")
    parser.add_argument("--stub", type=Path, help="preload this carechart.fhir.search stand-in")
    parser.add_argument(
        "--only",
        choices=["validation", "ingest", "crud", "load", "layers"],
        action="append",
        help="run only these scenarios (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=b.OUT_DIR / "latest.md")
    args = parser.parse_args()

    if args.stub:
        os.environ["CARECHART_BENCH_STUB"] = str(args.stub.resolve())
    stub = os.environ.get("CARECHART_BENCH_STUB")
    if not stub and not _search_importable():
        print(
            "carechart.fhir.search cannot be imported yet: the server cannot start.\n"
            "Run with --stub /path/to/stubplugin.py to measure against a stand-in.",
            file=sys.stderr,
        )
        return 2

    quick = args.quick
    cfg = {
        "ingest_rounds": 3 if quick else 10,
        "ingest_budget": 20.0 if quick else 90.0,
        "crud_window": 1.0 if quick else 2.0,
        "crud_windows": 3 if quick else 5,
        "load_duration": 5.0 if quick else 15.0,
        "load_reps": 1 if quick else 2,
        # Scenario 5 reports per-read figures and ratios; a production-path read takes
        # 10-40 ms here, so fewer reads per layer than the 1,000 x 7 of the pre-policy runs.
        "layers_n": 100 if quick else 200,
        "layers_runs": 3 if quick else 5,
    }
    wanted = set(args.only or ["validation", "ingest", "crud", "load", "layers"])
    started = time.monotonic()
    now = datetime.now(UTC)
    info = b.machine()

    sections: list[str] = [
        f"# Carechart benchmarks — {now:%Y-%m-%d %H:%M} UTC{' (quick)' if quick else ''}",
        "",
    ]
    if stub:
        sections += [
            f"> **Measured with a STUB `carechart.fhir.search`** (`{stub}`): search indexing "
            "is a no-op, so write figures exclude index maintenance. Re-run `make bench` after "
            "the search module is integrated.",
            "",
        ]
    sections += [
        f"Command: `.venv/bin/python benchmarks/run_all.py{' --quick' if quick else ''}"
        f"{' --stub ' + stub if stub else ''}`",
        "",
        "## Machine",
        "",
        f"- code: {info['code']}",
        f"- nproc: {info['nproc']}; CPU: {info['cpu']}; kernel {info['kernel']}",
        f"- PostgreSQL {info['postgresql']}; Python {info['python']}; {info['wrk']}",
        f"- load average at start: {info['load average (start)']}",
        "- `free -h`:",
        "",
        "```",
        info["free -h"],
        "```",
        "",
        "Shared, noisy 2-core machine: figures are medians, and the baselines were measured in "
        "the same run. Every request is authenticated (bearer token), passes the policy point "
        "and is audited in its transaction; rate limits are off in the benchmark servers.",
        "",
    ]

    def scenario(name: str, fn: Callable[[], list[str]]) -> None:
        if name not in wanted:
            return
        b.log(f"scenario {name} ...")
        t0 = time.monotonic()
        cpu0 = b.cpu_times()
        load0 = Path("/proc/loadavg").read_text().split()[0]
        try:
            lines = fn()
            load1 = Path("/proc/loadavg").read_text().split()[0]
            busy = b.busy_summary(cpu0, b.cpu_times())
            # Keep the scenario's trailing blank line after the context note.
            sections.extend(lines[:-1] if lines and lines[-1] == "" else lines)
            sections.extend(
                [
                    "",
                    f"_Context: {time.monotonic() - t0:.0f} s; {busy}; "
                    f"load average {load0} → {load1}._",
                    "",
                ]
            )
        except Exception as exc:  # a failed scenario is reported, the others still run
            traceback.print_exc()
            sections.extend(
                [f"## {name}: FAILED", "", f"`{type(exc).__name__}: {str(exc)[:800]}`", ""]
            )
        b.log(f"scenario {name} done in {time.monotonic() - t0:.0f} s")

    scenario("validation", lambda: bench_validation_report.report(bench_validation_report.run()))
    scenario(
        "ingest",
        lambda: bench_ingest.report(
            [
                bench_ingest.run(engine, int(cfg["ingest_rounds"]), cfg["ingest_budget"])
                for engine in ("sqlite", "postgresql")
            ]
        ),
    )
    crud_results: list[bench_crud.CrudResult] = []

    def crud() -> list[str]:
        crud_results.extend(
            bench_crud.run(engine, cfg["crud_window"], int(cfg["crud_windows"]))
            for engine in ("sqlite", "postgresql")
        )
        return bench_crud.report(crud_results, cfg["crud_window"], int(cfg["crud_windows"]))

    scenario("crud", crud)
    scenario(
        "load",
        lambda: bench_read_load.report(
            bench_read_load.run(cfg["load_duration"], int(cfg["load_reps"]))
        ),
    )
    scenario(
        "layers",
        lambda: bench_read_layers.report(
            bench_read_layers.run(int(cfg["layers_n"]), int(cfg["layers_runs"])),
            next(
                (1e6 / b.median(r.read_rates) for r in crud_results if r.engine == "postgresql"),
                None,
            ),
        ),
    )
    with_load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    sections += [
        f"Total time {time.monotonic() - started:.0f} s; load average at end: {with_load}.",
        "",
    ]

    text = "\n".join(sections)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    b.log(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
