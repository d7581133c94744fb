"""HL7 v2 ingest: ORU^R01 messages per second through MLLP, end to end, on PostgreSQL.

A real ``carechart hl7 listen`` process (the asyncio MLLP listener, the HL7 service, the
resource store, the audit chain, the outbox with its background dispatcher) on a fresh
PostgreSQL database; clients send ORU^R01 messages over MLLP, each connection in original
mode (the next message only after the ACK of the previous one, and the ACK comes after the
commit). Every ACK is checked (AA, MSA-2 = the control id sent) and at the end the stored
DiagnosticReports are counted.

Each message: PID (a patient pool, so most messages match an existing patient by MRN and
some create one), ORC, OBR, four OBX (one beyond a critical limit), an NTE, an SPM: seven
resources written, one ``lab-result.received`` event, one message-log row, and the audit
records of all of it.

Reported: per run, messages/s (wall clock) and messages per CPU-second of the listener
process (its cost on one core, insensitive to the noise of a shared machine; PostgreSQL's
own CPU is not included); the median over runs; ACK latency p50/p99. Target (issue #6):
≥ 500 messages/s per core.

Run alone: ``.venv/bin/python benchmarks/bench_hl7.py [--messages N] [--runs R]
[--connections C] [--engine postgresql|sqlite]``. Needs PostgreSQL on 127.0.0.1:5432 (trust,
user ``root``) and ``psql``, like the other benchmarks. The listener is always stopped.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as b

TARGET_PER_CORE = 500.0
TENANT = "bench-hl7"
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"


def oru(control: str, mrn: str, rng: random.Random) -> bytes:
    glucose = rng.randint(60, 200)
    segments = [
        f"MSH|^~\\&|BENCHLAB|BENCHLAB^2.16.840.1.113883.19.4.1^ISO|CARECHART|HOSP|"
        f"20240101120000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{mrn}^^^HOSP&2.16.840.1.113883.19.5&ISO^MR||DOE^JANE^Q||19800101|F",
        f"ORC|RE|PL-{control}|FL-{control}",
        f"OBR|1|PL-{control}|FL-{control}|24323-8^Comprehensive metabolic panel^LN"
        "|||202401011100-0500|||||||||||||||202401011200-0500|||F",
        f"OBX|1|NM|2345-7^Glucose^LN||{glucose}|mg/dL^mg/dL^UCUM|70-99||||F|||202401011100-0500",
        "OBX|2|NM|2823-3^Potassium^LN||4.1|mmol/L^mmol/L^UCUM|3.5-5.0||||F|||202401011100-0500",
        "OBX|3|NM|2951-2^Sodium^LN||139|mmol/L^mmol/L^UCUM|135-145|N|||F|||202401011100-0500",
        "OBX|4|NM|11557-6^pCO2^LN||60|mm[Hg]^mm[Hg]^UCUM|||||F|||202401011100-0500",
        "NTE|1|L|Specimen slightly hemolysed.",
        "SPM|1|SP-1&BENCHLAB||119297000^Blood specimen^SCT|||||||||||||202401011000-0500",
    ]
    return ("\r".join(segments) + "\r").encode()


@dataclass
class Run:
    messages: int
    wall: float
    cpu: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.wall

    @property
    def per_cpu(self) -> float:
        return self.messages / self.cpu if self.cpu > 0 else float("nan")


class MllpClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((b.HOST, port), timeout=60)
        self.buffer = bytearray()

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(START_BLOCK + message + END_BLOCK)
        while True:
            end = self.buffer.find(b"\x1c")
            if end >= 0:
                start = self.buffer.find(START_BLOCK)
                frame = bytes(self.buffer[start + 1 : end])
                del self.buffer[: end + 2]
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the listener closed the connection")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def check_ack(ack: bytes, control: str) -> None:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA|"):
            fields = segment.decode().split("|")
            if fields[1] != "AA" or fields[2] != control:
                raise RuntimeError(f"unexpected ACK for {control}: {segment[:80]!r}")
            return
    raise RuntimeError(f"no MSA in the ACK for {control}")


def send_all(port: int, messages: list[tuple[str, bytes]], connections: int) -> list[float]:
    """Send over ``connections`` sockets in parallel; each waits for every ACK."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    shares = [messages[i::connections] for i in range(connections)]

    def worker(share: list[tuple[str, bytes]]) -> None:
        client = MllpClient(port)
        mine: list[float] = []
        try:
            for control, message in share:
                t0 = time.perf_counter()
                check_ack(client.send(message), control)
                mine.append((time.perf_counter() - t0) * 1000)
        except BaseException as exc:  # reported after the join
            errors.append(exc)
        finally:
            client.close()
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(s,)) for s in shares if s]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    if errors:
        raise errors[0]
    return latencies


def prepare_schema(url: str) -> None:
    """Migrate, and create the integration tables (until the migration includes them)."""
    from carechart.db.engine import make_engine
    from carechart.db.integration_schema import INTEGRATION_TABLES
    from carechart.db.migrate import upgrade
    from carechart.db.schema import metadata

    engine = make_engine(url)
    try:
        upgrade(engine)
        metadata.create_all(engine, tables=list(INTEGRATION_TABLES))
    finally:
        engine.dispose()


