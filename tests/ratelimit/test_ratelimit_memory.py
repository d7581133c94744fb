"""The in-process limiter (GCRA) and the login throttle built on it, on a hand-moved clock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ratelimit.support import FakeClock

from carechart.auth.lockout import InMemoryTokenBucket as ReExportedBucket
from carechart.config import Settings
from carechart.ratelimit import InMemoryTokenBucket, MemoryRateLimiter, Rule, build_limiter
from carechart.ratelimit.redis_backend import RedisRateLimiter

# 3 at once, then one every 2 seconds.
THREE_PER_6S = Rule(name="test", limit=3, period=6.0)


def test_burst_is_allowed_then_refused_with_retry_after(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    decisions = [limiter.hit("ip:10.0.0.1", THREE_PER_6S) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.retry_after_seconds == 2
    assert refused.wait_seconds == pytest.approx(2.0)


def test_retry_after_is_whole_seconds_rounded_up(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    rule = Rule(name="test", limit=1, period=2.5)
    assert limiter.hit("k", rule).allowed
    clock.advance(2.4)
    refused = limiter.hit("k", rule)
    assert not refused.allowed
    assert refused.wait_seconds == pytest.approx(0.1)
    assert refused.retry_after_seconds == 1


def test_refill_is_continuous_after_the_clock_advances(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    for _ in range(3):
        limiter.hit("k", THREE_PER_6S)
    assert not limiter.hit("k", THREE_PER_6S).allowed
    clock.advance(1.999)
    assert not limiter.hit("k", THREE_PER_6S).allowed
    clock.advance(0.001)
    # One interval has passed: exactly one more request.
    assert limiter.hit("k", THREE_PER_6S).allowed
    assert not limiter.hit("k", THREE_PER_6S).allowed
    # A full period refills the whole burst, and never more than it.
    clock.advance(600)
    assert [limiter.hit("k", THREE_PER_6S).allowed for _ in range(4)] == [True] * 3 + [False]


def test_refused_requests_do_not_push_the_wait_further(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    for _ in range(3):
        limiter.hit("k", THREE_PER_6S)
    for _ in range(50):
        assert limiter.hit("k", THREE_PER_6S).retry_after_seconds == 2
    clock.advance(2)
    assert limiter.hit("k", THREE_PER_6S).allowed


def test_keys_and_rules_are_independent(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    other_rule = Rule(name="other", limit=3, period=6.0)
    for _ in range(3):
        limiter.hit("ip:10.0.0.1", THREE_PER_6S)
    assert not limiter.hit("ip:10.0.0.1", THREE_PER_6S).allowed
    assert limiter.hit("ip:10.0.0.2", THREE_PER_6S).allowed
    assert limiter.hit("ip:10.0.0.1", other_rule).allowed


def test_memory_is_bounded_and_forgets_the_least_recently_seen(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(max_keys=10, clock=clock)
    one = Rule(name="test", limit=1, period=60)
    limiter.hit("busy", one)
    for index in range(100):
        limiter.hit(f"idle-{index}", one)
        # Kept recent, so never evicted.
        assert not limiter.hit("busy", one).allowed
    assert len(limiter) == 10
    # The oldest idle keys were forgotten and start afresh.
    assert limiter.hit("idle-0", one).allowed


def test_concurrent_hits_never_exceed_the_burst(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(clock=clock)
    rule = Rule(name="test", limit=50, period=60)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            decision = limiter.hit("shared", rule)
            with lock:
                allowed.append(decision.allowed)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 50
    assert len(allowed) == 200


@pytest.mark.parametrize(
    ("limit", "period"),
    [(0, 60.0), (-1, 60.0), (5, 0.0), (5, -1.0), (5, float("nan")), (5, float("inf"))],
)
def test_rules_need_a_positive_limit_and_period(limit: int, period: float) -> None:
    with pytest.raises(ValueError):
        Rule(name="bad", limit=limit, period=period)


def test_the_login_throttle_is_the_same_limiter_re_exported() -> None:
    assert ReExportedBucket is InMemoryTokenBucket
    clock = FakeClock()
    bucket = InMemoryTokenBucket(capacity=2, rate=0.5, clock=clock)
    assert [bucket.wait_seconds("ip") for _ in range(3)] == [0, 0, pytest.approx(2.0)]


def test_build_limiter_is_in_memory_without_a_redis_url(tmp_path: Path) -> None:
    limiter = build_limiter(Settings(data_dir=tmp_path))
    assert isinstance(limiter, MemoryRateLimiter)
    limiter.close()


def test_build_limiter_uses_redis_when_a_url_is_set(tmp_path: Path) -> None:
    # No connection is made until the first hit, so no server is needed here.
    settings_ = Settings(
        data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", rate_limit_redis_prefix="x:"
    )
    limiter = build_limiter(settings_)
    try:
        assert isinstance(limiter, RedisRateLimiter)
        assert limiter.prefix == "x:"
    finally:
        limiter.close()


# --- properties ----------------------------------------------------------------------------

rules = st.builds(
    Rule,
    name=st.just("p"),
    limit=st.integers(min_value=1, max_value=20),
    period=st.floats(min_value=0.001, max_value=100, allow_nan=False),
)
# Gaps between requests, often zero (bursts), sometimes long (refills).
gaps = st.lists(
    st.one_of(
        st.just(0.0),
        st.floats(min_value=0, max_value=1, allow_nan=False),
        st.floats(min_value=0, max_value=200, allow_nan=False),
    ),
    min_size=1,
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(rule=rules, gaps=gaps)
def test_no_window_ever_admits_more_than_burst_plus_rate_times_window(
    rule: Rule, gaps: list[float]
) -> None:
    clock = FakeClock(start=0.0)
    limiter = MemoryRateLimiter(clock=clock)
    admitted: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        if limiter.hit("k", rule).allowed:
            admitted.append(clock.now)
    rate = rule.limit / rule.period
    # Every window that holds any admitted request can be narrowed to start and end on one.
    for first in range(len(admitted)):
        for last in range(first, len(admitted)):
            window = admitted[last] - admitted[first]
            count = last - first + 1
            # One microsecond of slack: the clock is read in whole microseconds.
            assert count <= rule.limit + rate * (window + 1e-6)


@settings(max_examples=300, deadline=None)
@given(
    rule=rules,
    gaps_ms=st.lists(st.integers(min_value=0, max_value=5_000), min_size=1, max_size=60),
)
def test_waiting_exactly_the_announced_time_is_enough_and_less_is_not(
    rule: Rule, gaps_ms: list[int]
) -> None:
    clock = FakeClock(start=0.0)
    limiter = MemoryRateLimiter(clock=clock)
    for gap in gaps_ms:
        clock.advance(gap / 1000)
        decision = limiter.hit("k", rule)
        if decision.allowed:
            assert decision.retry_after_seconds == 0
            continue
        assert decision.retry_after_seconds >= 1
        assert decision.retry_after_seconds >= decision.wait_seconds
        start = clock.now
        clock.now = start + decision.wait_seconds - 1e-6
        assert not limiter.hit("k", rule).allowed
        clock.now = start + decision.wait_seconds
        assert limiter.hit("k", rule).allowed
