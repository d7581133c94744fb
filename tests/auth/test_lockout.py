"""SECURITY A4, F1: five failures lock fifteen minutes; per-key throttling with Retry-After."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from carechart.auth.errors import AccountLocked, RateLimited
from carechart.auth.lockout import (
    InMemoryTokenBucket,
    LockoutPolicy,
    Throttle,
    enforce,
    ensure_not_locked,
    locked_until,
    record_failure,
    record_success,
)
from carechart.auth.passwords import canonical_username
from carechart.db.engine import unit_of_work


def _fail(engine: Engine, tenant: str, now: datetime, account: str = "alice") -> datetime | None:
    with unit_of_work(engine, write=True) as conn:
        return record_failure(conn, tenant=tenant, account=account, now=now)


def _locked(engine: Engine, tenant: str, now: datetime, account: str = "alice") -> datetime | None:
    with unit_of_work(engine, write=False) as conn:
        return locked_until(conn, tenant=tenant, account=account, now=now)


def test_five_consecutive_failures_lock_for_15_minutes(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    for attempt in range(4):
        assert _fail(auth_engine, tenant, now + timedelta(seconds=attempt)) is None
    unlock_at = _fail(auth_engine, tenant, now + timedelta(seconds=4))
    assert unlock_at == now + timedelta(seconds=4, minutes=15)
    assert _locked(auth_engine, tenant, now + timedelta(minutes=10)) == unlock_at


def test_locked_account_answers_423_with_the_unlock_time(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    for _ in range(5):
        _fail(auth_engine, tenant, now)
    with unit_of_work(auth_engine, write=False) as conn, pytest.raises(AccountLocked) as caught:
        ensure_not_locked(conn, tenant=tenant, account="alice", now=now + timedelta(minutes=1))
    assert caught.value.status == 423
    assert caught.value.code == "ACCOUNT_LOCKED"
    assert caught.value.details["unlock_at"] == (now + timedelta(minutes=15)).isoformat()


def test_lock_ends_after_15_minutes(auth_engine: Engine, tenant: str, now: datetime) -> None:
    for _ in range(5):
        _fail(auth_engine, tenant, now)
    assert _locked(auth_engine, tenant, now + timedelta(minutes=15)) is None
    with unit_of_work(auth_engine, write=False) as conn:
        ensure_not_locked(conn, tenant=tenant, account="alice", now=now + timedelta(minutes=15))
    # A fresh window: one more failure does not lock again.
    assert _fail(auth_engine, tenant, now + timedelta(minutes=16)) is None


def test_success_resets_the_consecutive_count(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    for _ in range(4):
        _fail(auth_engine, tenant, now)
    with unit_of_work(auth_engine, write=True) as conn:
        record_success(conn, tenant=tenant, account="alice")
    for _ in range(4):
        assert _fail(auth_engine, tenant, now) is None
    assert _locked(auth_engine, tenant, now) is None


def test_failures_while_locked_do_not_extend_the_lock(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    for _ in range(5):
        unlock_at = _fail(auth_engine, tenant, now)
    for minute in range(1, 10):
        assert _fail(auth_engine, tenant, now + timedelta(minutes=minute)) == unlock_at


def test_lockout_counts_per_tenant_and_canonical_account(
    auth_engine: Engine, tenant: str, now: datetime
) -> None:
    for variant in ["Alice", "ALICE", "Ａlice", "alice", "aLiCe"]:
        _fail(auth_engine, tenant, now, account=canonical_username(variant))
    assert _locked(auth_engine, tenant, now) is not None
    assert _locked(auth_engine, tenant + "-other", now) is None
    assert _locked(auth_engine, tenant, now, account="bob") is None


def test_policy_is_configurable(auth_engine: Engine, tenant: str, now: datetime) -> None:
    policy = LockoutPolicy(threshold=2, duration=timedelta(minutes=1))
    with unit_of_work(auth_engine, write=True) as conn:
        assert record_failure(conn, tenant=tenant, account="carol", now=now, policy=policy) is None
        assert record_failure(
            conn, tenant=tenant, account="carol", now=now, policy=policy
        ) == now + timedelta(minutes=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_asks_to_wait() -> None:
    clock = FakeClock()
    bucket: Throttle = InMemoryTokenBucket(capacity=3, rate=0.5, clock=clock)
    assert [bucket.wait_seconds("10.0.0.1") for _ in range(3)] == [0, 0, 0]
    assert bucket.wait_seconds("10.0.0.1") == pytest.approx(2.0)
    assert bucket.wait_seconds("10.0.0.2") == 0


def test_token_bucket_refills_over_time() -> None:
    clock = FakeClock()
    bucket = InMemoryTokenBucket(capacity=2, rate=1.0, clock=clock)
    bucket.wait_seconds("ip")
    bucket.wait_seconds("ip")
    assert bucket.wait_seconds("ip") > 0
    clock.now += 1.0
    assert bucket.wait_seconds("ip") == 0


def test_throttled_request_gets_429_with_retry_after() -> None:
    clock = FakeClock()
    bucket = InMemoryTokenBucket(capacity=1, rate=0.1, clock=clock)
    enforce(bucket, "ip")
    with pytest.raises(RateLimited) as caught:
        enforce(bucket, "ip")
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "10"


def test_token_bucket_memory_is_bounded() -> None:
    bucket = InMemoryTokenBucket(capacity=1, rate=1.0, max_keys=100, clock=FakeClock())
    for index in range(1000):
        bucket.wait_seconds(f"ip-{index}")
    assert len(bucket._buckets) == 100
