"""``carechart hl7 listen``: the MLLP listener as a process (or a thread of ``serve``).

Each frame is handed to :class:`~carechart.integrations.hl7v2.service.Hl7Service` in a
worker thread; its ACK is written back once the message's transaction has committed. The
listener's identity is the interface itself: per message, a system principal
``hl7:<MSH-3 sending application>`` with the interface scopes, in the configured territory,
with the peer's address as source IP, so every message is audited as the interface that
sent it (SECURITY C1). Events are delivered by a background outbox dispatcher, to NATS
JetStream when ``CARECHART_NATS_URL`` is set, else in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from carechart.config import Settings, get_settings
from carechart.context import AppContext
from carechart.integrations.events.outbox import OutboxDispatcher
from carechart.integrations.events.settings import EventSettings, build_publisher
from carechart.integrations.hl7v2.ack import AckCode, AckError, OriginalHeader, build_ack
from carechart.integrations.hl7v2.errors import APPLICATION_INTERNAL_ERROR
from carechart.integrations.hl7v2.listener import PeerHandler, start_peer_listener
from carechart.integrations.hl7v2.service import (
    INTERFACE_SCOPES,
    Hl7Service,
    interface_guard,
)
from carechart.integrations.hl7v2.settings import Hl7Settings, peer_allowed

log = logging.getLogger("carechart.hl7")

hl7_app = typer.Typer(help="HL7 v2 interface (MLLP).", no_args_is_help=True)


@hl7_app.callback()
def hl7() -> None:
    """HL7 v2 interface (MLLP)."""


def make_handler(service: Hl7Service, tenant: str) -> PeerHandler:
    """The listener's frame handler: the message ingested as the interface that sent it.

    It never raises: whatever goes wrong unexpectedly is answered AR (application internal
    error, HL7 table 0357 code 207), so the sender retries instead of waiting on a dead
    connection."""

    def handle(frame: bytes, peer: str | None) -> bytes | None:
        try:
            result = service.ingest(
                frame,
                lambda application: interface_guard(
                    tenant, application, scopes=INTERFACE_SCOPES, source_ip=peer
                ),
            )
            return result.ack_bytes
        except Exception as exc:
            log.error("MLLP message failed: %s", type(exc).__name__)
            error = AckError(
                APPLICATION_INTERNAL_ERROR,
                "the message could not be processed now; send it again later",
            )
            return build_ack(OriginalHeader.salvage(frame), AckCode.REJECT, [error]).encode()

    return handle


@dataclass
class RunningListener:
    """What ``run_listener`` started, for tests and ``serve``: the bound port, the service."""

    port: int
    service: Hl7Service
    dispatcher: OutboxDispatcher
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def run_listener(
    ctx: AppContext,
    settings: Hl7Settings,
    events: EventSettings,
    *,
    host: str,
    port: int,
    started: asyncio.Future[RunningListener] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve MLLP until ``stop`` is set (or the task is cancelled)."""
    tenant = settings.hl7_tenant or ctx.settings.default_tenant
    ctx.keyring.active(tenant)
    publisher = build_publisher(events)
    dispatcher = OutboxDispatcher(ctx.engine, publisher)
    dispatcher.start()
    service = Hl7Service(ctx, dispatcher=dispatcher, max_bytes=settings.hl7_max_bytes)
    networks = settings.networks()
    server = await start_peer_listener(
        make_handler(service, tenant),
        host,
        port,
        max_frame=settings.hl7_max_bytes,
        idle_timeout=settings.hl7_idle_timeout,
        allow_peer=lambda peer: peer_allowed(peer, networks),
    )
    bound = int(server.sockets[0].getsockname()[1])
    running = RunningListener(bound, service, dispatcher, stop or asyncio.Event())
    if started is not None and not started.done():
        started.set_result(running)
    try:
        await running.stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.to_thread(dispatcher.stop)
        await asyncio.to_thread(publisher.close)


class ListenerThread:
    """The MLLP listener on its own event loop in a daemon thread (for ``carechart serve``
    with ``CARECHART_HL7_PORT`` set, whose main thread belongs to uvicorn)."""

    def __init__(self, settings: Settings, hl7: Hl7Settings, events: EventSettings) -> None:
        self._settings = settings
        self._hl7 = hl7
        self._events = events
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port: int | None = None
        self._thread = threading.Thread(target=self._main, name="carechart-mllp", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread just ends
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        ctx = AppContext.from_settings(self._settings)
        self._stop = asyncio.Event()
        started: asyncio.Future[RunningListener] = self._loop.create_future()
        task = asyncio.ensure_future(
            run_listener(
                ctx,
                self._hl7,
                self._events,
                host=self._hl7.hl7_host,
                port=self._hl7.hl7_port or 0,
                started=started,
                stop=self._stop,
            )
        )
        waiters: set[asyncio.Future[Any]] = {task, started}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if started in done:
            self.port = started.result().port
            self._ready.set()
        await task
        ctx.engine.dispose()

    def start(self, timeout: float = 30.0) -> int:
        self._thread.start()
        self._ready.wait(timeout)
        if self._error is not None:
            raise RuntimeError("the MLLP listener did not start") from self._error
        if self.port is None:
            raise RuntimeError("the MLLP listener did not start in time")
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        stop = self._stop
        if stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)


def start_listener_thread(settings: Settings | None = None) -> ListenerThread | None:
    """For ``carechart serve``: start the MLLP listener when ``CARECHART_HL7_PORT`` is set."""
    hl7 = Hl7Settings()
    if hl7.hl7_port is None:
        return None
    listener = ListenerThread(settings or get_settings(), hl7, EventSettings())
    listener.start()
    return listener


@hl7_app.command("listen")
def listen(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default CARECHART_HL7_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (default CARECHART_HL7_PORT, else 2575).")
    ] = None,
) -> None:
    """Receive HL7 v2 messages over MLLP until interrupted."""
    from carechart.db.migrate import upgrade

    settings = get_settings()
    hl7 = Hl7Settings()
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    bind_host = host or hl7.hl7_host
    bind_port = port if port is not None else (hl7.hl7_port if hl7.hl7_port is not None else 2575)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        started: asyncio.Future[RunningListener] = loop.create_future()
        task = asyncio.ensure_future(
            run_listener(
                ctx,
                hl7,
                EventSettings(),
                host=bind_host,
                port=bind_port,
                started=started,
                stop=stop,
            )
        )
        waiters: set[asyncio.Future[Any]] = {task, started}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if started in done:
            print(
                f"MLLP listening on {bind_host}:{started.result().port}",
                file=sys.stderr,
                flush=True,
            )
        await task

    asyncio.run(main())
    ctx.engine.dispose()


if __name__ == "__main__":
    hl7_app()
