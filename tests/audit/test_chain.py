"""SECURITY C1, C3, C4, C5: append-only, HMAC-chained audit records."""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection, Engine

from carechart.audit.chain import (
    GENESIS,
    AuditChainBroken,
    AuditRecord,
    ChainVerification,
    Checkpoint,
    StoredEvent,
    append,
    append_many,
    export_checkpoint,
    find_first_tamper,
    read_checkpoint,
    record_mac,
    stored_events,
    verify,
)
from carechart.auth.errors import Unauthorized
from carechart.auth.tokens import SigningKey
from carechart.crypto.keys import KeyRing
from carechart.db.auth_schema import AUDIT_TRIGGER_SQL, audit_event
from carechart.db.engine import unit_of_work

C1_COLUMNS = {
    "recorded_at",
    "user_id",
    "client_id",
    "role",
    "patient_id",
    "resource_type",
    "resource_id",
    "action",
    "data_category",
    "outcome",
    "source_ip",
    "user_agent",
    "purpose_of_use",
    "correlation_id",
}


def _record(index: int) -> AuditRecord:
    return AuditRecord(
        action="read",
        outcome="success",
        user_id=f"user-{index % 3}",
        client_id="web",
        role="physician",
        patient_id=f"pat-{index % 5}",
        resource_type="Observation",
        resource_id=f"obs-{index}",
        data_category="laboratory",
        source_ip="192.0.2.7",
        user_agent="pytest",
        purpose_of_use="TREAT",
        correlation_id=f"corr-{index}",
    )


def _append(
    engine: Engine, keyring: KeyRing, tenant: str, count: int, now: datetime
) -> list[StoredEvent]:
    with unit_of_work(engine, write=True) as conn:
        return [
            append(conn, keyring, tenant=tenant, record=_record(i), now=now + timedelta(seconds=i))
            for i in range(count)
        ]


def _verify(
    engine: Engine, keyring: KeyRing, tenant: str, checkpoints: list[Checkpoint] | None = None
) -> ChainVerification:
    with unit_of_work(engine, write=False) as conn:
        return verify(conn, keyring, tenant=tenant, checkpoints=checkpoints or [])


