"""Where the server's time goes: py-spy on a real server under a benchmark load.

``.venv/bin/python benchmarks/profile_server.py read|ingest|create [--engine E] [--seconds S]
[--persona system|physician] [--gil]``

Starts ``carechart serve`` (fresh database), applies the load (``read``: wrk on
``GET /fhir/Patient/{id}`` as in scenario 4, as the system client or, with ``--persona
physician``, as a signed-in physician whose patients they are; ``ingest``: the Synthea
bundles POSTed in a loop as in scenario 2; ``create``: sequential ``POST /fhir/Patient`` as in
scenario 3), every request with a bearer token (``benchlib.Server.auth``), records the server
with ``py-spy record --format raw`` and prints the hottest functions by own time and by
inclusive time. The collapsed stacks are kept in
``benchmarks/out/profile-<scenario>-<engine>.txt`` (feed them to a flame graph tool). Needs py-spy in the venv
(``.venv/bin/python -m pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import bench_ingest
import bench_read_load
import benchlib as b


def _py_spy() -> str:
    candidate = Path(b.PYTHON).parent / "py-spy"
    found = str(candidate) if candidate.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is missing: .venv/bin/python -m pip install py-spy")
    return found


def _record(pid: int, seconds: float, out: Path, gil: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [_py_spy(), "record", "--pid", str(pid), "--duration", str(round(seconds))]
        + ["--rate", "200", "--nolineno", "--format", "raw", "--output", str(out)]
        + (["--gil"] if gil else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def summarise(raw: Path, top: int = 25) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    if not total:
        return ["(no samples)"]

    def short(frame: str) -> str:
        return frame.replace(str(b.ROOT / "src") + "/", "").replace(str(b.ROOT) + "/", "")

    lines = [f"{total} samples", "", "top by own time:"]
    lines += [f"  {n / total * 100:5.1f}%  {short(f)}" for f, n in own.most_common(top)]
    lines += ["", "top by inclusive time (carechart frames):"]
    ours = [(f, n) for f, n in incl.most_common() if "carechart" in f]
    lines += [f"  {n / total * 100:5.1f}%  {short(f)}" for f, n in ours[:top]]
    lines += ["", "top by inclusive time (all frames):"]
    lines += [f"  {n / total * 100:5.1f}%  {short(f)}" for f, n in incl.most_common(top)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["read", "ingest", "create"])
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument(
        "--persona",
        choices=["system", "physician"],
        default="system",
        help="read: the caller (backend service, or a physician with a care relationship)",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (Python CPU time, not waits)",
    )
    args = parser.parse_args()
    b.OUT_DIR.mkdir(exist_ok=True)
    persona = f"-{args.persona}" if args.scenario == "read" else ""
    name = f"profile-{args.scenario}{persona}-{args.engine}{'-gil' if args.gil else ''}"
    with tempfile.TemporaryDirectory(prefix="carechart-prof-") as tmp, b.server(args.engine) as srv:
        raw = Path(tmp) / "raw.txt"
        if args.scenario == "read":
            ids = b.create_patients(
                srv, bench_read_load.PATIENTS, practitioner=b.BENCH_PRACTITIONER
            )
            if srv.database:
                b.psql("ANALYZE", srv.database)
            caller = srv.physician().auth if args.persona == "physician" else srv.auth
            script = Path(tmp) / "reads.lua"
            bench_read_load.lua_script(script, ids)
            bench_read_load.wrk(srv.port, script, 2, headers=caller(60))  # warm-up
            headers = caller(args.seconds + 30)
            spy = _record(srv.pid, args.seconds, raw, args.gil)
            run = bench_read_load.wrk(srv.port, script, args.seconds + 1, headers=headers)
            print(f"wrk during profiling: {run.rps:,.0f} req/s, p99 {run.p99_ms:.1f} ms")
        elif args.scenario == "create":
            stop = time.monotonic() + args.seconds + 2
            made = [0]

            def creates() -> None:
                conn = srv.connection()
                try:
                    while time.monotonic() < stop:
                        body = json.dumps(b.sample_patient(made[0])).encode()
                        status, _, data = b.request(conn, "POST", "/fhir/Patient", body, srv.auth())
                        b.expect(status, 201, data, "create Patient")
                        made[0] += 1
                finally:
                    conn.close()

            srv.auth(args.seconds + 60)  # minted before the load and the profile start
            thread = threading.Thread(target=creates)
            thread.start()
            time.sleep(0.5)
            spy = _record(srv.pid, args.seconds, raw, args.gil)
            thread.join(timeout=args.seconds + 60)
            print(f"created {made[0]:,} Patients (one client, sequential) while profiling")
        else:
            bundles = bench_ingest.load_bundles()
            stop = time.monotonic() + args.seconds + 2
            done = [0]

            def load() -> None:
                conn = srv.connection(timeout=300)
                try:
                    while time.monotonic() < stop:
                        for _, body, n in bundles:
                            status, _, data = b.request(conn, "POST", "/fhir", body, srv.auth())
                            b.expect(status, 200, data, "POST bundle")
                            done[0] += n
                finally:
                    conn.close()

            srv.auth(args.seconds + 60)
            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(0.5)
            spy = _record(srv.pid, args.seconds, raw, args.gil)
            thread.join(timeout=args.seconds + 120)
            print(f"ingested {done[0]:,} resources while profiling")
        _, err = spy.communicate(timeout=args.seconds + 60)
        if not raw.exists():
            raise SystemExit(f"py-spy failed: {err.decode()[-2000:]}")
        print(f"# {name}\n")
        print("\n".join(summarise(raw)))
        print(f"\nraw stacks: {b.OUT_DIR / (name + '.txt')}")
        shutil.copy(raw, b.OUT_DIR / f"{name}.txt")


if __name__ == "__main__":
    main()
