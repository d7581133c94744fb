"""Fixtures for the rate-limit tests: a movable clock and, for the Redis backend, the local
Redis under a fresh key prefix per test, emptied afterwards.

Redis comes from ``CARECHART_TEST_REDIS_URL`` (default: the local server). When it is
unreachable the Redis tests are skipped, unless ``CARECHART_REQUIRE_REDIS`` is set (CI).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
import redis
from tests.ratelimit.support import FakeClock

from carechart.ratelimit.redis_backend import RedisRateLimiter

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("CARECHART_TEST_REDIS_URL", DEFAULT_REDIS)
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as probe:
            probe.ping()
    except redis.RedisError:
        if os.environ.get("CARECHART_REQUIRE_REDIS"):
            raise
        pytest.skip("Redis is not reachable")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"carechart:test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=prefix + "*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def redis_limiter(redis_url: str, redis_prefix: str) -> Iterator[RedisRateLimiter]:
    limiter = RedisRateLimiter.from_url(redis_url, prefix=redis_prefix)
    yield limiter
    limiter.close()


@pytest.fixture
def unused_redis_url() -> str:
    """A port nothing listens on: the kernel just handed it out and it was closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"
