"""TOTP second factor (RFC 6238 over RFC 4226 HOTP; SECURITY A3, A5).

Parameters are the ones every authenticator app supports: HMAC-SHA-1, 30-second steps,
6 digits, and one step of drift either way (RFC 6238 5.2). A code is accepted once: the
highest accepted step is stored, and only later steps pass afterwards (RFC 6238 5.2, "the
verifier MUST NOT accept the second attempt of the OTP after the successful validation").

Seeds are sealed with AES-256-GCM under a tenant-derived key and bound to tenant and user, so
a dump holds no seed and a seed copied to another user's row does not open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from datetime import datetime
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.crypto.aead import open_sealed, seal
from carechart.crypto.keys import KeyRing
from carechart.db.auth_schema import totp_credential

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
SECRET_BYTES = 20  # RFC 4226 4 R6 recommends 160 bits for HMAC-SHA-1
KEY_PURPOSE = "totp-seed"


def hotp(secret: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 5.3: HMAC-SHA-1 of the 8-byte counter, dynamic truncation, modulo 10^digits."""
    mac = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    binary = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def time_step(now: datetime) -> int:
    """RFC 6238 4.2: T = floor((Unix time - T0) / X) with T0 = 0, X = 30."""
    return int(now.timestamp()) // STEP_SECONDS


def totp(secret: bytes, now: datetime) -> str:
    return hotp(secret, time_step(now))


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def provisioning_uri(secret: bytes, *, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI authenticator apps scan (Google Authenticator key-uri format)."""
    label = quote(f"{issuer}:{account}", safe=":@")
    encoded = base64.b32encode(secret).decode("ascii").rstrip("=")
    query = urlencode(
        {
            "secret": encoded,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_SECONDS,
        }
    )
    return f"otpauth://totp/{label}?{query}"


def matching_step(secret: bytes, code: str, now: datetime, *, after: int | None) -> int | None:
    """The time step within the drift window whose code equals ``code`` and that is later
    than ``after``; None if there is none. Compared in constant time."""
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    current = time_step(now)
    found: int | None = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # No early exit: every candidate costs the same, whatever matches.
        if hmac.compare_digest(hotp(secret, step), code) and (after is None or step > after):
            found = step if found is None else found
    return found


def _seed_ad(tenant: str, user_id: str) -> bytes:
    return f"totp-seed\x1f{tenant}\x1f{user_id}".encode()


def enroll(conn: Connection, keys: KeyRing, *, tenant: str, user_id: str, now: datetime) -> bytes:
    """Create (or replace) the user's TOTP seed, stored sealed; return the seed once, for the
    provisioning URI. The caller should confirm enrolment with a first :func:`verify`."""
    secret = new_secret()
    sealed = seal(keys.derived(tenant, KEY_PURPOSE), secret, _seed_ad(tenant, user_id))
    t = totp_credential
    conn.execute(t.delete().where(t.c.tenant_id == tenant, t.c.user_id == user_id))
    conn.execute(
        t.insert().values(
            tenant_id=tenant, user_id=user_id, sealed_secret=sealed, last_step=None, created_at=now
        )
    )
    return secret


def is_enrolled(conn: Connection, *, tenant: str, user_id: str) -> bool:
    t = totp_credential
    return (
        conn.execute(
            sa.select(sa.literal(1)).where(t.c.tenant_id == tenant, t.c.user_id == user_id)
        ).first()
        is not None
    )


def verify(
    conn: Connection, keys: KeyRing, *, tenant: str, user_id: str, code: str, now: datetime
) -> bool:
    """True once per valid code (A5). Safe under concurrency: the step is claimed with a
    conditional UPDATE, so two requests racing with the same code cannot both pass."""
    t = totp_credential
    row = conn.execute(
        sa.select(t.c.sealed_secret, t.c.last_step).where(
            t.c.tenant_id == tenant, t.c.user_id == user_id
        )
    ).first()
    if row is None:
        return False
    secret = open_sealed(
        keys.derived(tenant, KEY_PURPOSE), row.sealed_secret, _seed_ad(tenant, user_id)
    )
    step = matching_step(secret, code, now, after=row.last_step)
    if step is None:
        return False
    claimed = conn.execute(
        t.update()
        .where(
            t.c.tenant_id == tenant,
            t.c.user_id == user_id,
            sa.or_(t.c.last_step.is_(None), t.c.last_step < step),
        )
        .values(last_step=step)
    ).rowcount
    return claimed == 1


def is_confirmed(conn: Connection, *, tenant: str, user_id: str) -> bool:
    """Enrolled and proven: one code has been accepted since the seed was issued. Only a
    confirmed seed is asked for at login, so a seed lost before it was scanned locks no one
    out."""
    t = totp_credential
    return (
        conn.execute(
            sa.select(sa.literal(1)).where(
                t.c.tenant_id == tenant, t.c.user_id == user_id, t.c.last_step.is_not(None)
            )
        ).first()
        is not None
    )
