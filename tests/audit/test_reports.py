"""SECURITY C6: audit reports select exactly the records their filters describe, page after
page, on both engines."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from tests.audit.conftest import Seed

from carechart.audit.chain import AuditRecord, StoredEvent
from carechart.audit.reports import (
    MAX_LIMIT,
    EventFilters,
    InvalidCursor,
    Order,
    activity_of_user,
    audit_tenants,
    break_glass_review,
    disclosures_of_patient,
    event_at,
    failed_logins,
    has_events,
    in_period,
    query_events,
)
from carechart.crypto.keys import KeyRing
from carechart.db.engine import unit_of_work
from carechart.errors import BadRequest

T = TypeVar("T")

BASE = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
PATIENTS = ["pat-1", "pat-2", "pat-3", None]
USERS = ["user-a", "user-b", None]
ACTIONS = ["read", "search", "create", "login", "mfa", "break-glass"]
OUTCOMES = ["success", "failure", "denied"]
TYPES = ["Observation", "Patient", "AuditEvent", None]
PURPOSES = ["TREAT", "BTG", "HOPERAT", None]


def _dataset(count: int, seed: int) -> list[tuple[datetime, AuditRecord]]:
    """Records with fields drawn from small pools (so filters hit) and recorded_at on a
    minute grid out of chain order (so the time window cannot lean on chain order)."""
    rng = random.Random(seed)
    return [
        (
            BASE + timedelta(minutes=rng.randint(0, 60)),
            AuditRecord(
                action=rng.choice(ACTIONS),
                outcome=rng.choice(OUTCOMES),
                user_id=rng.choice(USERS),
                role="nurse",
                patient_id=rng.choice(PATIENTS),
                resource_type=rng.choice(TYPES),
                resource_id=f"r-{n}",
                purpose_of_use=rng.choice(PURPOSES),
                source_ip="192.0.2.1",
                correlation_id=f"c-{n}",
            ),
        )
        for n in range(count)
    ]


def _matches(event: StoredEvent, filters: EventFilters) -> bool:
    """The reference: the filter semantics written out plainly, row by row."""
    r = event.record

    def among(value: str | None, allowed: frozenset[str] | None) -> bool:
        return allowed is None or (value is not None and value in allowed)

    return (
        among(r.patient_id, filters.patient_ids)
        and among(r.user_id, filters.user_ids)
        and among(r.action, filters.actions)
        and among(r.outcome, filters.outcomes)
        and among(r.resource_type, filters.resource_types)
        and among(r.purpose_of_use, filters.purposes)
        and (filters.since is None or event.recorded_at >= filters.since)
        and (filters.until is None or event.recorded_at < filters.until)
        and (not filters.break_glass or r.purpose_of_use == "BTG" or r.action == "break-glass")
    )


def _expected(events: list[StoredEvent], filters: EventFilters, order: Order) -> list[int]:
    indexes = [e.chain_index for e in events if _matches(e, filters)]
    return indexes if order == "asc" else indexes[::-1]


def _walk(
    engine: Engine, tenant: str, filters: EventFilters, limit: int, order: Order
) -> list[list[int]]:
    """Every page, following next_cursor to the end."""
    pages: list[list[int]] = []
    cursor: str | None = None
    with unit_of_work(engine, write=False) as conn:
        while True:
            page = query_events(conn, tenant, filters, limit=limit, cursor=cursor, order=order)
            pages.append([e.chain_index for e in page.events])
            if page.next_cursor is None:
                return pages
            assert len(page.events) == limit
            cursor = page.next_cursor
            assert len(pages) <= 200, "paging does not end"


def _rarely(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    """Usually no constraint: with every filter set at once almost nothing would match."""
    return st.integers(min_value=0, max_value=3).flatmap(
        lambda n: strategy if n == 0 else st.none()
    )


def _some(pool: list[str | None]) -> st.SearchStrategy[frozenset[str] | None]:
    values = [v for v in pool if v is not None]
    return _rarely(st.frozensets(st.sampled_from(values), min_size=1, max_size=3))


_MOMENTS = _rarely(
    st.integers(min_value=-5, max_value=65).map(lambda m: BASE + timedelta(minutes=m))
)
FILTERS = st.builds(
    EventFilters,
    patient_ids=_some(PATIENTS),
    user_ids=_some(USERS),
    actions=_some(ACTIONS),
    outcomes=_some(OUTCOMES),
    resource_types=_some(TYPES),
    purposes=_some(PURPOSES),
    since=_MOMENTS,
    until=_MOMENTS,
    break_glass=_rarely(st.just(True)).map(bool),
)


def test_filters_and_paging_give_exactly_the_brute_force_rows(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    events = seed(_dataset(60, seed=7))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        filters=FILTERS,
        limit=st.integers(min_value=1, max_value=12),
        order=st.sampled_from(["asc", "desc"]),
    )
    def check(filters: EventFilters, limit: int, order: Order) -> None:
        pages = _walk(audit_engine, tenant, filters, limit, order)
        assert [i for page in pages for i in page] == _expected(events, filters, order)
        assert all(len(page) <= limit for page in pages)
        # Only an empty result has an empty page.
        assert all(pages) or pages == [[]]

    check()


def test_one_page_holds_everything_when_the_limit_allows(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    events = seed(_dataset(7, seed=1))
    with unit_of_work(audit_engine, write=False) as conn:
        page = query_events(conn, tenant, EventFilters(), limit=7, order="asc")
        assert page.events == events
        assert page.next_cursor is None
        newest = query_events(conn, tenant, EventFilters(), limit=3)
    assert [e.chain_index for e in newest.events] == [7, 6, 5]
    assert newest.next_cursor is not None


def test_events_read_back_exactly_as_appended(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    events = seed(_dataset(3, seed=2))
    with unit_of_work(audit_engine, write=False) as conn:
        assert event_at(conn, tenant, 2) == events[1]
        assert event_at(conn, tenant, 4) is None
        assert has_events(conn, tenant)
        assert not has_events(conn, tenant + "-none")
        assert tenant in audit_tenants(conn)


def test_desc_paging_is_stable_while_records_are_appended(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    seed(_dataset(6, seed=3))
    with unit_of_work(audit_engine, write=False) as conn:
        first = query_events(conn, tenant, EventFilters(), limit=4)
    seed(_dataset(5, seed=4))  # new records arrive between two page requests
    with unit_of_work(audit_engine, write=False) as conn:
        second = query_events(conn, tenant, EventFilters(), limit=4, cursor=first.next_cursor)
    assert [e.chain_index for e in first.events] == [6, 5, 4, 3]
    assert [e.chain_index for e in second.events] == [2, 1]
    assert second.next_cursor is None


def test_other_tenants_records_never_appear(
    audit_engine: Engine, keyring: KeyRing, tenant: str, seed: Seed
) -> None:
    from carechart.audit.chain import append

    seed(_dataset(3, seed=5))
    other = tenant + "-other"
    keyring.active(other)
    with unit_of_work(audit_engine, write=True) as conn:
        for at, record in _dataset(4, seed=5):
            append(conn, keyring, tenant=other, record=record, now=at)
    with unit_of_work(audit_engine, write=False) as conn:
        mine = query_events(conn, tenant, EventFilters(), limit=MAX_LIMIT)
        theirs = query_events(conn, other, EventFilters(), limit=MAX_LIMIT)
    assert len(mine.events) == 3
    assert len(theirs.events) == 4


def _at(minute: int) -> datetime:
    return BASE + timedelta(minutes=minute)


def _report_rows(
    engine: Engine, tenant: str, filters: EventFilters, order: Order = "asc"
) -> list[str | None]:
    with unit_of_work(engine, write=False) as conn:
        page = query_events(conn, tenant, filters, limit=MAX_LIMIT, order=order)
    return [e.record.correlation_id for e in page.events]


def test_named_reports_select_their_events(audit_engine: Engine, tenant: str, seed: Seed) -> None:
    def rec(name: str, **fields: str) -> AuditRecord:
        values = {"action": "read", "outcome": "success", **fields}
        return AuditRecord(correlation_id=name, **values)

    seed(
        [
            (_at(0), rec("read-p1", user_id="u1", patient_id="p1", purpose_of_use="TREAT")),
            (_at(1), rec("btg-p1", user_id="u2", patient_id="p1", purpose_of_use="BTG")),
            (_at(2), rec("glass", user_id="u2", action="break-glass", patient_id="p2")),
            (_at(3), rec("login-bad", user_id="u1", action="login", outcome="failure")),
            (_at(4), rec("mfa-denied", user_id="u3", action="mfa", outcome="denied")),
            (_at(5), rec("login-ok", user_id="u3", action="login")),
            (_at(6), rec("token-bad", user_id="u1", action="token", outcome="failure")),
            (_at(7), rec("read-p2", user_id="u1", patient_id="p2")),
        ]
    )

    def rows(filters: EventFilters) -> list[str | None]:
        return _report_rows(audit_engine, tenant, filters)

    assert rows(disclosures_of_patient("p1")) == ["read-p1", "btg-p1"]
    assert rows(activity_of_user("u1")) == ["read-p1", "login-bad", "token-bad", "read-p2"]
    assert rows(in_period(_at(2), _at(5))) == ["glass", "login-bad", "mfa-denied"]
    assert rows(break_glass_review()) == ["btg-p1", "glass"]
    assert rows(failed_logins()) == ["login-bad", "mfa-denied"]
    # Reports compose with further filters, which narrow and never widen them.
    assert rows(failed_logins(EventFilters.of(user_id="u3"))) == ["mfa-denied"]
    assert rows(failed_logins(EventFilters.of(action="read"))) == []
    assert rows(break_glass_review(EventFilters.of(patient_id="p2"))) == ["glass"]
    assert rows(disclosures_of_patient("p2", EventFilters.of(patient_id="p1"))) == []
    assert rows(in_period(_at(0), _at(9), EventFilters(since=_at(6)))) == ["token-bad", "read-p2"]
    assert _report_rows(audit_engine, tenant, activity_of_user("u2"), order="desc") == [
        "glass",
        "btg-p1",
    ]


def test_an_empty_set_matches_nothing_and_none_matches_everything(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    seed(_dataset(5, seed=6))
    assert _report_rows(audit_engine, tenant, EventFilters(actions=frozenset())) == []
    assert len(_report_rows(audit_engine, tenant, EventFilters())) == 5


def test_a_cursor_only_continues_the_query_that_issued_it(
    audit_engine: Engine, tenant: str, seed: Seed
) -> None:
    seed(_dataset(6, seed=8))
    reads = EventFilters.of(action="read")
    with unit_of_work(audit_engine, write=False) as conn:
        page = query_events(conn, tenant, EventFilters(), limit=2)
        cursor = page.next_cursor
        assert cursor is not None
        query_events(conn, tenant, EventFilters(), limit=5, cursor=cursor)  # limit may change
        mismatched: list[tuple[EventFilters, Order]] = [(reads, "desc"), (EventFilters(), "asc")]
        for filters, order in mismatched:
            with pytest.raises(InvalidCursor):
                query_events(conn, tenant, filters, limit=2, cursor=cursor, order=order)
        for forged in ["", "x", "YWJj", cursor[:-2], cursor + "A", "é" * 10, "A" * 200]:
            with pytest.raises(InvalidCursor):
                query_events(conn, tenant, EventFilters(), limit=2, cursor=forged)


@pytest.mark.parametrize("limit", [0, -1, MAX_LIMIT + 1])
def test_limits_outside_the_range_are_refused(
    audit_engine: Engine, tenant: str, limit: int
) -> None:
    with unit_of_work(audit_engine, write=False) as conn, pytest.raises(BadRequest):
        query_events(conn, tenant, EventFilters(), limit=limit)


def test_single_valued_filters_name_the_columns() -> None:
    filters = EventFilters.of(patient_id="p", user_id="u", action="read", purpose_of_use="BTG")
    assert filters.patient_ids == frozenset({"p"})
    assert filters.outcomes is None
    assert dataclasses.replace(filters, outcomes=frozenset()).canonical() != filters.canonical()


def test_report_helpers_keep_other_filters() -> None:
    base = EventFilters.of(outcome="success", since=_at(1))
    assert disclosures_of_patient("p", base).outcomes == frozenset({"success"})
    window = in_period(_at(0), _at(3), base)
    assert (window.since, window.until) == (_at(1), _at(3))
