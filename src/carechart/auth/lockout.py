"""Account lockout and per-IP throttling (SECURITY A4, F1; NIST SP 800-63B 5.2.2).

Lockout: five consecutive failed logins lock the account for fifteen minutes; a success
resets the count. While locked, the password is not even checked (the endpoint answers 423
with the unlock time), and failures do not extend the lock, so an attacker cannot keep a
victim locked out longer than one window per five guesses.

The counter lives in the database with the account: it must hold across application servers
and restarts. Like refresh-token revocation, the failure count is written in the request's
transaction, so the endpoint commits before it answers 401/423.

Throttling: a :class:`Throttle` answers how long a key (an IP, a user, a client) must wait.
:class:`InMemoryTokenBucket` serves one process. Both now live in :mod:`carechart.ratelimit`,
with the limits per IP, user and client and their Redis backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from carechart.auth.errors import AccountLocked, RateLimited
from carechart.db.auth_schema import as_utc, login_lockout

# The throttle lives with the other rate limits; these names stay importable from here.
from carechart.ratelimit.limiter import InMemoryTokenBucket, Throttle

__all__ = [
    "InMemoryTokenBucket",
    "LockoutPolicy",
    "Throttle",
    "enforce",
    "ensure_not_locked",
    "locked_until",
    "record_failure",
    "record_success",
]


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    threshold: int = 5
    duration: timedelta = timedelta(minutes=15)


def locked_until(conn: Connection, *, tenant: str, account: str, now: datetime) -> datetime | None:
    """The unlock time if the account (a canonical username) is locked now, else None."""
    t = login_lockout
    until = conn.execute(
        sa.select(t.c.locked_until).where(t.c.tenant_id == tenant, t.c.account == account)
    ).scalar()
    if until is None or as_utc(until) <= now:
        return None
    return as_utc(until)


def ensure_not_locked(conn: Connection, *, tenant: str, account: str, now: datetime) -> None:
    until = locked_until(conn, tenant=tenant, account=account, now=now)
    if until is not None:
        raise AccountLocked(until)


def record_failure(
    conn: Connection,
    *,
    tenant: str,
    account: str,
    now: datetime,
    policy: LockoutPolicy = LockoutPolicy(),
) -> datetime | None:
    """Count a failed login; return the unlock time when the account is (now) locked."""
    current = locked_until(conn, tenant=tenant, account=account, now=now)
    if current is not None:
        return current
    t = login_lockout
    where = (t.c.tenant_id == tenant, t.c.account == account)
    # Increment in SQL, so concurrent failures are all counted.
    failures = conn.execute(
        t.update()
        .where(*where)
        .values(consecutive_failures=t.c.consecutive_failures + 1, last_failure_at=now)
        .returning(t.c.consecutive_failures)
    ).scalar()
    if failures is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    t.insert().values(
                        tenant_id=tenant,
                        account=account,
                        consecutive_failures=1,
                        locked_until=None,
                        last_failure_at=now,
                    )
                )
            failures = 1
        except IntegrityError:
            # A concurrent first failure created the row; count ours on it.
            failures = conn.execute(
                t.update()
                .where(*where)
                .values(consecutive_failures=t.c.consecutive_failures + 1, last_failure_at=now)
                .returning(t.c.consecutive_failures)
            ).scalar_one()
    if failures < policy.threshold:
        return None
    unlock_at = now + policy.duration
    conn.execute(t.update().where(*where).values(consecutive_failures=0, locked_until=unlock_at))
    return unlock_at


def record_success(conn: Connection, *, tenant: str, account: str) -> None:
    t = login_lockout
    conn.execute(
        t.update()
        .where(t.c.tenant_id == tenant, t.c.account == account)
        .values(consecutive_failures=0, locked_until=None)
    )


def enforce(throttle: Throttle, key: str) -> None:
    """Raise :class:`RateLimited` (429 + Retry-After) when ``key`` is over its allowance."""
    wait = throttle.wait_seconds(key)
    if wait > 0:
        raise RateLimited(wait)