@contextmanager
def _tampering(engine: Engine) -> Iterator[Connection]:
    """An attacker with table-owner rights: the append-only triggers are lifted for one
    transaction and put back, as someone covering their tracks would."""
    with unit_of_work(engine, write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE audit_event DISABLE TRIGGER USER")
            yield conn
            conn.exec_driver_sql("ALTER TABLE audit_event ENABLE TRIGGER USER")
        else:
            conn.exec_driver_sql("DROP TRIGGER audit_event_no_update")
            conn.exec_driver_sql("DROP TRIGGER audit_event_no_delete")
            yield conn
            for statement in AUDIT_TRIGGER_SQL["sqlite"]:
                conn.exec_driver_sql(statement)


def _row(tenant: str, index: int) -> sa.ColumnElement[bool]:
    return sa.and_(audit_event.c.tenant_id == tenant, audit_event.c.chain_index == index)


def test_audit_record_carries_the_c1_fields() -> None:
    assert set(audit_event.c.keys()) >= C1_COLUMNS
    assert {f.name for f in dataclasses.fields(AuditRecord)} == C1_COLUMNS - {"recorded_at"}


def test_appended_records_form_a_verifiable_chain(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    events = _append(audit_engine, keyring, tenant, 5, now)
    assert [e.chain_index for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.record_hash for a, b in itertools.pairwise(events))
    result = _verify(audit_engine, keyring, tenant)
    assert result.ok
    assert (result.records, result.head_index, result.head_hash) == (5, 5, events[-1].record_hash)


def test_stored_record_reads_back_as_written(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    written = _append(audit_engine, keyring, tenant, 1, now)[0]
    with unit_of_work(audit_engine, write=False) as conn:
        (read,) = list(stored_events(conn, tenant))
    assert read == written


def test_audit_record_commits_with_the_callers_transaction(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    class DataWriteFailed(Exception):
        pass

    def request_whose_data_write_fails() -> None:
        with unit_of_work(audit_engine, write=True) as conn:
            append(conn, keyring, tenant=tenant, record=_record(0), now=now)
            raise DataWriteFailed

    with pytest.raises(DataWriteFailed):
        request_whose_data_write_fails()
    result = _verify(audit_engine, keyring, tenant)
    assert result.ok
    assert result.records == 0


def test_overlong_values_are_cut_to_their_column_not_refused(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    record = dataclasses.replace(_record(0), user_agent="Mozilla/5.0 " * 1000)
    with unit_of_work(audit_engine, write=True) as conn:
        stored = append(conn, keyring, tenant=tenant, record=record, now=now)
    assert stored.record.user_agent is not None
    assert len(stored.record.user_agent) == 512
    assert _verify(audit_engine, keyring, tenant).ok


def test_append_many_extends_the_chain_in_order(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    _append(audit_engine, keyring, tenant, 2, now)
    with unit_of_work(audit_engine, write=True) as conn:
        events = append_many(
            conn, keyring, tenant=tenant, records=[_record(i) for i in range(4)], now=now
        )
        assert append_many(conn, keyring, tenant=tenant, records=[]) == []
    assert [e.chain_index for e in events] == [3, 4, 5, 6]
    assert _verify(audit_engine, keyring, tenant).records == 6


def test_verify_streams_long_chains_in_batches(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    _append(audit_engine, keyring, tenant, 7, now)
    with unit_of_work(audit_engine, write=False) as conn:
        events = list(stored_events(conn, tenant, batch=2))
    assert [e.chain_index for e in events] == list(range(1, 8))
    assert find_first_tamper(keyring.derived(tenant, "audit-chain"), tenant, events).ok


def test_tenants_have_separate_chains(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    other = tenant + "-b"
    keyring.active(other)
    _append(audit_engine, keyring, tenant, 3, now)
    _append(audit_engine, keyring, other, 2, now)
    assert _verify(audit_engine, keyring, tenant).records == 3
    assert _verify(audit_engine, keyring, other).records == 2


def test_update_of_audit_row_is_refused_by_trigger(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    _append(audit_engine, keyring, tenant, 2, now)
    with (
        pytest.raises(sa.exc.DatabaseError, match="append-only"),
        unit_of_work(audit_engine, write=True) as conn,
    ):
        conn.execute(audit_event.update().where(_row(tenant, 1)).values(outcome="failure"))
    assert _verify(audit_engine, keyring, tenant).ok


def test_delete_of_audit_row_is_refused_by_trigger(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    _append(audit_engine, keyring, tenant, 2, now)
    with (
        pytest.raises(sa.exc.DatabaseError, match="append-only"),
        unit_of_work(audit_engine, write=True) as conn,
    ):
        conn.execute(audit_event.delete().where(audit_event.c.tenant_id == tenant))
    assert _verify(audit_engine, keyring, tenant).records == 2


def test_truncate_of_audit_table_is_refused_on_postgresql(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    if audit_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE; DELETE without WHERE hits the delete trigger")
    _append(audit_engine, keyring, tenant, 1, now)
    with (
        pytest.raises(sa.exc.DatabaseError, match="append-only"),
        unit_of_work(audit_engine, write=True) as conn,
    ):
        conn.exec_driver_sql("TRUNCATE audit_event")
    assert _verify(audit_engine, keyring, tenant).records == 1


def _forged_hash(record_hash: str) -> str:
    return record_mac(
        os.urandom(32),
        tenant="x",
        prev_hash=record_hash,
        recorded_at=datetime.now(),
        record=_record(0),
    )


def _flip_negative(conn: Connection, tenant: str) -> None:
    # Renumbering goes through negative indices: PostgreSQL checks uniqueness row by row.
    t = audit_event
    conn.execute(
        t.update()
        .where(t.c.tenant_id == tenant, t.c.chain_index < 0)
        .values(chain_index=-t.c.chain_index)
    )


def _tamper(
    conn: Connection, tenant: str, kind: str, index: int, events: list[StoredEvent]
) -> None:
    t = audit_event
    if kind == "modify":
        conn.execute(t.update().where(_row(tenant, index)).values(patient_id="pat-other"))
    elif kind == "rewrite-hash":
        # Edit, then "fix" the hash without the key (and re-link the successor to it).
        new_hash = _forged_hash(events[index - 1].record_hash)
        conn.execute(
            t.update()
            .where(_row(tenant, index))
            .values(patient_id="pat-other", record_hash=new_hash)
        )
        conn.execute(t.update().where(_row(tenant, index + 1)).values(prev_hash=new_hash))
    elif kind == "delete":
        conn.execute(t.delete().where(_row(tenant, index)))
    elif kind == "delete-and-renumber":
        conn.execute(t.delete().where(_row(tenant, index)))
        later = sa.and_(t.c.tenant_id == tenant, t.c.chain_index > index)
        conn.execute(t.update().where(later).values(chain_index=-(t.c.chain_index - 1)))
        _flip_negative(conn, tenant)
    elif kind == "insert":
        # Make room at ``index``.
        later = sa.and_(t.c.tenant_id == tenant, t.c.chain_index >= index)
        conn.execute(t.update().where(later).values(chain_index=-(t.c.chain_index + 1)))
        _flip_negative(conn, tenant)
        prev = events[index - 2].record_hash if index > 1 else GENESIS
        conn.execute(
            t.insert().values(
                tenant_id=tenant,
                chain_index=index,
                recorded_at=events[0].recorded_at,
                prev_hash=prev,
                record_hash=_forged_hash(prev),
                **dataclasses.asdict(_record(99)),
            )
        )
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "index", "expected"),
    [
        ("modify", 3, "modified"),
        ("modify", 1, "modified"),
        ("rewrite-hash", 2, "modified"),
        ("delete", 3, "deleted"),
        ("delete", 1, "deleted"),
        ("delete-and-renumber", 4, "deleted"),
        ("insert", 3, "inserted"),
        ("insert", 1, "inserted"),
    ],
)
def test_verify_names_first_tampered_record(
    audit_engine: Engine,
    keyring: KeyRing,
    tenant: str,
    now: datetime,
    kind: str,
    index: int,
    expected: str,
) -> None:
    events = _append(audit_engine, keyring, tenant, 6, now)
    with _tampering(audit_engine) as conn:
        _tamper(conn, tenant, kind, index, events)
    result = _verify(audit_engine, keyring, tenant)
    assert result.first_tamper is not None
    assert (result.first_tamper.kind, result.first_tamper.chain_index) == (expected, index)
    assert result.head_index == index - 1


def test_tail_deletion_is_caught_by_a_signed_checkpoint(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    signer = SigningKey.generate()
    _append(audit_engine, keyring, tenant, 4, now)
    with unit_of_work(audit_engine, write=False) as conn:
        token = export_checkpoint(conn, keyring, tenant=tenant, signer=signer, now=now)
    checkpoint = read_checkpoint(token, {signer.kid: signer.public_key})
    assert (checkpoint.tenant, checkpoint.chain_index) == (tenant, 4)
    with _tampering(audit_engine) as conn:
        conn.execute(
            audit_event.delete().where(
                audit_event.c.tenant_id == tenant, audit_event.c.chain_index >= 3
            )
        )
    assert _verify(audit_engine, keyring, tenant).ok  # without the checkpoint, a clean cut
    result = _verify(audit_engine, keyring, tenant, [checkpoint])
    assert result.first_tamper is not None
    assert (result.first_tamper.kind, result.first_tamper.chain_index) == ("deleted", 3)


def test_chain_rebuilt_after_checkpoint_is_detected(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    pinned = Checkpoint(tenant=tenant, chain_index=2, record_hash="f" * 64, issued_at=now)
    _append(audit_engine, keyring, tenant, 3, now)
    result = _verify(audit_engine, keyring, tenant, [pinned])
    assert result.first_tamper is not None
    assert (result.first_tamper.kind, result.first_tamper.chain_index) == ("modified", 2)


def test_forged_checkpoint_is_rejected(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    signer, impostor = SigningKey.generate(), SigningKey.generate()
    _append(audit_engine, keyring, tenant, 1, now)
    with unit_of_work(audit_engine, write=False) as conn:
        token = export_checkpoint(conn, keyring, tenant=tenant, signer=impostor, now=now)
    with pytest.raises(Unauthorized):
        read_checkpoint(token, {signer.kid: signer.public_key})


def test_checkpoint_of_a_broken_chain_is_refused(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    events = _append(audit_engine, keyring, tenant, 3, now)
    with _tampering(audit_engine) as conn:
        _tamper(conn, tenant, "modify", 2, events)
    with unit_of_work(audit_engine, write=False) as conn, pytest.raises(AuditChainBroken):
        export_checkpoint(conn, keyring, tenant=tenant, signer=SigningKey.generate(), now=now)


def test_concurrent_appends_form_one_chain(
    audit_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(10):
                with unit_of_work(audit_engine, write=True) as conn:
                    append(conn, keyring, tenant=tenant, record=_record(offset + i))
        except BaseException as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = _verify(audit_engine, keyring, tenant)
    assert result.ok
    assert result.records == 40


# --- the verifier against random chains (pure, no database) -----------------------------

KEY = b"k" * 32
TENANT = "t-prop"
BASE = datetime(2026, 1, 1, 12, 0, 0).astimezone()


def _chain(count: int) -> list[StoredEvent]:
    events, prev = [], GENESIS
    for i in range(count):
        at = BASE + timedelta(seconds=i)
        digest = record_mac(KEY, tenant=TENANT, prev_hash=prev, recorded_at=at, record=_record(i))
        events.append(StoredEvent(i + 1, at, _record(i), prev, digest))
        prev = digest
    return events


def _renumbered(events: list[StoredEvent]) -> list[StoredEvent]:
    return [dataclasses.replace(e, chain_index=n) for n, e in enumerate(events, start=1)]


@settings(max_examples=300)
@given(
    count=st.integers(min_value=1, max_value=25),
    kind=st.sampled_from(["none", "modify", "rewrite-hash", "delete", "insert", "replay"]),
    data=st.data(),
)
def test_verifier_finds_the_single_tamper_in_a_random_chain(
    count: int, kind: str, data: st.DataObject
) -> None:
    events = _chain(count)
    head = Checkpoint(TENANT, count, events[-1].record_hash, BASE)
    position = data.draw(st.integers(min_value=0, max_value=count - 1))
    expected: tuple[str, int] | None = None
    if kind == "modify":
        field = data.draw(
            st.sampled_from(["user_id", "patient_id", "action", "outcome", "resource_id"])
        )
        changed = dataclasses.replace(events[position].record, **{field: "tampered"})
        events[position] = dataclasses.replace(events[position], record=changed)
        expected = ("modified", position + 1)
    elif kind == "rewrite-hash":
        changed = dataclasses.replace(events[position].record, patient_id="tampered")
        forged = record_mac(
            b"x" * 32,
            tenant=TENANT,
            prev_hash=events[position].prev_hash,
            recorded_at=events[position].recorded_at,
            record=changed,
        )
        events[position] = dataclasses.replace(events[position], record=changed, record_hash=forged)
        expected = ("modified", position + 1)
    elif kind == "delete":
        renumber = data.draw(st.booleans())
        del events[position]
        if renumber:
            events = _renumbered(events)
        expected = ("deleted", position + 1)
    elif kind in {"insert", "replay"}:
        prev = events[position - 1].record_hash if position else GENESIS
        if kind == "insert":
            intruder = StoredEvent(0, BASE, _record(99), prev, "0" * 64)
        else:  # a genuine record copied to a second place in the chain
            intruder = events[data.draw(st.integers(min_value=0, max_value=count - 1))]
        # A copy placed just before its original is indistinguishable from it: the original
        # is then the record out of place.
        shift = 2 if intruder is events[position] else 1
        events = _renumbered([*events[:position], intruder, *events[position:]])
        expected = ("inserted", position + shift)
    result = find_first_tamper(KEY, TENANT, events, [head])
    if expected is None:
        assert result.ok
        assert result.records == count
    else:
        assert result.first_tamper is not None
        assert (result.first_tamper.kind, result.first_tamper.chain_index) == expected
