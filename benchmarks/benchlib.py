"""Shared plumbing for the benchmark scenarios: servers, databases, HTTP, callers, memory,
machine.

Everything talks to 127.0.0.1 only. Servers run in their own process group and are always
terminated when their ``with`` block ends; every wait is bounded in time. Rate limits are off
in every benchmark server (``CARECHART_RATE_LIMIT_*=0``).

Every FHIR route needs a bearer token. :meth:`Server.auth` gives the headers of a backend
service (``system/*.cruds``) registered directly in the server's database and re-mints the
token before it expires (10 minutes); :meth:`Server.physician` signs in a physician user
through ``/api/v1/auth/login`` (created with ``carechart.auth.cli.create_user``, one-time
password changed first). Both registrations run in a subprocess with the server's own
``CARECHART_*`` environment (``python benchmarks/benchlib.py system-token|create-user``), so
the benchmark process never imports ``carechart``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
PYTHON = sys.executable
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
PG_URL_TEMPLATE = "postgresql+psycopg://root@127.0.0.1:5432/{db}"
FHIR_JSON = "application/fhir+json"
#: Rate limits off in benchmark servers: a benchmark is one client sending as fast as it can.
RATE_LIMITS_OFF = {
    "CARECHART_RATE_LIMIT_PER_IP": "0",
    "CARECHART_RATE_LIMIT_PER_USER": "0",
    "CARECHART_RATE_LIMIT_SENSITIVE": "0",
}
#: Access tokens live 10 minutes (``AuthConfig.access_token_lifetime``); re-mint well before.
TOKEN_LIFETIME_S = 600.0
BENCH_PRACTITIONER = "bench-gp"

# ---------------------------------------------------------------------------- formatting


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def log(message: str) -> None:
    """Progress goes to stderr; the report goes to stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- PostgreSQL


def psql(sql: str, db: str = "postgres") -> str:
    done = subprocess.run(
        ["psql", "-h", HOST, "-U", "root", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped (forcibly) when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out.extend(int(p) for p in text.split())
    return out


def process_tree(pid: int) -> list[int]:
    seen = [pid]
    i = 0
    while i < len(seen):
        seen.extend(c for c in _children(seen[i]) if c not in seen)
        i += 1
    return seen


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB."""
    return sum(_status_kb(p, "VmRSS") for p in process_tree(pid)) / 1024


def hwm_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) summed over a process and its descendants, MB."""
    return sum(_status_kb(p, "VmHWM") for p in process_tree(pid)) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by a process tree (live processes only)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class MemorySampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_mb = max(self.peak_mb, rss_mb(self.pid))


@dataclass
class Token:
    """A bearer token and when it was obtained (monotonic clock)."""

    value: str
    obtained: float

    def fresh_for(self, seconds: float) -> bool:
        return time.monotonic() - self.obtained + seconds < TOKEN_LIFETIME_S - 30


@dataclass
class Persona:
    """A signed-in user of a benchmark server; :meth:`auth` signs in again before the access
    token expires."""

    server: Server
    email: str
    password: str
    practitioner_id: str | None
    token: Token | None = None

    def auth(self, valid_for: float = 60.0) -> dict[str, str]:
        with self.server.token_lock:
            if self.token is None or not self.token.fresh_for(valid_for):
                self.token = Token(login(self.server, self.email, self.password), time.monotonic())
            return bearer(self.token.value)


@dataclass
class Server:
    engine: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    idle_rss_mb: float = 0.0
    database: str | None = None  # PostgreSQL database name
    env: dict[str, str] = field(default_factory=dict)  # the server's environment
    system: Token | None = None
    token_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def auth(self, valid_for: float = 60.0) -> dict[str, str]:
        """``Authorization`` header of a backend service with ``system/*.cruds``, valid for at
        least ``valid_for`` more seconds (a new client and token are made when needed)."""
        with self.token_lock:
            if self.system is None or not self.system.fresh_for(valid_for):
                self.system = Token(system_token(self.env), time.monotonic())
            return bearer(self.system.value)

    def physician(self, practitioner_id: str = BENCH_PRACTITIONER) -> Persona:
        """A physician user whose ``practitioner_id`` is ``practitioner_id``, signed in."""
        persona = make_user(self, "physician", practitioner_id=practitioner_id)
        persona.auth()
        return persona


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARECHART_")}
    if os.environ.get("CARECHART_BENCH_STUB"):
        env["CARECHART_BENCH_STUB"] = os.environ["CARECHART_BENCH_STUB"]
    env["PYTHONUNBUFFERED"] = "1"
    env.update(RATE_LIMITS_OFF)
    return env


def server_env(
    data_dir: Path, database_url: str | None = None, master_key: str | None = None
) -> dict[str, str]:
    """The environment of a benchmark server (and of the token helpers that share its
    database and keys): no inherited ``CARECHART_*``, rate limits off."""
    env = _clean_env()
    env["CARECHART_DATA_DIR"] = str(data_dir)
    if database_url:
        env["CARECHART_DATABASE_URL"] = database_url
    if master_key:
        env["CARECHART_MASTER_KEY"] = master_key
    return env


def _wait_health(port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not healthy after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # our own session: the server and its workers
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def server(engine: str, argv: list[str] | None = None) -> Iterator[Server]:
    """A server on a free port with a fresh data dir (SQLite) or fresh database (PostgreSQL).

    ``argv``: the command after the interpreter; default ``benchmarks/serve.py serve``
    (which is ``carechart serve``). ``--port`` is appended.
    """
    assert engine in ("sqlite", "postgresql")
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="carechart-bench-")))
        db = None
        if engine == "postgresql":
            db = stack.enter_context(scratch_database("carechart_bench"))
        env = server_env(data_dir, PG_URL_TEMPLATE.format(db=db) if db else None)
        port = free_port()
        log_path = data_dir / "server.log"
        command = [PYTHON, *(argv or [str(BENCH_DIR / "serve.py"), "serve"]), "--port", str(port)]
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        stack.callback(_stop, proc)
        _wait_health(port, proc, log_path, timeout=90)
        srv = Server(engine=engine, port=port, proc=proc, log_path=log_path, database=db, env=env)
        srv.idle_rss_mb = rss_mb(proc.pid)
        yield srv
        if proc.poll() is not None:
            raise RuntimeError(f"server died:\n{log_path.read_text()[-3000:]}")