def stored_reports(url: str) -> tuple[int, int]:
    """(DiagnosticReports stored, outbox events not yet delivered) for the bench tenant."""
    import sqlalchemy as sa

    from carechart.db.engine import make_engine
    from carechart.db.integration_schema import outbox_event
    from carechart.db.schema import resource

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            reports = conn.execute(
                sa.select(sa.func.count()).where(
                    resource.c.tenant_id == TENANT, resource.c.resource_type == "DiagnosticReport"
                )
            ).scalar_one()
            pending = conn.execute(
                sa.select(sa.func.count()).where(
                    outbox_event.c.tenant_id == TENANT, outbox_event.c.delivered_at.is_(None)
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return int(reports), int(pending)


@contextlib.contextmanager
def listener(engine: str) -> Iterator[tuple[int, subprocess.Popen[bytes], str, Path]]:
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="carechart-hl7-")))
        if engine == "postgresql":
            db = stack.enter_context(b.scratch_database("carechart_bench_hl7"))
            url = b.PG_URL_TEMPLATE.format(db=db)
        else:
            url = f"sqlite:///{data_dir / 'carechart.db'}"
        prepare_schema(url)
        env = b.server_env(data_dir, url, base64.b64encode(os.urandom(32)).decode())
        env["CARECHART_DEFAULT_TENANT"] = TENANT
        port = b.free_port()
        log_path = data_dir / "listener.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    b.PYTHON,
                    "-m",
                    "carechart.integrations.hl7v2.cli",
                    "listen",
                    "--host",
                    b.HOST,
                    "--port",
                    str(port),
                ],
                cwd=b.ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        stack.callback(b._stop, proc)
        deadline = time.monotonic() + 90
        while b"MLLP listening" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"listener did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield port, proc, url, log_path
        if proc.poll() is not None:
            raise RuntimeError(f"listener died:\n{log_path.read_text()[-3000:]}")


def run(engine: str, messages: int, runs: int, connections: int, patients: int) -> list[Run]:
    rng = random.Random(6)
    results: list[Run] = []
    with listener(engine) as (port, proc, url, _log):
        warm = [(f"W{i}", oru(f"W{i}", f"MRN{i % patients}", rng)) for i in range(50)]
        send_all(port, warm, 1)
        for r in range(runs):
            batch = [
                (f"R{r}-{i}", oru(f"R{r}-{i}", f"MRN{rng.randrange(patients)}", rng))
                for i in range(messages)
            ]
            cpu0 = b.cpu_seconds(proc.pid)
            start = time.perf_counter()
            latencies = send_all(port, batch, connections)
            wall = time.perf_counter() - start
            cpu = b.cpu_seconds(proc.pid) - cpu0
            result = Run(messages, wall, cpu, latencies)
            results.append(result)
            b.log(
                f"hl7 {engine} run {r + 1}: {result.rate:,.0f} msg/s wall, "
                f"{result.per_cpu:,.0f} msg per listener CPU-second ({wall:.2f} s, {cpu:.2f} s CPU)"
            )
        time.sleep(2)  # the background dispatcher's last batch
        reports, pending = stored_reports(url)
        expected = len(warm) + messages * runs
        if reports != expected:
            raise RuntimeError(f"{reports} DiagnosticReports stored for {expected} messages")
        if pending:
            b.log(f"{pending} events still undelivered after the run")
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe_machine() -> list[str]:
    cpu = "n/a"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        pg = b.psql("SHOW server_version")
    except (OSError, subprocess.SubprocessError):
        pg = "n/a"
    load = "n/a"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"- CPUs: {os.cpu_count()} ({cpu}); load average at start {load}",
        f"- PostgreSQL {pg}; Python {platform.python_version()}",
    ]


def report(
    engine: str, results: list[Run], connections: int, patients: int, machine: list[str]
) -> list[str]:
    median_rate = b.median([r.rate for r in results])
    median_cpu = b.median([r.per_cpu for r in results])
    latencies = [x for r in results for x in r.latencies_ms]
    status = "met" if median_cpu >= TARGET_PER_CORE else "**missed**"
    lines = [
        f"## HL7 v2 ORU^R01 over MLLP, end to end ({engine})",
        "",
        f"{results[0].messages:,} messages per run, {len(results)} runs, {connections} MLLP "
        f"connections (original mode: each waits for its ACK), {patients} patients; each "
        "message writes 7 resources (1 Patient matched or created), 1 event, 1 log row.",
        "",
        *machine,
        "",
        "| run | messages/s (wall) | messages per listener CPU-second | wall s | CPU s |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(f"| {i} | {b.fmt(r.rate)} | {b.fmt(r.per_cpu)} | {r.wall:.2f} | {r.cpu:.2f} |")
    lines += [
        "",
        f"- median: **{b.fmt(median_rate)} messages/s** wall, **{b.fmt(median_cpu)} messages "
        f"per listener CPU-second** (target ≥ {TARGET_PER_CORE:,.0f} per core: {status})",
        f"- ACK latency (send to ACK, after commit): p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4, help="parallel MLLP connections")
    parser.add_argument("--patients", type=int, default=500, help="size of the MRN pool")
    parser.add_argument("--engine", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    machine = describe_machine()
    results = run(args.engine, args.messages, args.runs, args.connections, args.patients)
    print("\n".join(report(args.engine, results, args.connections, args.patients, machine)))


if __name__ == "__main__":
    sys.exit(main())
