"""The transactional outbox: events written with the data they announce, delivered after.

Why an outbox: publishing to a broker inside a database transaction is either too early
(the transaction may still roll back, announcing data that never existed) or, after the
commit, lost when the process dies in between. Writing the event as a row of the same
unit of work makes it exist exactly when the data does; a dispatcher then delivers every
undelivered row, at least once, and marks it delivered. A crash between delivery and the
mark means a second delivery, which is why consumers are idempotent (keyed by event id,
:class:`IdempotentConsumer`) and why JetStream gets the event id as ``Nats-Msg-Id``.

Payloads are ids and flags only (:func:`check_payload`): an event leaves the database, so it
must carry nothing a reader could not already be allowed to know by id (SECURITY C7).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from carechart.db.engine import unit_of_work
from carechart.db.integration_schema import event_consumption, outbox_event

log = logging.getLogger("carechart.events")

LAB_RESULT_RECEIVED = "lab-result.received"

# The keys each topic's payload may carry. A topic not listed here cannot be written.
TOPIC_KEYS: Mapping[str, frozenset[str]] = {
    LAB_RESULT_RECEIVED: frozenset(
        {
            "report",  # "DiagnosticReport/<id>"
            "patient",  # "Patient/<id>" or None
            "observations",  # ["Observation/<id>", ...]
            "abnormal",  # any result flagged outside its normal range
            "critical",  # any result beyond a critical limit (LL, HH, AA)
            "abnormal_observations",
            "critical_observations",
        }
    ),
}
# A reference to a stored resource: the only strings a payload may hold.
_REFERENCE = re.compile(r"[A-Z][A-Za-z]{0,63}/[A-Za-z0-9\-.]{1,64}")
_TOPIC = re.compile(r"[a-z][a-z0-9\-]{0,62}(\.[a-z][a-z0-9\-]{0,62}){0,3}")


class EventFormatError(ValueError):
    """An event or payload that breaks the rules above (never echoes the content)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def check_payload(topic: str, payload: Mapping[str, Any]) -> None:
    """Refuse anything but the topic's keys holding references, booleans or lists of
    references: free text, names or values cannot get into an event by mistake."""
    allowed = TOPIC_KEYS.get(topic)
    if allowed is None:
        raise EventFormatError(f"unknown event topic {topic!r}")
    for key, value in payload.items():
        if key not in allowed:
            raise EventFormatError(f"payload key {key!r} is not allowed for {topic}")
        if value is None or isinstance(value, bool):
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str) or not _REFERENCE.fullmatch(item):
                raise EventFormatError(f"payload key {key!r} must hold resource references")