# ---------------------------------------------------------------------------- HTTP


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    hdrs = {"Accept": FHIR_JSON}
    if body is not None:
        hdrs["Content-Type"] = FHIR_JSON
    hdrs.update(headers or {})
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def expect(status: int, wanted: int, data: bytes, what: str) -> None:
    if status != wanted:
        raise RuntimeError(f"{what}: HTTP {status} (wanted {wanted}): {data[:600]!r}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------- callers


def _helper(env: dict[str, str], *args: str) -> str:
    """Run this file as a helper (``system-token`` / ``create-user``) with a server's
    environment; returns its stdout (the secret) and never logs it."""
    done = subprocess.run(
        [PYTHON, str(Path(__file__).resolve()), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchlib {args[0]} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def system_token(env: dict[str, str]) -> str:
    """A new backend service (``oauth_client`` of kind backend, scope ``system/*.cruds``)
    registered in the database of the server whose environment is ``env``, and an access
    token for it (``IdentityService.client_token``, what the client_credentials grant
    answers; valid 10 minutes)."""
    return _helper(env, "system-token")


def json_body(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    conn.request(
        method,
        path,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    resp = conn.getresponse()
    data = resp.read()
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = {"raw": data[:600].decode(errors="replace")}
    return resp.status, parsed


def login(srv: Server, email: str, password: str) -> str:
    """``POST /api/v1/auth/login``: the access token of a full session."""
    conn = srv.connection()
    try:
        status, answer = json_body(
            conn, "POST", "/api/v1/auth/login", {"email": email, "password": password}
        )
    finally:
        conn.close()
    if status != 200 or "access_token" not in answer:
        raise RuntimeError(f"login {email}: HTTP {status}: {answer}")
    if answer.get("must_change_password") or answer.get("mfa_enrollment_required"):
        raise RuntimeError(f"login {email}: session restricted to one step: {answer}")
    return str(answer["access_token"])


def make_user(srv: Server, role: str, *, practitioner_id: str | None = None) -> Persona:
    """A user created as an operator would (``carechart.auth.cli.create_user``: one-time
    password, must change it), whose password is then changed over HTTP
    (``/api/v1/auth/login`` then ``/api/v1/auth/change-password``), ready to sign in."""
    email = f"bench-{role}-{uuid.uuid4().hex[:8]}@clinic.example"
    args = ["create-user", "--role", role, "--email", email]
    if practitioner_id:
        args += ["--practitioner-id", practitioner_id]
    one_time = _helper(srv.env, *args)
    conn = srv.connection()
    try:
        status, first = json_body(
            conn, "POST", "/api/v1/auth/login", {"email": email, "password": one_time}
        )
        if status != 200 or not first.get("must_change_password"):
            raise RuntimeError(f"first login of {email}: HTTP {status}: {first}")
        password = f"bench meadow {uuid.uuid4().hex[:12]} lantern"
        status, changed = json_body(
            conn,
            "POST",
            "/api/v1/auth/change-password",
            {"current_password": one_time, "new_password": password},
            bearer(str(first["access_token"])),
        )
        if status != 200:
            raise RuntimeError(f"change-password of {email}: HTTP {status}: {changed}")
    finally:
        conn.close()
    return Persona(srv, email, password, practitioner_id)


def sample_patient(i: int, practitioner: str | None = None) -> dict[str, Any]:
    """A realistic, valid Patient of ~1 KB (no id: the server assigns one); ``practitioner``:
    the id of its general practitioner (a care relationship)."""
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "http://hospital.example/mrn", "value": f"MRN-{i:08d}"},
            {
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": f"999-{i % 100:02d}-{i % 10000:04d}",
            },
        ],
        "active": True,
        "name": [
            {"use": "official", "family": f"Chalmers{i}", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim"]},
        ],
        "telecom": [
            {"system": "phone", "value": f"(03) 5555 {i % 10000:04d}", "use": "work", "rank": 1},
            {"system": "email", "value": f"patient{i}@example.org"},
        ],
        "gender": "male" if i % 2 else "female",
        "birthDate": f"19{40 + i % 60:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "address": [
            {
                "use": "home",
                "type": "both",
                "line": [f"{i % 900 + 1} Example Street"],
                "city": "PleasantVille",
                "district": "Rainbow",
                "state": "Vic",
                "postalCode": "3999",
                "period": {"start": "1974-12-25"},
            }
        ],
        "contact": [
            {
                "relationship": [
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}
                        ]
                    }
                ],
                "name": {"family": "du Marché", "given": ["Bénédicte"]},
                "telecom": [{"system": "phone", "value": "+33 (237) 998327"}],
                "gender": "female",
            }
        ],
    }
    if practitioner is not None:
        patient["generalPractitioner"] = [{"reference": f"Practitioner/{practitioner}"}]
    return patient


