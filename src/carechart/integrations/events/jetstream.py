"""Outbox delivery to NATS JetStream, and a JetStream consumer that feeds an idempotent one.

Subjects are ``<prefix>.<tenant>.<topic>`` (``carechart.<tenant>.lab-result.received``),
all captured by one stream (``<prefix>.>``). Each message carries the event id as the
``Nats-Msg-Id`` header, so JetStream drops a re-publication of the same event within the
stream's duplicate window; beyond it, the consumer's own idempotence (by event id) holds.
A publish returns only when the stream has acknowledged storing the message (PubAck).

The outbox dispatcher is synchronous (it runs in worker threads); nats-py is asyncio. The
publisher therefore owns one event loop in a daemon thread, and ``publish`` hands each
message to it and waits for the acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from carechart.integrations.events.outbox import Event, EventFormatError

log = logging.getLogger("carechart.events")

DEFAULT_STREAM = "CARECHART"
DEFAULT_PREFIX = "carechart"
DUPLICATE_WINDOW_SECONDS = 120.0
T = TypeVar("T")


def subject_token(text: str) -> str:
    """A NATS subject token: ``.``, ``*``, ``>`` and blanks would change the subject's shape."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in text)
    return out or "_"


def subject_for(prefix: str, tenant: str, topic: str) -> str:
    return f"{prefix}.{subject_token(tenant)}.{topic}"


class JetStreamPublisher:
    """A :class:`~carechart.integrations.events.outbox.Publisher` for JetStream.

    ``create_stream``: make the stream (subjects ``<prefix>.>``) when it does not exist;
    an existing stream is used as configured by its operator.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        subject_prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        create_stream: bool = True,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.timeout = timeout
        self.create_stream = create_stream
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="carechart-jetstream", daemon=True
        )
        self._thread.start()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the JetStream publisher is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self.timeout * 3)

    async def _context(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and self._nc.is_connected:
            return self._js
        nc = await nats.connect(
            self.url, connect_timeout=self.timeout, allow_reconnect=True, max_reconnect_attempts=3
        )
        js = nc.jetstream(timeout=self.timeout)
        if self.create_stream:
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                await js.add_stream(
                    api.StreamConfig(
                        name=self.stream,
                        subjects=[f"{self.subject_prefix}.>"],
                        duplicate_window=DUPLICATE_WINDOW_SECONDS,
                    )
                )
        self._nc, self._js = nc, js
        return js

    async def _publish(self, event: Event) -> api.PubAck:
        js = await self._context()
        return await js.publish(
            subject_for(self.subject_prefix, event.tenant, event.topic),
            event.to_json(),
            timeout=self.timeout,
            stream=self.stream,
            headers={"Nats-Msg-Id": event.id},
        )

    def publish(self, event: Event) -> None:
        ack = self._run(self._publish(event))
        if ack.duplicate:
            log.info("event already in the stream (duplicate publication)")

    def publish_ack(self, event: Event) -> api.PubAck:
        """Publish and return JetStream's acknowledgement (stream, sequence, duplicate)."""
        return self._run(self._publish(event))

    async def _close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
        self._nc = self._js = None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._close())
        except Exception as exc:
            log.warning("closing the NATS connection failed (%s)", type(exc).__name__)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout)
        if not self._thread.is_alive():
            self._loop.close()


Consume = Callable[[Event], bool]


class JetStreamConsumer:
    """A durable pull consumer that hands each event to ``consume`` (for example an
    :class:`~carechart.integrations.events.outbox.IdempotentConsumer`) in a worker thread
    and acknowledges it afterwards. A message is acknowledged only after ``consume``
    returned, so a crash in between means redelivery, never loss; a message that is not a
    Carechart event is terminated (it would fail the same way forever).
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        subject: str,
        durable: str,
        consume: Consume,
        ack_wait: float = 30.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.consume = consume
        self.ack_wait = ack_wait
        self._nc: NatsClient | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def __aenter__(self) -> JetStreamConsumer:
        self._nc = await nats.connect(self.url)
        js = self._nc.jetstream()
        self._sub = await js.pull_subscribe(
            self.subject,
            durable=self.durable,
            stream=self.stream,
            config=api.ConsumerConfig(ack_wait=self.ack_wait),
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._nc is not None:
            await self._nc.close()
        self._nc = self._sub = None

    async def run_once(self, max_messages: int = 10, timeout: float = 1.0) -> int:
        """Fetch and handle one batch; the number of messages handled (0 on timeout)."""
        if self._sub is None:
            raise RuntimeError("use the consumer as an async context manager")
        try:
            messages = await self._sub.fetch(max_messages, timeout=timeout)
        except TimeoutError:
            return 0
        for msg in messages:
            try:
                event = Event.from_json(msg.data)
            except EventFormatError:
                log.warning("terminating a message that is not a Carechart event")
                await msg.term()
                continue
            await asyncio.to_thread(self.consume, event)
            await msg.ack_sync()
        return len(messages)

    async def run(self, stop: asyncio.Event, batch: int = 10) -> None:
        """Consume until ``stop`` is set."""
        while not stop.is_set():
            await self.run_once(batch, timeout=1.0)
