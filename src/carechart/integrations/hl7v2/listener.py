"""Asyncio MLLP listener: frames in, ``handle(message_bytes) -> ack_bytes`` out.

Transport per HL7 v2.5.1 Appendix C (MLLP release 2). The handler is injected, so the
listener knows nothing of parsing or storage; it runs in a worker thread because the
handler does blocking work (parsing, a database transaction). One frame is answered
before the next is read, which keeps the original-mode ordering the sender expects
(chapter 2, section 2.9.2: the sender waits for each ACK), and means the ACK is written
only once the handler has returned, i.e. after its transaction committed.

MLLP has no authentication of its own: ``allow_peer`` restricts who may connect (the
deployment's interface engines), and a refused peer is disconnected before a byte is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from carechart.integrations.hl7v2.mllp import (
    DEFAULT_MAX_FRAME,
    MllpDecoder,
    MllpFrameError,
    encode_frame,
)

Handler = Callable[[bytes], bytes | None]
# A handler that is also told the peer's address (for the audit record's source IP).
PeerHandler = Callable[[bytes, str | None], bytes | None]
PeerFilter = Callable[[str | None], bool]
READ_SIZE = 65536

log = logging.getLogger("carechart.hl7")


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: PeerHandler,
    max_frame: int,
    idle_timeout: float,
    allow_peer: PeerFilter | None,
) -> None:
    peername = writer.get_extra_info("peername")
    peer = str(peername[0]) if isinstance(peername, tuple) and peername else None
    decoder = MllpDecoder(max_frame)
    try:
        if allow_peer is not None and not allow_peer(peer):
            log.warning("MLLP connection refused: peer not in the allowed networks")
            return
        while True:
            chunk = await asyncio.wait_for(reader.read(READ_SIZE), idle_timeout)
            if not chunk:
                break
            for frame in decoder.feed(chunk):
                ack = await asyncio.to_thread(handle, frame, peer)
                if ack is not None:
                    writer.write(encode_frame(ack))
                    await writer.drain()
    except (MllpFrameError, TimeoutError, ConnectionError):
        # A peer that breaks framing or goes silent loses its connection; it reconnects
        # and resends unacknowledged messages, as original mode expects.
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_peer_listener(
    handle: PeerHandler,
    host: str = "127.0.0.1",
    port: int = 2575,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    idle_timeout: float = 300.0,
    allow_peer: PeerFilter | None = None,
) -> asyncio.Server:
    """Start serving with a handler that receives the peer address too; the caller owns
    the returned server (``close()`` / ``wait_closed()``)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, handle, max_frame, idle_timeout, allow_peer)

    return await asyncio.start_server(on_connect, host, port)


async def start_listener(
    handle: Handler,
    host: str = "127.0.0.1",
    port: int = 2575,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    idle_timeout: float = 300.0,
    allow_peer: PeerFilter | None = None,
) -> asyncio.Server:
    """Start serving; the caller owns the returned server (``close()`` / ``wait_closed()``)."""

    def with_peer(frame: bytes, _peer: str | None) -> bytes | None:
        return handle(frame)

    return await start_peer_listener(
        with_peer,
        host,
        port,
        max_frame=max_frame,
        idle_timeout=idle_timeout,
        allow_peer=allow_peer,
    )
