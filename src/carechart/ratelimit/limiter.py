"""Rate limiting by GCRA (the generic cell rate algorithm), in process or shared through Redis.

GCRA is a token bucket kept as one number per key, the "theoretical arrival time" (TAT): the
moment the key's bucket would be full again. A rule allows ``limit`` requests at once and
refills continuously at ``limit`` per ``period``. Keeping one integer per key is what lets
the Redis backend update it atomically in one short script.

All arithmetic is in integer microseconds so that both backends (Python here, Lua in Redis)
compute exactly the same answers, and so no rounding ever lets through more than
``limit + rate × window`` requests in any window.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from carechart.config import Settings

MICROSECONDS = 1_000_000


@dataclass(frozen=True, slots=True)
class Rule:
    """``limit`` requests at once (the burst), refilled continuously at ``limit``/``period``.

    ``name`` namespaces the state: the same key under two rules has two independent buckets.
    """

    name: str
    limit: int
    period: float

    def __post_init__(self) -> None:
        if not self.name or self.limit < 1 or not (math.isfinite(self.period) and self.period > 0):
            raise ValueError("a rule needs a name, a limit >= 1 and a positive period")

    @property
    def interval_us(self) -> int:
        # Rounded up: a slightly slower refill can never admit more than the nominal rate.
        return max(1, math.ceil(round(self.period * MICROSECONDS) / self.limit))

    @property
    def tolerance_us(self) -> int:
        # A multiple of the interval, so the burst is exactly ``limit``.
        return self.interval_us * self.limit

    @classmethod
    def per_minute(cls, name: str, limit: int) -> Rule:
        return cls(name=name, limit=limit, period=60.0)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # Whole seconds to wait, rounded up (Retry-After); at least 1 when refused, else 0.
    retry_after_seconds: int
    # Requests still allowed at once after this one (0 when refused).
    remaining: int
    # The exact wait in seconds, for callers that want more than whole seconds.
    wait_seconds: float = 0.0


ALLOWED_ALWAYS = Decision(allowed=True, retry_after_seconds=0, remaining=0)


def refused(wait_us: int) -> Decision:
    seconds = max(1, -(-wait_us // MICROSECONDS))
    return Decision(
        allowed=False,
        retry_after_seconds=seconds,
        remaining=0,
        wait_seconds=wait_us / MICROSECONDS,
    )


def gcra(tat: int | None, now: int, rule: Rule) -> tuple[Decision, int | None]:
    """One request at ``now`` against a key whose state is ``tat`` (None: never seen).

    Returns the decision and the new state (None: unchanged, since a refused request does
    not consume anything). The Lua script in :mod:`carechart.ratelimit.redis_backend` is
    this function, line for line.
    """
    base = now if tat is None or tat < now else tat
    new_tat = base + rule.interval_us
    allow_at = new_tat - rule.tolerance_us
    if allow_at > now:
        return refused(allow_at - now), None
    remaining = (rule.tolerance_us - (new_tat - now)) // rule.interval_us
    return Decision(allowed=True, retry_after_seconds=0, remaining=remaining), new_tat


def key_digest(key: str) -> str:
    """A short stand-in for a key in logs and Redis key names: keys hold IPs and user ids."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()


class RateLimiter(Protocol):
    """Counts one request for ``key`` under ``rule`` and says whether it may proceed.

    Implementations never raise for an unavailable backend: a limiter that turned into 500s
    would make every request fail when only the counting is broken (SECURITY F1).
    """

    def hit(self, key: str, rule: Rule) -> Decision: ...

    async def hit_async(self, key: str, rule: Rule) -> Decision:
        """Like :meth:`hit`, without blocking the event loop on network I/O."""
        ...

    def close(self) -> None: ...


class MemoryRateLimiter:
    """GCRA state per (rule, key) in this process; thread-safe.

    Memory is bounded: beyond ``max_keys`` the least recently seen keys are forgotten, which
    at worst hands a forgotten key a fresh, full bucket. Each worker process counts on its
    own, so with N workers a client gets up to N times the limit; set
    ``CARECHART_REDIS_URL`` to share the counts.
    """

    def __init__(
        self,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._state: OrderedDict[tuple[str, str], int] = OrderedDict()

    def hit(self, key: str, rule: Rule) -> Decision:
        # Rounded, not truncated: 0.000003 s times 10^6 is 2.9999999999999996 in binary.
        now = round(self._clock() * MICROSECONDS)
        slot = (rule.name, key)
        with self._lock:
            tat = self._state.pop(slot, None)
            decision, new_tat = gcra(tat, now, rule)
            if new_tat is not None:
                tat = new_tat
            if tat is not None:
                self._state[slot] = tat
                while len(self._state) > self._max_keys:
                    self._state.popitem(last=False)
        return decision

    async def hit_async(self, key: str, rule: Rule) -> Decision:
        return self.hit(key, rule)

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._state)


class Throttle(Protocol):
    """How long ``key`` must wait before its next request: 0 when it may go now.

    A call that returns 0 has consumed one request's worth of the allowance.
    """

    def wait_seconds(self, key: str) -> float: ...


class InMemoryTokenBucket:
    """A :class:`Throttle` over :class:`MemoryRateLimiter` with one rule: ``capacity`` burst
    (whole requests), ``rate`` requests per second. Used by the login routes."""

    def __init__(
        self,
        *,
        capacity: float,
        rate: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or rate <= 0:
            raise ValueError("a bucket needs capacity >= 1 and a positive rate")
        limit = int(capacity)
        self._rule = Rule(name="throttle", limit=limit, period=limit / rate)
        self._limiter = MemoryRateLimiter(max_keys=max_keys, clock=clock)

    @property
    def _buckets(self) -> OrderedDict[tuple[str, str], int]:
        # The auth tests look at this to check that memory stays bounded.
        return self._limiter._state

    def wait_seconds(self, key: str) -> float:
        return self._limiter.hit(key, self._rule).wait_seconds


def build_limiter(settings: Settings) -> RateLimiter:
    """Redis when ``CARECHART_REDIS_URL`` is set (counts shared by every app server),
    otherwise in process."""
    if settings.redis_url:
        # Imported here so that processes without Redis never load the client library.
        from carechart.ratelimit.redis_backend import RedisRateLimiter

        return RedisRateLimiter.from_url(
            settings.redis_url, prefix=settings.rate_limit_redis_prefix
        )
    return MemoryRateLimiter()
