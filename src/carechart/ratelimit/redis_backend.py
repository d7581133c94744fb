"""The rate limiter shared by every app server, in Redis (DESIGN 2: shared state goes to Redis).

One Lua script does the whole GCRA step, so concurrent requests on several servers cannot
interleave between read and write. The script reads the Redis server's clock (TIME), so
servers whose clocks disagree still agree on every bucket.

Redis being down must not take the API down with it: a failed call is answered by an
in-process limiter, and Redis is left alone for a short cool-down so that each request does
not pay a connection timeout while it is away.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry
from starlette.concurrency import run_in_threadpool

from carechart.ratelimit.limiter import (
    Decision,
    MemoryRateLimiter,
    Rule,
    key_digest,
    refused,
)

log = logging.getLogger("carechart.ratelimit")

DEFAULT_PREFIX = "carechart:rl:"

# carechart.ratelimit.limiter.gcra, in Lua. Numbers are integer microseconds; Lua's numbers
# are doubles, exact up to 2^53 µs (about 285 years of Unix time). The state is written with
# %.0f because Lua's default number formatting keeps only 14 significant digits.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now, 0}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, 0, math.floor((tolerance - (new_tat - now)) / interval)}
"""
# EVALSHA names the script by this digest; it is how Redis caches scripts, not a security use.
GCRA_SHA1 = hashlib.sha1(GCRA_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisRateLimiter:
    """GCRA in Redis, keyed ``<prefix><rule name>:<digest of key>``.

    Keys are digests: Redis is not the place for IP addresses and user ids, and a digest has
    a fixed length whatever the caller put in the key.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        fallback: MemoryRateLimiter | None = None,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._fallback = fallback or MemoryRateLimiter()
        self._cooldown = cooldown
        self._clock = clock
        # While the clock is before this, Redis is considered down and not tried.
        self._skip_until = 0.0
        self._down = False

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 0.25
    ) -> RedisRateLimiter:
        # Short timeouts and no retries: a slow Redis would otherwise slow every request,
        # and the in-process fallback is a better answer than a late one.
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, prefix=prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    def redis_key(self, key: str, rule: Rule) -> str:
        return f"{self._prefix}{rule.name}:{key_digest(key)}"

    def _evaluate(self, redis_key: str, rule: Rule) -> Decision:
        args = (rule.interval_us, rule.tolerance_us)
        try:
            reply = self._client.evalsha(GCRA_SHA1, 1, redis_key, *args)
        except NoScriptError:
            # The script cache was flushed (restart, SCRIPT FLUSH, failover): EVAL reloads it.
            reply = self._client.eval(GCRA_SCRIPT, 1, redis_key, *args)
        if not isinstance(reply, list) or len(reply) != 3:
            raise ResponseError("unexpected reply from the rate-limit script")
        allowed, wait_us, remaining = (int(part) for part in reply)
        if allowed:
            return Decision(allowed=True, retry_after_seconds=0, remaining=remaining)
        return refused(wait_us)

    def hit(self, key: str, rule: Rule) -> Decision:
        if self._clock() < self._skip_until:
            return self._fallback.hit(key, rule)
        try:
            decision = self._evaluate(self.redis_key(key, rule), rule)
        except (RedisError, OSError) as exc:
            self._skip_until = self._clock() + self._cooldown
            if not self._down:
                self._down = True
                # The error's type only: its text could name the server, and never the key.
                log.warning(
                    "rate limiter: Redis unavailable (%s), counting in process for key %s",
                    type(exc).__name__,
                    key_digest(key)[:12],
                )
            return self._fallback.hit(key, rule)
        if self._down:
            self._down = False
            log.warning("rate limiter: Redis reachable again")
        return decision

    async def hit_async(self, key: str, rule: Rule) -> Decision:
        if self._clock() < self._skip_until:
            return self._fallback.hit(key, rule)
        return await run_in_threadpool(self.hit, key, rule)

    def close(self) -> None:
        self._client.close()
