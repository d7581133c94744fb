"""The Redis limiter, against the local Redis: same decisions as in memory, shared by every
app server, atomic, and harmless when Redis is gone.

Redis keeps its own time, so nothing here waits for it: rules have long periods, and a
refill is made by moving a key's stored state back by one interval.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import anyio
import pytest
import redis
from redis.exceptions import NoScriptError
from tests.ratelimit.support import FakeClock

from carechart.ratelimit import Rule
from carechart.ratelimit.limiter import key_digest
from carechart.ratelimit.redis_backend import RedisRateLimiter

# 3 at once, then one every 20 minutes: far longer than any test runs.
THREE_PER_HOUR = Rule(name="test", limit=3, period=3600.0)


def test_burst_is_allowed_then_refused_with_retry_after(redis_limiter: RedisRateLimiter) -> None:
    decisions = [redis_limiter.hit("ip:10.0.0.1", THREE_PER_HOUR) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    # The next request is one interval (1200 s) after the first, minus the time elapsed.
    assert 1100 <= decisions[-1].retry_after_seconds <= 1200


def test_refused_requests_do_not_consume(redis_limiter: RedisRateLimiter) -> None:
    for _ in range(3):
        redis_limiter.hit("k", THREE_PER_HOUR)
    waits = [redis_limiter.hit("k", THREE_PER_HOUR).retry_after_seconds for _ in range(20)]
    assert all(1100 <= wait <= 1200 for wait in waits)


def test_keys_and_rules_are_independent(redis_limiter: RedisRateLimiter) -> None:
    other = Rule(name="other", limit=3, period=3600.0)
    for _ in range(3):
        redis_limiter.hit("ip:10.0.0.1", THREE_PER_HOUR)
    assert not redis_limiter.hit("ip:10.0.0.1", THREE_PER_HOUR).allowed
    assert redis_limiter.hit("ip:10.0.0.2", THREE_PER_HOUR).allowed
    assert redis_limiter.hit("ip:10.0.0.1", other).allowed


def test_refill_after_one_interval(
    redis_limiter: RedisRateLimiter, redis_client: redis.Redis
) -> None:
    for _ in range(3):
        redis_limiter.hit("k", THREE_PER_HOUR)
    assert not redis_limiter.hit("k", THREE_PER_HOUR).allowed
    # As if one interval had passed.
    redis_client.decrby(redis_limiter.redis_key("k", THREE_PER_HOUR), THREE_PER_HOUR.interval_us)
    assert redis_limiter.hit("k", THREE_PER_HOUR).allowed
    assert not redis_limiter.hit("k", THREE_PER_HOUR).allowed


def test_keys_are_prefixed_hashed_and_expire(
    redis_limiter: RedisRateLimiter, redis_client: redis.Redis, redis_prefix: str
) -> None:
    redis_limiter.hit("user:alice@example.org", THREE_PER_HOUR)
    keys = [key.decode() for key in redis_client.scan_iter(match=redis_prefix + "*")]
    assert keys == [f"{redis_prefix}test:{key_digest('user:alice@example.org')}"]
    assert "alice" not in keys[0]
    # The key lives as long as its bucket is not full again: one interval after one request.
    ttl_ms = redis_client.pttl(keys[0])
    assert 0 < ttl_ms <= THREE_PER_HOUR.interval_us // 1000 + 1


def test_app_servers_share_one_bucket(
    redis_url: str, redis_prefix: str, redis_limiter: RedisRateLimiter
) -> None:
    other_server = RedisRateLimiter.from_url(redis_url, prefix=redis_prefix)
    try:
        assert redis_limiter.hit("k", THREE_PER_HOUR).allowed
        assert other_server.hit("k", THREE_PER_HOUR).allowed
        assert redis_limiter.hit("k", THREE_PER_HOUR).allowed
        assert not other_server.hit("k", THREE_PER_HOUR).allowed
        assert not redis_limiter.hit("k", THREE_PER_HOUR).allowed
    finally:
        other_server.close()


def test_concurrent_hits_never_exceed_the_burst(redis_limiter: RedisRateLimiter) -> None:
    rule = Rule(name="test", limit=40, period=3600.0)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(15):
            decision = redis_limiter.hit("shared", rule)
            with lock:
                allowed.append(decision.allowed)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 40
    assert len(allowed) == 90


class FlushedScriptCache(redis.Redis):
    """A client whose server has forgotten the script (restart, failover, SCRIPT FLUSH),
    without flushing the shared local server's cache."""

    evalsha_calls = 0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.evalsha_calls += 1
        raise NoScriptError("NOSCRIPT No matching script.")