@dataclass(frozen=True, slots=True)
class Event:
    """One event as delivered: the envelope is ids and times; the payload ids and flags."""

    id: str
    tenant: str
    topic: str
    payload: Mapping[str, Any]
    created_at: datetime

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "tenant": self.tenant,
                "topic": self.topic,
                "created_at": self.created_at.astimezone(UTC).isoformat(),
                "payload": dict(self.payload),
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        """Decode and re-check an event received from a broker."""
        try:
            raw = json.loads(data)
            event = cls(
                id=str(uuid.UUID(raw["id"])),
                tenant=str(raw["tenant"]),
                topic=str(raw["topic"]),
                payload=dict(raw["payload"]),
                created_at=_as_utc(datetime.fromisoformat(raw["created_at"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EventFormatError("not a Carechart event") from exc
        check_payload(event.topic, event.payload)
        return event


def write_event(
    conn: Connection,
    *,
    tenant: str,
    topic: str,
    payload: Mapping[str, Any],
    now: datetime | None = None,
) -> Event:
    """Add an event to the outbox in the caller's transaction (it commits or rolls back with
    the data it announces)."""
    if not _TOPIC.fullmatch(topic):
        raise EventFormatError("an event topic is dotted lower-case words")
    check_payload(topic, payload)
    event = Event(
        id=str(uuid.uuid4()),
        tenant=tenant,
        topic=topic,
        payload=dict(payload),
        created_at=now or _utcnow(),
    )
    conn.execute(
        outbox_event.insert(),
        {
            "id": event.id,
            "tenant_id": tenant,
            "topic": topic,
            "payload": json.dumps(event.payload, separators=(",", ":"), sort_keys=True),
            "created_at": event.created_at,
            "attempts": 0,
        },
    )
    return event


# --------------------------------------------------------------------------- delivery


class Publisher(Protocol):
    """Where a dispatcher delivers. ``publish`` returns once the event is delivered (or,
    for a broker, durably accepted) and raises otherwise."""

    def publish(self, event: Event) -> None: ...

    def close(self) -> None: ...


Subscriber = Callable[[Event], object]


class InProcessBus:
    """Delivery to subscribers in this process (the default when no broker is configured).

    A subscriber that raises makes the delivery fail, so the dispatcher retries the event
    later; subscribers that already ran see it again, which idempotent consumers tolerate.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[Subscriber]] = {}

    def subscribe(self, topic: str, handler: Subscriber) -> Callable[[], None]:
        """Call ``handler`` for each event of ``topic`` (``*``: every topic); returns the
        function that unsubscribes it."""
        with self._lock:
            self._subscribers.setdefault(topic, []).append(handler)

        def unsubscribe() -> None:
            with self._lock:
                handlers = self._subscribers.get(topic, [])
                if handler in handlers:
                    handlers.remove(handler)

        return unsubscribe

    def publish(self, event: Event) -> None:
        with self._lock:
            handlers = [*self._subscribers.get(event.topic, ()), *self._subscribers.get("*", ())]
        for handler in handlers:
            handler(event)

    def close(self) -> None:
        with self._lock:
            self._subscribers.clear()


def _event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        tenant=row.tenant_id,
        topic=row.topic,
        payload=json.loads(row.payload),
        created_at=_as_utc(row.created_at),
    )


@dataclass
class OutboxDispatcher:
    """Delivers undelivered outbox rows, at least once, and marks them delivered.

    Rows are claimed with a lease (``claimed_until``) in a short transaction of their own,
    published outside any transaction, then marked. Several dispatchers may run (one per
    process): on PostgreSQL the claim skips rows another dispatcher has locked, and a row
    whose dispatcher died is claimed again when its lease runs out. A failed delivery is
    retried after an exponential backoff.

    ``notify()`` after each commit: with a background thread running (``start()``) it wakes
    it, so deliveries of concurrent messages are batched; without one it delivers inline.
    """

    engine: Engine
    publisher: Publisher
    batch_size: int = 100
    lease: timedelta = timedelta(seconds=30)
    max_backoff: timedelta = timedelta(minutes=5)
    clock: Callable[[], datetime] = _utcnow
    _wake: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def claim(self, limit: int | None = None) -> list[Event]:
        """Take up to ``limit`` deliverable events (oldest first) for this dispatcher."""
        now = self.clock()
        o = outbox_event.c
        with unit_of_work(self.engine, write=True) as conn:
            candidates = (
                sa.select(o.id)
                .where(
                    o.delivered_at.is_(None),
                    sa.or_(o.claimed_until.is_(None), o.claimed_until < now),
                )
                .order_by(o.created_at, o.id)
                .limit(limit or self.batch_size)
            )
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            ids = list(conn.execute(candidates).scalars())
            if not ids:
                return []
            rows = conn.execute(
                outbox_event.update()
                .where(o.id.in_(ids), o.delivered_at.is_(None))
                .values(attempts=o.attempts + 1, claimed_until=now + self.lease)
                .returning(o.id, o.tenant_id, o.topic, o.payload, o.created_at)
            ).all()
        events = [_event_from_row(row) for row in rows]
        events.sort(key=lambda e: (e.created_at, e.id))
        return events

    def _settle(self, delivered: Sequence[str], failed: Sequence[str]) -> None:
        now = self.clock()
        o = outbox_event.c
        with unit_of_work(self.engine, write=True) as conn:
            if delivered:
                conn.execute(
                    outbox_event.update()
                    .where(o.id.in_(list(delivered)))
                    .values(delivered_at=now, claimed_until=None)
                )
            for event_id in failed:
                attempts = conn.execute(sa.select(o.attempts).where(o.id == event_id)).scalar()
                delay = min(self.max_backoff, timedelta(seconds=2 ** min(int(attempts or 1), 16)))
                conn.execute(
                    outbox_event.update()
                    .where(o.id == event_id, o.delivered_at.is_(None))
                    .values(claimed_until=now + delay)
                )

    def dispatch_once(self) -> int:
        """Claim one batch, deliver it, settle it; the number delivered."""
        events = self.claim()
        delivered: list[str] = []
        failed: list[str] = []
        for position, event in enumerate(events):
            try:
                self.publisher.publish(event)
            except Exception as exc:  # any subscriber or broker failure: retry later
                log.warning("event delivery failed (%s); will retry", type(exc).__name__)
                # The rest of the batch would most likely fail the same way (a broker
                # down): it waits for the retry instead of each timing out in turn.
                failed.extend(e.id for e in events[position:])
                break
            delivered.append(event.id)
        if events:
            self._settle(delivered, failed)
        return len(delivered)

    def drain(self, max_batches: int = 1000) -> int:
        """Deliver until nothing deliverable is left (bounded); the number delivered."""
        total = 0
        for _ in range(max_batches):
            events_before = total
            total += self.dispatch_once()
            if total == events_before:
                break
        return total

    # --- running in the background ----------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify(self) -> None:
        """New events were committed: deliver them (now, or soon in the background)."""
        if self.running:
            self._wake.set()
            return
        try:
            self.drain()
        except Exception as exc:  # the events stay in the outbox for the next drain
            log.warning("event delivery deferred (%s)", type(exc).__name__)

    def start(self, poll_interval: float = 1.0, linger: float = 0.02) -> None:
        """Deliver from a daemon thread: on each ``notify()`` and every ``poll_interval``
        seconds (which also picks up what an earlier process left undelivered). After a
        wake-up it lingers ``linger`` seconds so the commits of concurrent messages share
        one claim and one settle instead of two transactions each."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(poll_interval, linger), name="carechart-outbox", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, poll_interval: float, linger: float) -> None:
        while not self._stop.is_set():
            if self._wake.wait(poll_interval) and linger > 0:
                self._stop.wait(linger)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.drain()
            except Exception as exc:
                log.warning("event delivery deferred (%s)", type(exc).__name__)
        # A last pass, so what was committed before stop() is not left waiting.
        try:
            self.drain()
        except Exception as exc:
            log.warning("event delivery deferred at stop (%s)", type(exc).__name__)


def pending_count(engine: Engine, tenant: str | None = None) -> int:
    o = outbox_event.c
    query = sa.select(sa.func.count()).where(o.delivered_at.is_(None))
    if tenant is not None:
        query = query.where(o.tenant_id == tenant)
    with unit_of_work(engine, write=False) as conn:
        return int(conn.execute(query).scalar_one())


def purge_delivered(engine: Engine, older_than: datetime) -> int:
    """Delete events delivered before ``older_than``; the number deleted."""
    o = outbox_event.c
    with unit_of_work(engine, write=True) as conn:
        result = conn.execute(
            outbox_event.delete().where(o.delivered_at.is_not(None), o.delivered_at < older_than)
        )
        return int(result.rowcount or 0)


# --------------------------------------------------------------------------- consuming


def _insert_ignoring_duplicates(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert ``row`` into event_consumption; False when the key is already there.

    ON CONFLICT DO NOTHING (both engines): on PostgreSQL a concurrent insert of the same key
    waits for the other transaction and then does nothing if it committed.
    """
    statement: Any
    if conn.dialect.name == "postgresql":
        statement = postgresql.insert(event_consumption).on_conflict_do_nothing()
    elif conn.dialect.name == "sqlite":
        statement = sqlite.insert(event_consumption).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two supported engines exist
        raise RuntimeError(f"unsupported database {conn.dialect.name}")
    # RETURNING, not rowcount: psycopg reports -1 for a statement that inserted nothing.
    inserted = conn.execute(statement.returning(event_consumption.c.event_id), row).first()
    return inserted is not None


Handler = Callable[[Connection, Event], None]


@dataclass
class IdempotentConsumer:
    """Runs ``handler`` at most once per event id for consumer ``name``.

    The consumption record and the handler's own writes share one transaction: either both
    commit (the event is done) or neither does (a redelivery runs it again). Returns True
    when the handler ran, False for an event this consumer has already processed.
    """

    engine: Engine
    name: str
    handler: Handler
    clock: Callable[[], datetime] = _utcnow

    def __call__(self, event: Event) -> bool:
        with unit_of_work(self.engine, write=True) as conn:
            fresh = _insert_ignoring_duplicates(
                conn,
                {
                    "consumer": self.name,
                    "event_id": event.id,
                    "tenant_id": event.tenant,
                    "processed_at": self.clock(),
                },
            )
            if fresh:
                self.handler(conn, event)
        return fresh


def processed(engine: Engine, consumer: str, event_ids: Iterable[str]) -> set[str]:
    """Which of ``event_ids`` ``consumer`` has processed."""
    ids = list(event_ids)
    if not ids:
        return set()
    c = event_consumption.c
    with unit_of_work(engine, write=False) as conn:
        return set(
            conn.execute(
                sa.select(c.event_id).where(c.consumer == consumer, c.event_id.in_(ids))
            ).scalars()
        )
