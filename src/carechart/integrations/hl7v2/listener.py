"""Asyncio MLLP listener: frames in, ``handle(message_bytes) -> ack_bytes`` out.

Transport per HL7 v2.5.1 Appendix C (MLLP release 2). The handler is injected, so the
listener knows nothing of parsing or storage; it runs in a worker thread because the
handler does blocking work (parsing, a database transaction). One frame is answered
before the next is read, which keeps the original-mode ordering the sender expects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from carechart.integrations.hl7v2.mllp import (
    DEFAULT_MAX_FRAME,
    MllpDecoder,
    MllpFrameError,
    encode_frame,
)

Handler = Callable[[bytes], bytes | None]
READ_SIZE = 65536


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: Handler,
    max_frame: int,
    idle_timeout: float,
) -> None:
    decoder = MllpDecoder(max_frame)
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(READ_SIZE), idle_timeout)
            if not chunk:
                break
            for frame in decoder.feed(chunk):
                ack = await asyncio.to_thread(handle, frame)
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


async def start_listener(
    handle: Handler,
    host: str = "127.0.0.1",
    port: int = 2575,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    idle_timeout: float = 300.0,
) -> asyncio.Server:
    """Start serving; the caller owns the returned server (``close()`` / ``wait_closed()``)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, handle, max_frame, idle_timeout)

    return await asyncio.start_server(on_connect, host, port)
