"""Sessions and refresh tokens (SECURITY A3, A6).

A login opens a session; the session is the refresh-token family. Each refresh token is
single-use: exchanging it marks it used and issues the next one (RFC 9700 4.14.2,
"refresh token rotation"). Presenting a used token again means it was stolen, or its
legitimate successor was: the whole family is revoked, so the thief's copy dies too.

Tokens are 256-bit random strings stored only as SHA-256 digests: a database dump holds no
usable token (A3). A fast hash is enough here, unlike for passwords, because the input has
full entropy and cannot be guessed.

Refusals are returned, not raised, where they write state (revoking a family, ending an idle
session): code below the endpoint never commits, and an exception would roll the revocation
back. The endpoint commits, then calls :meth:`RefreshResult.raise_if_refused`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.auth.errors import Unauthorized
from carechart.db.auth_schema import as_utc, auth_session, refresh_token

Refusal = Literal["unknown", "reused", "revoked", "idle", "expired", "wrong-client"]


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """A6 defaults; both configurable."""

    idle_timeout: timedelta = timedelta(minutes=30)
    absolute_timeout: timedelta = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class IssuedRefresh:
    session_id: str
    user_id: str
    mfa_passed: bool
    refresh_token: str  # handed to the client once; only its digest is stored
    absolute_expiry: datetime


@dataclass(frozen=True, slots=True)
class RefreshResult:
    issued: IssuedRefresh | None
    refusal: Refusal | None = None

    def raise_if_refused(self) -> IssuedRefresh:
        if self.issued is None:
            raise Unauthorized(f"refresh-{self.refusal}")
        return self.issued


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_token(conn: Connection, tenant: str, session_id: str, now: datetime) -> str:
    token = secrets.token_urlsafe(32)
    conn.execute(
        refresh_token.insert().values(
            token_hash=token_digest(token),
            session_id=session_id,
            tenant_id=tenant,
            issued_at=now,
            used_at=None,
        )
    )
    return token


def start_session(
    conn: Connection,
    *,
    tenant: str,
    user_id: str,
    now: datetime,
    client_id: str | None = None,
    mfa_passed: bool = False,
    policy: SessionPolicy = SessionPolicy(),
) -> IssuedRefresh:
    """Open a session after a successful login and issue its first refresh token."""
    session_id = secrets.token_urlsafe(24)
    conn.execute(
        auth_session.insert().values(
            session_id=session_id,
            tenant_id=tenant,
            user_id=user_id,
            client_id=client_id,
            mfa_passed=mfa_passed,
            created_at=now,
            last_active_at=now,
            revoked_at=None,
            revoked_reason=None,
        )
    )
    return IssuedRefresh(
        session_id=session_id,
        user_id=user_id,
        mfa_passed=mfa_passed,
        refresh_token=_new_token(conn, tenant, session_id, now),
        absolute_expiry=now + policy.absolute_timeout,
    )


def _revoke(conn: Connection, session_id: str, now: datetime, reason: str) -> None:
    conn.execute(
        auth_session.update()
        .where(auth_session.c.session_id == session_id, auth_session.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )


def _lapsed(
    created_at: datetime, last_active_at: datetime, now: datetime, policy: SessionPolicy
) -> Refusal | None:
    if now >= as_utc(created_at) + policy.absolute_timeout:
        return "expired"
    if now >= as_utc(last_active_at) + policy.idle_timeout:
        return "idle"
    return None


def rotate_refresh_token(
    conn: Connection,
    *,
    tenant: str,
    presented: str,
    now: datetime,
    policy: SessionPolicy = SessionPolicy(),
    client_id: str | None = None,
) -> RefreshResult:
    """Exchange a refresh token for its successor, or refuse (see the module docstring).

    ``client_id``: the OAuth client presenting it (None: the first-party sign-in). A token is
    only ever exchanged by the client it was issued to, so an app's refresh token cannot be
    turned into a full first-party session (SECURITY B7)."""
    s, r = auth_session, refresh_token
    row = conn.execute(
        sa.select(
            r.c.token_hash,
            r.c.used_at,
            s.c.session_id,
            s.c.user_id,
            s.c.mfa_passed,
            s.c.created_at,
            s.c.last_active_at,
            s.c.revoked_at,
            s.c.client_id,
        )
        .join(s, s.c.session_id == r.c.session_id)
        .where(
            r.c.token_hash == token_digest(presented),
            r.c.tenant_id == tenant,
            s.c.tenant_id == tenant,
        )
    ).first()
    if row is None:
        return RefreshResult(None, "unknown")
    if row.revoked_at is not None:
        return RefreshResult(None, "revoked")
    if row.client_id != client_id:
        return RefreshResult(None, "wrong-client")
    # Mark used only if still unused: of two concurrent exchanges of the same token exactly
    # one wins, and the other is treated as the reuse it is.
    claimed = conn.execute(
        r.update()
        .where(r.c.token_hash == row.token_hash, r.c.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if row.used_at is not None or claimed != 1:
        _revoke(conn, row.session_id, now, "refresh-token-reuse")
        return RefreshResult(None, "reused")
    lapsed = _lapsed(row.created_at, row.last_active_at, now, policy)
    if lapsed is not None:
        _revoke(conn, row.session_id, now, lapsed)
        return RefreshResult(None, lapsed)
    conn.execute(s.update().where(s.c.session_id == row.session_id).values(last_active_at=now))
    return RefreshResult(
        IssuedRefresh(
            session_id=row.session_id,
            user_id=row.user_id,
            mfa_passed=bool(row.mfa_passed),
            refresh_token=_new_token(conn, tenant, row.session_id, now),
            absolute_expiry=as_utc(row.created_at) + policy.absolute_timeout,
        )
    )


ACTIVITY_GRANULARITY = timedelta(minutes=1)


def check_session(
    conn: Connection,
    *,
    tenant: str,
    session_id: str,
    now: datetime,
    policy: SessionPolicy = SessionPolicy(),
    touch: bool = True,
) -> Refusal | None:
    """None when the session is alive (and, with ``touch``, records the activity that keeps
    it from idling out); otherwise why not. Called on each authenticated request with the
    access token's ``sid`` so that logout and timeouts take effect at once, not at expiry.
    A lapsed session is revoked, so the caller must commit before refusing."""
    s = auth_session
    row = conn.execute(
        sa.select(s.c.created_at, s.c.last_active_at, s.c.revoked_at).where(
            s.c.session_id == session_id, s.c.tenant_id == tenant
        )
    ).first()
    if row is None:
        return "unknown"
    if row.revoked_at is not None:
        return "revoked"
    lapsed = _lapsed(row.created_at, row.last_active_at, now, policy)
    if lapsed is not None:
        _revoke(conn, session_id, now, lapsed)
        return lapsed
    # Activity is recorded at most once a minute: the idle limit is thirty minutes, and a
    # write per request would make every request of a session queue on its row.
    if touch and now - as_utc(row.last_active_at) >= ACTIVITY_GRANULARITY:
        conn.execute(s.update().where(s.c.session_id == session_id).values(last_active_at=now))
    return None


def mark_mfa_passed(conn: Connection, *, tenant: str, session_id: str) -> None:
    """Record a passed TOTP step-up; admin operations require it (SECURITY A5)."""
    s = auth_session
    conn.execute(
        s.update()
        .where(s.c.session_id == session_id, s.c.tenant_id == tenant)
        .values(mfa_passed=True)
    )


def session_passed_mfa(conn: Connection, *, tenant: str, session_id: str) -> bool:
    s = auth_session
    value = conn.execute(
        sa.select(s.c.mfa_passed).where(
            s.c.session_id == session_id, s.c.tenant_id == tenant, s.c.revoked_at.is_(None)
        )
    ).scalar()
    return bool(value)


def logout(conn: Connection, *, tenant: str, session_id: str, now: datetime) -> None:
    """Server-side revocation (A6): the session's refresh tokens and access tokens (by ``sid``)
    stop working at once."""
    s = auth_session
    conn.execute(
        s.update()
        .where(s.c.session_id == session_id, s.c.tenant_id == tenant, s.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason="logout")
    )


def revoke_user_sessions(
    conn: Connection, *, tenant: str, user_id: str, now: datetime, reason: str
) -> int:
    """End every session of a user (password change, account disabled)."""
    s = auth_session
    return conn.execute(
        s.update()
        .where(s.c.tenant_id == tenant, s.c.user_id == user_id, s.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    ).rowcount


def owner_of_token(conn: Connection, *, tenant: str, presented: str) -> str | None:
    """The user whose session issued ``presented`` (used or not), for the audit record of a
    refused exchange; None when the token is unknown."""
    s, r = auth_session, refresh_token
    value = conn.execute(
        sa.select(s.c.user_id)
        .join(r, r.c.session_id == s.c.session_id)
        .where(
            r.c.token_hash == token_digest(presented),
            r.c.tenant_id == tenant,
            s.c.tenant_id == tenant,
        )
    ).scalar()
    return None if value is None else str(value)
