"""The transactional outbox on both engines: written with the data, delivered at least once
(in process and to the real local NATS JetStream), consumed once per event id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from tests.integrations.hl7_support import interface, oru, outbox_rows

from carechart.context import AppContext
from carechart.db.engine import unit_of_work
from carechart.db.integration_schema import outbox_event
from carechart.integrations.events.jetstream import (
    JetStreamConsumer,
    JetStreamPublisher,
    subject_for,
    subject_token,
)
from carechart.integrations.events.outbox import (
    LAB_RESULT_RECEIVED,
    TOPIC_KEYS,
    Event,
    EventFormatError,
    IdempotentConsumer,
    InProcessBus,
    OutboxDispatcher,
    check_payload,
    pending_count,
    processed,
    purge_delivered,
    write_event,
)
from carechart.integrations.hl7v2.ack import AckCode
from carechart.integrations.hl7v2.service import Hl7Service

NATS_URL = os.environ.get("CARECHART_TEST_NATS_URL", "nats://127.0.0.1:4222")
PAYLOAD = {
    "report": "DiagnosticReport/r1",
    "patient": "Patient/p1",
    "observations": ["Observation/o1", "Observation/o2"],
    "abnormal": True,
    "critical": False,
    "abnormal_observations": ["Observation/o2"],
    "critical_observations": [],
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _write(engine: Engine, tenant: str, payload: dict[str, Any] | None = None) -> Event:
    with unit_of_work(engine, write=True) as conn:
        return write_event(
            conn, tenant=tenant, topic=LAB_RESULT_RECEIVED, payload=payload or PAYLOAD
        )


def _pending(engine: Engine, tenant: str) -> int:
    return pending_count(engine, tenant)


def test_an_event_commits_and_rolls_back_with_its_transaction(
    integration_engine: Engine, tenant: str
) -> None:

    def failing_unit_of_work() -> None:
        with unit_of_work(integration_engine, write=True) as conn:
            write_event(conn, tenant=tenant, topic=LAB_RESULT_RECEIVED, payload=PAYLOAD)
            raise RuntimeError("the data failed")

    with pytest.raises(RuntimeError):
        failing_unit_of_work()
    assert outbox_rows(integration_engine, tenant) == []
    event = _write(integration_engine, tenant)
    (row,) = outbox_rows(integration_engine, tenant)
    assert row.id == event.id
    assert row.delivered_at is None
    assert row.attempts == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"report": "DiagnosticReport/r1", "name": "Jane Doe"},  # unknown key
        {"report": "Jane Doe"},  # not a reference
        {"observations": ["Observation/o1", "glucose 180 mg/dL"]},
        {"abnormal": "yes"},
        {"patient": {"reference": "Patient/p1"}},
    ],
)
def test_payloads_hold_ids_and_flags_only(payload: dict[str, Any]) -> None:
    with pytest.raises(EventFormatError):
        check_payload(LAB_RESULT_RECEIVED, payload)


def test_unknown_topics_are_refused() -> None:
    with pytest.raises(EventFormatError):
        check_payload("patient.admitted", {})


def test_in_process_delivery_marks_events_delivered(
    integration_engine: Engine, tenant: str
) -> None:
    bus = InProcessBus()
    seen: list[Event] = []
    bus.subscribe(LAB_RESULT_RECEIVED, lambda e: seen.append(e) if e.tenant == tenant else None)
    dispatcher = OutboxDispatcher(integration_engine, bus)
    events = [_write(integration_engine, tenant) for _ in range(3)]
    dispatcher.drain()
    assert [e.id for e in seen] == [e.id for e in events]
    assert seen[0].payload == PAYLOAD
    assert _pending(integration_engine, tenant) == 0
    dispatcher.drain()
    assert len(seen) == 3  # delivered events are not delivered again


def test_a_failed_delivery_is_retried_after_a_backoff(
    integration_engine: Engine, tenant: str
) -> None:
    clock = Clock()
    bus = InProcessBus()
    calls: list[str] = []
    fail = [True]

    def flaky(event: Event) -> None:
        if event.tenant != tenant:
            return
        calls.append(event.id)
        if fail[0]:
            raise ConnectionError("subscriber down")

    bus.subscribe("*", flaky)
    dispatcher = OutboxDispatcher(integration_engine, bus, clock=clock)
    event = _write(integration_engine, tenant)
    clock.now += timedelta(seconds=1)  # the event is created at the real time
    dispatcher.drain()
    assert calls == [event.id]
    assert _pending(integration_engine, tenant) == 1
    dispatcher.drain()  # still backing off
    assert calls == [event.id]
    fail[0] = False
    clock.now += timedelta(minutes=6)
    dispatcher.drain()
    assert calls == [event.id, event.id]
    (row,) = outbox_rows(integration_engine, tenant)
    assert row.delivered_at is not None
    assert row.attempts == 2


def test_an_event_claimed_by_a_dispatcher_that_died_is_delivered_again(
    integration_engine: Engine, tenant: str
) -> None:
    clock = Clock()
    bus = InProcessBus()
    seen: list[str] = []
    bus.subscribe("*", lambda e: seen.append(e.id) if e.tenant == tenant else None)
    event = _write(integration_engine, tenant)
    clock.now += timedelta(seconds=1)
    crashed = OutboxDispatcher(integration_engine, bus, clock=clock)
    claimed = [e for e in crashed.claim(1000) if e.tenant == tenant]
    assert [e.id for e in claimed] == [event.id]  # ... and then it never settled
    other = OutboxDispatcher(integration_engine, bus, clock=clock)
    other.drain()
    assert seen == []  # still leased
    clock.now += timedelta(seconds=31)
    other.drain()
    assert seen == [event.id]
    assert _pending(integration_engine, tenant) == 0


def test_background_dispatcher_delivers_on_notify_and_on_stop(
    integration_engine: Engine, tenant: str
) -> None:
    bus = InProcessBus()
    delivered = threading.Event()
    bus.subscribe("*", lambda e: delivered.set() if e.tenant == tenant else None)
    dispatcher = OutboxDispatcher(integration_engine, bus)
    dispatcher.start(poll_interval=30)
    try:
        _write(integration_engine, tenant)
        dispatcher.notify()
        assert delivered.wait(10)
    finally:
        dispatcher.stop()
    assert not dispatcher.running
    assert _pending(integration_engine, tenant) == 0


def test_purge_removes_delivered_events_only(integration_engine: Engine, tenant: str) -> None:
    _write(integration_engine, tenant)
    OutboxDispatcher(integration_engine, InProcessBus()).drain()
    _write(integration_engine, tenant)
    purge_delivered(integration_engine, datetime.now(UTC) + timedelta(seconds=1))
    rows = outbox_rows(integration_engine, tenant)
    assert len(rows) == 1
    assert rows[0].delivered_at is None


def _counter_consumer(engine: Engine, name: str, calls: list[str]) -> IdempotentConsumer:
    def handle(conn: Connection, event: Event) -> None:
        calls.append(event.id)
        conn.execute(sa.select(1))  # the consumer's own work shares the transaction

    return IdempotentConsumer(engine, name, handle)


def test_idempotent_consumer_processes_each_event_once(
    integration_engine: Engine, tenant: str
) -> None:
    calls: list[str] = []
    consumer = _counter_consumer(integration_engine, f"test-{tenant}", calls)
    event = _write(integration_engine, tenant)
    assert consumer(event) is True
    assert consumer(event) is False
    assert calls == [event.id]
    assert processed(integration_engine, f"test-{tenant}", [event.id]) == {event.id}
    # Another consumer has its own record of what it did.
    other: list[str] = []
    assert _counter_consumer(integration_engine, f"other-{tenant}", other)(event) is True


def test_idempotent_consumer_handler_failure_lets_the_event_come_back(
    integration_engine: Engine, tenant: str
) -> None:
    attempts: list[str] = []

    def handle(conn: Connection, event: Event) -> None:
        attempts.append(event.id)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    consumer = IdempotentConsumer(integration_engine, f"retry-{tenant}", handle)
    event = _write(integration_engine, tenant)
    with pytest.raises(RuntimeError):
        consumer(event)
    assert consumer(event) is True
    assert consumer(event) is False
    assert len(attempts) == 2


def test_concurrent_redelivery_to_an_idempotent_consumer_processes_once(
    integration_engine: Engine, tenant: str
) -> None:
    calls: list[str] = []
    consumer = _counter_consumer(integration_engine, f"race-{tenant}", calls)
    event = _write(integration_engine, tenant)
    barrier = threading.Barrier(4)
    outcomes: list[bool] = []

    def deliver() -> None:
        barrier.wait(5)
        outcomes.append(consumer(event))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == [False, False, False, True]
    assert calls == [event.id]


def test_ingest_events_carry_ids_and_flags_only(
    ctx: AppContext, service: Hl7Service, bus: InProcessBus, tenant: str
) -> None:
    received: list[Event] = []
    bus.subscribe("*", lambda e: received.append(e) if e.tenant == tenant else None)
    service.ingest(oru("EV-1", mrn="CANARY-4242"), interface(tenant))
    (event,) = received
    assert set(event.payload) == TOPIC_KEYS[LAB_RESULT_RECEIVED]
    wire = event.to_json()
    assert b"CANARY" not in wire
    assert b"DOE" not in wire
    assert b"Glucose" not in wire
    assert Event.from_json(wire) == event


# --------------------------------------------------------------------------- JetStream


def _nats_reachable() -> bool:
    async def probe() -> bool:
        import nats

        try:
            nc = await nats.connect(NATS_URL, connect_timeout=1, max_reconnect_attempts=0)
        except Exception:
            return False
        await nc.close()
        return True

    return asyncio.run(probe())


@pytest.fixture
def jetstream() -> Iterator[tuple[str, str]]:
    """A uniquely named stream (and subject prefix) for one test, deleted afterwards."""
    if not _nats_reachable():
        if os.environ.get("CARECHART_REQUIRE_NATS") == "1":
            pytest.fail(f"NATS is not reachable at {NATS_URL} (CARECHART_REQUIRE_NATS=1)")
        pytest.skip(f"NATS with JetStream is not reachable at {NATS_URL}")
    suffix = uuid.uuid4().hex[:10]
    stream, prefix = f"CARECHART_TEST_{suffix}", f"carechart-test-{suffix}"
    yield stream, prefix

    async def delete() -> None:
        import nats

        nc = await nats.connect(NATS_URL)
        with contextlib.suppress(Exception):  # the test may not have created it
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


async def _stream_messages(stream: str) -> int:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


def test_subjects_name_the_tenant_and_topic() -> None:
    assert subject_for("carechart", "t-1", LAB_RESULT_RECEIVED) == (
        "carechart.t-1.lab-result.received"
    )
    assert subject_token("a.b*c>d e") == "a_b_c_d_e"


def test_jetstream_publication_is_deduplicated_by_event_id(
    integration_engine: Engine, tenant: str, jetstream: tuple[str, str]
) -> None:
    stream, prefix = jetstream
    publisher = JetStreamPublisher(NATS_URL, stream=stream, subject_prefix=prefix)
    try:
        event = _write(integration_engine, tenant)
        first = publisher.publish_ack(event)
        again = publisher.publish_ack(event)  # a redelivery from the outbox
        assert first.stream == stream
        assert not first.duplicate
        assert again.duplicate
        assert again.seq == first.seq
    finally:
        publisher.close()
    assert asyncio.run(_stream_messages(stream)) == 1


def test_ingest_delivers_lab_results_to_jetstream(
    ctx: AppContext, tenant: str, integration_engine: Engine, jetstream: tuple[str, str]
) -> None:
    stream, prefix = jetstream
    publisher = JetStreamPublisher(NATS_URL, stream=stream, subject_prefix=prefix)
    dispatcher = OutboxDispatcher(integration_engine, publisher)
    service = Hl7Service(ctx, dispatcher=dispatcher)
    try:
        result = service.ingest(oru("JS-1"), interface(tenant))
        assert result.ack_code is AckCode.ACCEPT
    finally:
        publisher.close()
    (row,) = outbox_rows(integration_engine, tenant)
    assert row.delivered_at is not None
    (event,) = result.events

    async def fetch() -> Any:
        import nats

        nc = await nats.connect(NATS_URL)
        try:
            subject = subject_for(prefix, tenant, LAB_RESULT_RECEIVED)
            sub = await nc.jetstream().pull_subscribe(subject, stream=stream)
            (msg,) = await sub.fetch(1, timeout=5)
            await msg.ack()
            return msg
        finally:
            await nc.close()

    msg = asyncio.run(fetch())
    assert msg.subject == f"{prefix}.{tenant}.lab-result.received"
    assert msg.headers["Nats-Msg-Id"] == event.id
    assert Event.from_json(msg.data) == event


def test_jetstream_redelivery_does_not_double_process(
    integration_engine: Engine, tenant: str, jetstream: tuple[str, str]
) -> None:
    stream, prefix = jetstream
    publisher = JetStreamPublisher(NATS_URL, stream=stream, subject_prefix=prefix)
    try:
        event = _write(integration_engine, tenant)
        publisher.publish(event)
    finally:
        publisher.close()
    calls: list[str] = []
    idempotent = _counter_consumer(integration_engine, f"js-{tenant}", calls)
    crash_before_ack = [True]

    def consume(e: Event) -> bool:
        done = idempotent(e)
        if crash_before_ack[0]:
            crash_before_ack[0] = False
            raise ConnectionResetError("died before acknowledging")
        return done

    async def run() -> None:
        consumer = JetStreamConsumer(
            NATS_URL,
            stream=stream,
            subject=f"{prefix}.>",
            durable=f"test-{uuid.uuid4().hex[:8]}",
            consume=consume,
            ack_wait=1.0,
        )
        async with consumer:
            with pytest.raises(ConnectionResetError):
                await consumer.run_once(1, timeout=5)
            # Not acknowledged: JetStream delivers it again after ack_wait.
            handled = 0
            for _ in range(10):
                handled += await consumer.run_once(1, timeout=1)
                if handled:
                    break
            assert handled == 1

    asyncio.run(run())
    assert calls == [event.id]
    assert processed(integration_engine, f"js-{tenant}", [event.id]) == {event.id}


def test_unreachable_nats_leaves_events_pending(integration_engine: Engine, tenant: str) -> None:
    publisher = JetStreamPublisher("nats://127.0.0.1:1", timeout=0.5)
    try:
        dispatcher = OutboxDispatcher(integration_engine, publisher)
        _write(integration_engine, tenant)
        dispatcher.notify()  # never raises: delivery is deferred
    finally:
        publisher.close()
    assert _pending(integration_engine, tenant) == 1
    row = outbox_rows(integration_engine, tenant)[0]
    assert row.attempts >= 1
    with unit_of_work(integration_engine, write=False) as conn:
        retry = conn.execute(
            sa.select(outbox_event.c.claimed_until).where(outbox_event.c.id == row.id)
        ).scalar_one()
    assert retry is not None
