"""The SQL of SMART App Launch: codes, launches, session grants, assertion ids, and the few
queries on ``oauth_client`` and ``auth_session`` that :mod:`carechart.auth.clients` and
:mod:`carechart.auth.refresh` do not offer. Callers pass the connection and commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from carechart.auth import clients
from carechart.auth.refresh import token_digest
from carechart.db.auth_schema import as_utc, auth_session, oauth_client, refresh_token
from carechart.db.smart_schema import (
    smart_assertion_jti,
    smart_authorization_code,
    smart_launch_context,
    smart_session_context,
)

# Spent codes are kept this long after expiry, so that a late replay still revokes.
CODE_RETENTION = timedelta(days=1)


def digest(value: str) -> str:
    """SHA-256 of a full-entropy value (code, launch id, jti): what is stored instead."""
    return token_digest(value)


# --- authorization codes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCode:
    code_hash: str
    client_id: str
    user_id: str
    session_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    patient_id: str | None
    sealed_refresh: bytes | None
    expires_at: datetime


def insert_code(
    conn: Connection,
    *,
    tenant: str,
    code: str,
    client_id: str,
    user_id: str,
    session_id: str,
    redirect_uri: str,
    scope: str,
    code_challenge: str,
    patient_id: str | None,
    sealed_refresh: bytes | None,
    now: datetime,
    expires_at: datetime,
) -> None:
    t = smart_authorization_code
    # Housekeeping: a sealed refresh token never outlives its code, and old rows go.
    conn.execute(
        t.update()
        .where(t.c.tenant_id == tenant, t.c.expires_at < now, t.c.sealed_refresh.is_not(None))
        .values(sealed_refresh=None)
    )
    conn.execute(t.delete().where(t.c.tenant_id == tenant, t.c.expires_at < now - CODE_RETENTION))
    conn.execute(
        t.insert().values(
            code_hash=digest(code),
            tenant_id=tenant,
            client_id=client_id,
            user_id=user_id,
            session_id=session_id,
            redirect_uri=redirect_uri,
            scope=scope,
            code_challenge=code_challenge,
            patient_id=patient_id,
            sealed_refresh=sealed_refresh,
            created_at=now,
            expires_at=expires_at,
            used_at=None,
        )
    )


def claim_code(
    conn: Connection, *, tenant: str, code: str, now: datetime
) -> tuple[StoredCode, bool] | None:
    """The code's row and whether this is its first use (then it is marked used: of two
    concurrent exchanges exactly one wins); None when the code is unknown."""
    t = smart_authorization_code
    code_hash = digest(code)
    row = conn.execute(
        sa.select(t).where(t.c.code_hash == code_hash, t.c.tenant_id == tenant)
    ).first()
    if row is None:
        return None
    claimed = conn.execute(
        t.update()
        .where(t.c.code_hash == code_hash, t.c.used_at.is_(None))
        .values(used_at=now, sealed_refresh=None)
    ).rowcount
    stored = StoredCode(
        code_hash=code_hash,
        client_id=row.client_id,
        user_id=row.user_id,
        session_id=row.session_id,
        redirect_uri=row.redirect_uri,
        scope=row.scope,
        code_challenge=row.code_challenge,
        patient_id=row.patient_id,
        sealed_refresh=row.sealed_refresh,
        expires_at=as_utc(row.expires_at),
    )
    return stored, row.used_at is None and claimed == 1


# --- EHR launch ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    patient_id: str
    client_id: str | None
    created_by: str


def create_launch(
    conn: Connection,
    *,
    tenant: str,
    launch_id: str,
    patient_id: str,
    client_id: str | None,
    created_by: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    t = smart_launch_context
    conn.execute(t.delete().where(t.c.tenant_id == tenant, t.c.expires_at < now))
    conn.execute(
        t.insert().values(
            launch_hash=digest(launch_id),
            tenant_id=tenant,
            patient_id=patient_id,
            client_id=client_id,
            created_by=created_by,
            created_at=now,
            expires_at=expires_at,
            used_at=None,
        )
    )


def find_launch(conn: Connection, *, tenant: str, launch_id: str, now: datetime) -> Launch | None:
    """A live launch (unexpired, unused), or None."""
    t = smart_launch_context
    row = conn.execute(
        sa.select(t.c.patient_id, t.c.client_id, t.c.created_by, t.c.expires_at).where(
            t.c.launch_hash == digest(launch_id), t.c.tenant_id == tenant, t.c.used_at.is_(None)
        )
    ).first()
    if row is None or as_utc(row.expires_at) <= now:
        return None
    return Launch(patient_id=row.patient_id, client_id=row.client_id, created_by=row.created_by)


def claim_launch(conn: Connection, *, tenant: str, launch_id: str, now: datetime) -> bool:
    t = smart_launch_context
    return (
        conn.execute(
            t.update()
            .where(
                t.c.launch_hash == digest(launch_id),
                t.c.tenant_id == tenant,
                t.c.used_at.is_(None),
                t.c.expires_at > now,
            )
            .values(used_at=now)
        ).rowcount
        == 1
    )


# --- what a SMART session was granted ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionGrant:
    session_id: str
    client_id: str
    user_id: str
    scope: str
    patient_id: str | None


def save_session_grant(
    conn: Connection,
    *,
    tenant: str,
    session_id: str,
    client_id: str,
    user_id: str,
    scope: str,
    patient_id: str | None,
    now: datetime,
) -> None:
    conn.execute(
        smart_session_context.insert().values(
            session_id=session_id,
            tenant_id=tenant,
            client_id=client_id,
            user_id=user_id,
            scope=scope,
            patient_id=patient_id,
            created_at=now,
        )
    )


def session_grant(conn: Connection, *, tenant: str, session_id: str) -> SessionGrant | None:
    t = smart_session_context
    row = conn.execute(
        sa.select(t.c.client_id, t.c.user_id, t.c.scope, t.c.patient_id).where(
            t.c.session_id == session_id, t.c.tenant_id == tenant
        )
    ).first()
    if row is None:
        return None
    return SessionGrant(session_id, row.client_id, row.user_id, row.scope, row.patient_id)


def session_of_refresh_token(conn: Connection, *, tenant: str, presented: str) -> str | None:
    """The session a refresh token belongs to (used or not), without touching it."""
    r = refresh_token
    value = conn.execute(
        sa.select(r.c.session_id).where(
            r.c.token_hash == token_digest(presented), r.c.tenant_id == tenant
        )
    ).scalar()
    return None if value is None else str(value)


def revoke_session(
    conn: Connection, *, tenant: str, session_id: str, now: datetime, reason: str
) -> None:
    s = auth_session
    conn.execute(
        s.update()
        .where(s.c.session_id == session_id, s.c.tenant_id == tenant, s.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )


def revoke_client_sessions(conn: Connection, *, tenant: str, client_id: str, now: datetime) -> int:
    """End every session opened for a client (it was deactivated): its tokens stop at once."""
    s = auth_session
    return conn.execute(
        s.update()
        .where(s.c.tenant_id == tenant, s.c.client_id == client_id, s.c.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason="client-deactivated")
    ).rowcount


# --- assertion replay ---------------------------------------------------------------------------


def remember_jti(
    conn: Connection,
    *,
    tenant: str,
    client_id: str,
    jti: str,
    expires_at: datetime,
    now: datetime,
    keep_for: timedelta,
) -> bool:
    """Record an assertion's jti; False when the client used it before (a replay). Rows are
    forgotten only once no assertion bearing them could still be accepted (``keep_for``:
    the verifier's clock leeway)."""
    t = smart_assertion_jti
    conn.execute(t.delete().where(t.c.tenant_id == tenant, t.c.expires_at < now - keep_for))
    try:
        with conn.begin_nested():
            conn.execute(
                t.insert().values(
                    tenant_id=tenant,
                    client_id=client_id,
                    jti_hash=digest(jti),
                    expires_at=expires_at,
                )
            )
    except IntegrityError:
        return False
    return True


# --- clients ------------------------------------------------------------------------------------


def list_clients(conn: Connection, *, tenant: str) -> list[clients.OAuthClient]:
    t = oauth_client
    ids = conn.execute(
        sa.select(t.c.client_id).where(t.c.tenant_id == tenant).order_by(t.c.created_at)
    ).scalars()
    found = [clients.by_id(conn, tenant=tenant, client_id=str(i)) for i in list(ids)]
    return [c for c in found if c is not None]