def put_practitioner(srv: Server, practitioner: str) -> None:
    conn = srv.connection()
    try:
        body = {"resourceType": "Practitioner", "id": practitioner, "name": [{"family": "Bench"}]}
        status, _, data = request(
            conn, "PUT", f"/fhir/Practitioner/{practitioner}", json.dumps(body).encode(), srv.auth()
        )
        if status not in (200, 201):
            expect(status, 201, data, "PUT Practitioner")
    finally:
        conn.close()


def create_patients(
    srv: Server, count: int, batch: int = 100, practitioner: str | None = None
) -> list[str]:
    """Create ``count`` Patients with transaction Bundles (as the system client); returns
    their ids. ``practitioner``: their general practitioner (PUT first)."""
    if practitioner is not None:
        put_practitioner(srv, practitioner)
    conn = srv.connection()
    ids: list[str] = []
    try:
        made = 0
        while made < count:
            n = min(batch, count - made)
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": sample_patient(made + k, practitioner),
                        "request": {"method": "POST", "url": "Patient"},
                    }
                    for k in range(n)
                ],
            }
            status, _, data = request(
                conn, "POST", "/fhir", json.dumps(bundle).encode(), srv.auth()
            )
            expect(status, 200, data, "create patients")
            for entry in json.loads(data)["entry"]:
                # [base/]Patient/{id}/_history/1
                location = entry["response"]["location"]
                ids.append(location.split("Patient/", 1)[1].split("/", 1)[0])
            made += n
    finally:
        conn.close()
    return ids


