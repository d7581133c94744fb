"""MLLP end to end: a real asyncio client over a localhost socket to the real listener,
service and database (both engines), and ``carechart hl7 listen`` as a process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from tests.integrations.hl7_support import audit_rows, oru, outbox_rows, resource_counts

from carechart.context import AppContext
from carechart.crypto.keys import MasterKey
from carechart.db.engine import make_engine
from carechart.db.integration_schema import INTEGRATION_TABLES
from carechart.db.migrate import upgrade
from carechart.db.schema import metadata, resource
from carechart.integrations.events.outbox import Event, InProcessBus
from carechart.integrations.events.settings import EventSettings
from carechart.integrations.hl7v2.cli import RunningListener, run_listener, start_listener_thread
from carechart.integrations.hl7v2.mllp import MllpDecoder, encode_frame
from carechart.integrations.hl7v2.parser import parse_message
from carechart.integrations.hl7v2.settings import Hl7Settings

NO_NATS = EventSettings(nats_url=None)


def _msa(ack: bytes) -> tuple[str, str]:
    msa = parse_message(ack).segment("MSA")
    assert msa is not None
    return msa.get(1), msa.get(2)


class AckReader:
    """ACK frames from the stream, one at a time (TCP may deliver two in one read)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.decoder = MllpDecoder()
        self.pending: list[bytes] = []

    async def take(self, n: int) -> list[bytes]:
        while len(self.pending) < n:
            chunk = await asyncio.wait_for(self.reader.read(65536), 30)
            assert chunk, "the listener closed the connection"
            self.pending += self.decoder.feed(chunk)
        taken, self.pending = self.pending[:n], self.pending[n:]
        return taken


async def _with_listener(ctx: AppContext, settings: Hl7Settings, scenario: Any) -> Any:
    started: asyncio.Future[RunningListener] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_listener(ctx, settings, NO_NATS, host="127.0.0.1", port=0, started=started, stop=stop)
    )
    running = await asyncio.wait_for(started, 30)
    try:
        return await scenario(running)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_mllp_messages_are_acknowledged_in_order_after_commit(
    ctx: AppContext, integration_engine: sa.Engine, tenant: str
) -> None:
    settings = Hl7Settings(hl7_tenant=tenant)
    delivered = threading.Event()
    seen: list[Event] = []

    async def scenario(running: RunningListener) -> list[bytes]:
        bus = cast(InProcessBus, running.dispatcher.publisher)

        def on_event(event: Event) -> None:
            if event.tenant == tenant:
                seen.append(event)
                if len(seen) == 2:
                    delivered.set()

        bus.subscribe("lab-result.received", on_event)
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        acks = AckReader(reader)
        first = encode_frame(oru("MLLP-1"))
        # The first frame split across writes, the second in the same write as its end.
        writer.write(b"\r\n" + first[:7])
        await writer.drain()
        writer.write(first[7:] + encode_frame(oru("MLLP-2", mrn="MRN-2")))
        await writer.drain()
        (ack1,) = await acks.take(1)
        # ACK after commit: once the ACK is here, the message's resources are visible.
        counts = await asyncio.to_thread(resource_counts, ctx.engine, tenant)
        assert counts["DiagnosticReport"] >= 1
        (ack2,) = await acks.take(1)
        # A redelivery (lost ACK) and a message that is not HL7 at all.
        writer.write(encode_frame(oru("MLLP-1")) + encode_frame(b"GARBAGE\r"))
        await writer.drain()
        ack3, ack4 = await acks.take(2)
        writer.close()
        await writer.wait_closed()
        return [ack1, ack2, ack3, ack4]

    acks = asyncio.run(_with_listener(ctx, settings, scenario))
    assert [_msa(a) for a in acks[:3]] == [("AA", "MLLP-1"), ("AA", "MLLP-2"), ("AA", "MLLP-1")]
    assert acks[2] == acks[0]  # the same ACK again, nothing stored twice
    assert _msa(acks[3])[0] == "AR"
    assert resource_counts(ctx.engine, tenant) == {
        "Patient": 2,
        "ServiceRequest": 2,
        "DiagnosticReport": 2,
        "Observation": 4,
        "Specimen": 2,
    }
    assert delivered.wait(10)  # the background dispatcher delivered both events
    assert all(row.delivered_at is not None for row in outbox_rows(ctx.engine, tenant))
    rows = audit_rows(ctx.engine, tenant)
    created = [r for r in rows if r.action == "create"]
    assert len(created) == 12
    assert {(r.client_id, r.role, r.source_ip) for r in created} == {
        ("hl7:LAB", "system", "127.0.0.1")
    }
    assert [(r.action, r.outcome) for r in rows if r.action == "ingest"].count(
        ("ingest", "failure")
    ) == 1  # the garbage frame