def test_a_forgotten_script_falls_back_to_eval(redis_url: str, redis_prefix: str) -> None:
    client = FlushedScriptCache.from_url(redis_url)
    assert isinstance(client, FlushedScriptCache)
    limiter = RedisRateLimiter(client, prefix=redis_prefix)
    try:
        assert [limiter.hit("k", THREE_PER_HOUR).allowed for _ in range(4)] == [True] * 3 + [False]
        assert client.evalsha_calls == 4
    finally:
        limiter.close()


def test_hit_async_answers_like_hit(redis_limiter: RedisRateLimiter) -> None:
    async def hits() -> list[bool]:
        return [(await redis_limiter.hit_async("k", THREE_PER_HOUR)).allowed for _ in range(4)]

    assert anyio.run(hits) == [True, True, True, False]


# --- Redis unavailable ---------------------------------------------------------------------


def test_an_unreachable_redis_falls_back_to_memory(
    unused_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisRateLimiter.from_url(unused_redis_url)
    try:
        with caplog.at_level(logging.WARNING, logger="carechart.ratelimit"):
            decisions = [limiter.hit("user:alice@example.org", THREE_PER_HOUR) for _ in range(4)]
    finally:
        limiter.close()
    # Still limited, by the in-process fallback.
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after_seconds == 1200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "alice" not in caplog.text
    assert key_digest("user:alice@example.org")[:12] in caplog.text


class CountingClient(redis.Redis):
    calls = 0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        self.calls += 1
        return super().evalsha(sha, numkeys, *keys_and_args)


def test_redis_is_left_alone_for_a_cooldown_then_tried_again(unused_redis_url: str) -> None:
    clock = FakeClock()
    client = CountingClient.from_url(unused_redis_url, socket_connect_timeout=0.5)
    assert isinstance(client, CountingClient)
    limiter = RedisRateLimiter(client, cooldown=5.0, clock=clock)
    try:
        limiter.hit("k", THREE_PER_HOUR)
        limiter.hit("k", THREE_PER_HOUR)
        assert client.calls == 1
        clock.advance(5.0)
        limiter.hit("k", THREE_PER_HOUR)
        assert client.calls == 2
    finally:
        limiter.close()


def test_hit_async_falls_back_without_raising(unused_redis_url: str) -> None:
    limiter = RedisRateLimiter.from_url(unused_redis_url)

    async def hits() -> list[bool]:
        return [(await limiter.hit_async("k", THREE_PER_HOUR)).allowed for _ in range(4)]

    try:
        assert anyio.run(hits) == [True, True, True, False]
    finally:
        limiter.close()


def test_redis_coming_back_is_used_again(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    class FailingOnce(redis.Redis):
        failed = False

        def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            if not self.failed:
                self.failed = True
                raise redis.ConnectionError("connection refused")
            return super().evalsha(sha, numkeys, *keys_and_args)

    clock = FakeClock()
    limiter = RedisRateLimiter(FailingOnce.from_url(redis_url), prefix=redis_prefix, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="carechart.ratelimit"):
            assert limiter.hit("k", THREE_PER_HOUR).allowed
            clock.advance(10)
            assert [limiter.hit("k", THREE_PER_HOUR).allowed for _ in range(4)] == [True] * 3 + [
                False
            ]
        assert "reachable again" in caplog.text
    finally:
        limiter.close()