# ---------------------------------------------------------------------------- machine


def cpu_times() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq
    steal ...), in ticks."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def busy_summary(before: list[int], after: list[int]) -> str:
    """Whole-machine CPU use between two ``cpu_times()``: busy, iowait and steal as % of all
    cores. Busy includes the benchmark itself and whatever else runs on the machine."""
    delta = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(delta[:8]) or 1
    idle, iowait, steal = delta[3], delta[4], delta[7] if len(delta) > 7 else 0
    busy = total - idle - iowait
    return (
        f"machine CPU busy {busy / total * 100:.0f}% of {os.cpu_count()} cores "
        f"(iowait {iowait / total * 100:.0f}%, steal {steal / total * 100:.0f}%)"
    )


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def head_commit() -> str:
    """The checked-out commit, read from ``.git`` (git itself is not run)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = git / ref
            if path.exists():
                return path.read_text().strip()[:7]
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:7]
            return "unknown"
        return head[:7]
    except OSError:
        return "unknown"


def machine() -> dict[str, str]:
    cpu = "n/a"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        pg = psql("SHOW server_version")
    except (OSError, subprocess.SubprocessError):
        pg = "n/a"
    load = "n/a"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    package = _run([PYTHON, "-c", "import carechart; print(carechart.__file__)"])
    package = str(Path(package).parent) if package.endswith(".py") else "not importable"
    code = f"commit {head_commit()} (working tree state not checked)"
    if package != str(ROOT / "src" / "carechart"):
        code = (
            f"carechart imported from `{package}` (PYTHONPATH={os.environ.get('PYTHONPATH', '')})"
        )
    return {
        "code": code,
        "nproc": _run(["nproc"]),
        "cpu": cpu,
        "free -h": _run(["free", "-h"]),
        "postgresql": pg,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": _run(["wrk", "--version"]).splitlines()[0] if _run(["which", "wrk"]) else "missing",
        "load average (start)": load,
    }


# ---------------------------------------------------------------------------- helper process


def _helper_main(argv: list[str]) -> None:
    """``system-token`` / ``create-user``, run with a benchmark server's ``CARECHART_*``
    environment (see :func:`system_token`, :func:`make_user`); prints the secret only."""
    import argparse
    import runpy
    import secrets

    parser = argparse.ArgumentParser(prog="benchlib.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("system-token")
    user = sub.add_parser("create-user")
    user.add_argument("--role", required=True)
    user.add_argument("--email", required=True)
    user.add_argument("--practitioner-id")
    args = parser.parse_args(argv)

    stub = os.environ.get("CARECHART_BENCH_STUB")
    if stub:  # see serve.py
        runpy.run_path(stub, run_name="carechart_bench_stub")
    from carechart.auth import clients
    from carechart.auth.cli import create_user
    from carechart.auth.config import from_context
    from carechart.auth.principal import ClientInfo, Role
    from carechart.auth.service import IdentityService
    from carechart.config import Settings
    from carechart.context import AppContext
    from carechart.db.engine import unit_of_work

    settings = Settings()
    ctx = AppContext.from_settings(settings)
    try:
        parts = from_context(ctx)
        tenant = settings.default_tenant
        ctx.keyring.active(tenant)
        if args.command == "system-token":
            scope = ("system/*.cruds",)
            with unit_of_work(ctx.engine, write=True) as conn:
                client = clients.create(
                    conn,
                    tenant=tenant,
                    client_id=f"bench-backend-{secrets.token_hex(4)}",
                    name="benchmark backend service",
                    kind="backend",
                    scope=scope,
                    now=parts.clock(),
                )
                service = IdentityService(
                    conn, ctx.keyring, parts, tenant=tenant, now=parts.clock()
                )
                grant = service.client_token(client, frozenset(scope), ClientInfo())
            print(grant.access_token)
        else:
            created = create_user(
                ctx,
                parts,
                email=args.email,
                full_name="Benchmark User",
                role=Role(args.role),
                practitioner_id=args.practitioner_id,
            )
            print(created.one_time_password)
    finally:
        ctx.engine.dispose()


if __name__ == "__main__":
    _helper_main(sys.argv[1:])