def test_a_peer_outside_the_allowed_networks_is_disconnected_unanswered(
    ctx: AppContext, integration_engine: sa.Engine, tenant: str
) -> None:
    settings = Hl7Settings(hl7_tenant=tenant, hl7_allowed_networks="10.0.0.0/8")

    async def scenario(running: RunningListener) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(encode_frame(oru("NOPE-1")))
        try:
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), 10)
        except ConnectionError:
            data = b""
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        return data

    assert asyncio.run(_with_listener(ctx, settings, scenario)) == b""
    assert resource_counts(ctx.engine, tenant) == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exchange(port: int, message: bytes, timeout: float = 30) -> bytes:
    decoder = MllpDecoder()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(encode_frame(message))
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the listener closed the connection"
            frames = decoder.feed(chunk)
            if frames:
                return frames[0]


def test_the_listen_command_serves_mllp_until_terminated(tmp_path: Path) -> None:
    key = MasterKey.from_bytes(os.urandom(32))
    url = f"sqlite:///{tmp_path / 'carechart.db'}"
    engine = make_engine(url)
    upgrade(engine)
    metadata.create_all(engine, tables=list(INTEGRATION_TABLES))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARECHART_") or k == "PATH"}
    env |= {
        "CARECHART_DATA_DIR": str(tmp_path),
        "CARECHART_DATABASE_URL": url,
        "CARECHART_MASTER_KEY": base64.b64encode(key.key).decode(),
        "CARECHART_DEFAULT_TENANT": "cli-tenant",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "carechart.integrations.hl7v2.cli", "listen", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        line = b""
        while time.monotonic() < deadline and b"MLLP listening" not in line:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
        assert b"MLLP listening" in line, "the listener did not start"
        ack = _exchange(port, oru("CLI-1"))
        assert _msa(ack) == ("AA", "CLI-1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(resource)
            .where(resource.c.tenant_id == "cli-tenant", resource.c.resource_type == "Observation")
        ).scalar_one()
    engine.dispose()
    assert count == 2


def test_serve_starts_the_listener_thread_only_when_a_port_is_configured(
    ctx: AppContext, integration_engine: sa.Engine, tenant: str, monkeypatch: Any
) -> None:
    for name in ("CARECHART_HL7_PORT", "CARECHART_NATS_URL", "CARECHART_HL7_HOST"):
        monkeypatch.delenv(name, raising=False)
    url = integration_engine.url.render_as_string(hide_password=False)
    settings = ctx.settings.model_copy(update={"database_url": url})
    assert start_listener_thread(settings) is None
    monkeypatch.setenv("CARECHART_HL7_PORT", "0")  # any free port
    monkeypatch.setenv("CARECHART_HL7_TENANT", tenant)
    listener = start_listener_thread(settings)
    assert listener is not None
    try:
        assert listener.port
        assert _msa(_exchange(listener.port, oru("THREAD-1"))) == ("AA", "THREAD-1")
    finally:
        listener.stop()
    assert resource_counts(ctx.engine, tenant)["Observation"] == 2
