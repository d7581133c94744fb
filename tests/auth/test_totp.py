"""SECURITY A3, A5: RFC 6238 TOTP, single use, seeds sealed at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from carechart.auth import totp
from carechart.crypto.keys import KeyRing
from carechart.db.auth_schema import totp_credential
from carechart.db.engine import unit_of_work
from carechart.errors import EncryptionError

RFC_SECRET = b"12345678901234567890"


def reference_totp(secret: bytes, unix_time: int, digits: int = 6) -> str:
    """RFC 6238 Appendix A, transcribed: hex counter, HMAC-SHA-1, dynamic truncation."""
    counter = bytes.fromhex(format(unix_time // 30, "016x"))
    digest = hmac.new(secret, counter, hashlib.sha1).digest()
    offset = digest[19] & 0xF
    code = (
        ((digest[offset] & 0x7F) << 24)
        | (digest[offset + 1] << 16)
        | (digest[offset + 2] << 8)
        | digest[offset + 3]
    )
    return str(code % 10**digits).rjust(digits, "0")


@pytest.mark.parametrize(
    ("counter", "expected"),
    list(
        enumerate(
            [
                "755224",
                "287082",
                "359152",
                "969429",
                "338314",
                "254676",
                "287922",
                "162583",
                "399871",
                "520489",
            ]
        )
    ),
)
def test_hotp_matches_rfc4226_appendix_d(counter: int, expected: str) -> None:
    assert totp.hotp(RFC_SECRET, counter) == expected


@pytest.mark.parametrize(
    ("unix_time", "expected"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_totp_matches_rfc6238_appendix_b_sha1(unix_time: int, expected: str) -> None:
    step = totp.time_step(datetime.fromtimestamp(unix_time, UTC))
    assert totp.hotp(RFC_SECRET, step, digits=8) == expected


@given(st.binary(min_size=10, max_size=64), st.integers(min_value=0, max_value=253_402_300_799))
def test_totp_agrees_with_the_reference(secret: bytes, unix_time: int) -> None:
    assert totp.totp(secret, datetime.fromtimestamp(unix_time, UTC)) == reference_totp(
        secret, unix_time
    )


def test_provisioning_uri_carries_the_base32_secret() -> None:
    secret = totp.new_secret()
    uri = urlparse(totp.provisioning_uri(secret, account="alice@example.org", issuer="Carechart"))
    query = parse_qs(uri.query)
    assert uri.scheme == "otpauth"
    assert uri.netloc == "totp"
    assert base64.b32decode(query["secret"][0] + "=" * (-len(query["secret"][0]) % 8)) == secret
    assert query["digits"] == ["6"]
    assert query["period"] == ["30"]
    assert len(secret) == 20


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦"])
def test_malformed_code_matches_nothing(code: str) -> None:
    assert totp.matching_step(RFC_SECRET, code, datetime.now(UTC), after=None) is None


def _enroll(
    engine: Engine, keyring: KeyRing, tenant: str, now: datetime, user: str = "u-1"
) -> bytes:
    with unit_of_work(engine, write=True) as conn:
        return totp.enroll(conn, keyring, tenant=tenant, user_id=user, now=now)


def _verify(
    engine: Engine, keyring: KeyRing, tenant: str, code: str, now: datetime, user: str = "u-1"
) -> bool:
    with unit_of_work(engine, write=True) as conn:
        return totp.verify(conn, keyring, tenant=tenant, user_id=user, code=code, now=now)


def test_totp_code_works_only_once(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    secret = _enroll(auth_engine, keyring, tenant, now)
    code = totp.totp(secret, now)
    assert _verify(auth_engine, keyring, tenant, code, now)
    assert not _verify(auth_engine, keyring, tenant, code, now)
    assert not _verify(auth_engine, keyring, tenant, code, now + timedelta(seconds=5))


def test_code_from_one_step_either_side_is_accepted(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    secret = _enroll(auth_engine, keyring, tenant, now)
    assert _verify(
        auth_engine, keyring, tenant, totp.totp(secret, now - timedelta(seconds=30)), now
    )
    assert _verify(
        auth_engine, keyring, tenant, totp.totp(secret, now + timedelta(seconds=30)), now
    )


def test_code_two_steps_away_is_refused(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    secret = _enroll(auth_engine, keyring, tenant, now)
    assert not _verify(
        auth_engine, keyring, tenant, totp.totp(secret, now - timedelta(seconds=60)), now
    )
    assert not _verify(
        auth_engine, keyring, tenant, totp.totp(secret, now + timedelta(seconds=60)), now
    )


def test_older_code_is_refused_after_a_newer_one(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    secret = _enroll(auth_engine, keyring, tenant, now)
    assert _verify(auth_engine, keyring, tenant, totp.totp(secret, now), now)
    # Still inside the drift window, but at or before the step already used.
    assert not _verify(
        auth_engine, keyring, tenant, totp.totp(secret, now - timedelta(seconds=30)), now
    )
    assert _verify(
        auth_engine, keyring, tenant, totp.totp(secret, now + timedelta(seconds=30)), now
    )


def test_wrong_code_and_unenrolled_user_are_refused(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    secret = _enroll(auth_engine, keyring, tenant, now)
    right = totp.totp(secret, now)
    wrong = str((int(right) + 1) % 10**6).zfill(6)
    assert not _verify(auth_engine, keyring, tenant, wrong, now)
    assert not _verify(auth_engine, keyring, tenant, right, now, user="nobody")
    with unit_of_work(auth_engine, write=False) as conn:
        assert totp.is_enrolled(conn, tenant=tenant, user_id="u-1")
        assert not totp.is_enrolled(conn, tenant=tenant, user_id="nobody")


def test_totp_seed_is_not_stored_in_clear(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    secret = _enroll(auth_engine, keyring, tenant, now)
    with unit_of_work(auth_engine, write=False) as conn:
        row = conn.execute(
            sa.select(totp_credential).where(totp_credential.c.tenant_id == tenant)
        ).one()
    dump = repr(tuple(row)).encode() + row.sealed_secret
    for form in (secret, secret.hex().encode(), base64.b32encode(secret), base64.b64encode(secret)):
        assert form not in dump


def test_seed_copied_to_another_user_does_not_open(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    _enroll(auth_engine, keyring, tenant, now, user="victim")
    _enroll(auth_engine, keyring, tenant, now, user="attacker")
    t = totp_credential
    with unit_of_work(auth_engine, write=True) as conn:
        sealed = conn.execute(
            sa.select(t.c.sealed_secret).where(t.c.tenant_id == tenant, t.c.user_id == "victim")
        ).scalar_one()
        conn.execute(
            t.update()
            .where(t.c.tenant_id == tenant, t.c.user_id == "attacker")
            .values(sealed_secret=sealed)
        )
    with pytest.raises(EncryptionError):
        _verify(auth_engine, keyring, tenant, "123456", now, user="attacker")


def test_re_enrolment_replaces_the_seed(
    auth_engine: Engine, keyring: KeyRing, tenant: str, now: datetime
) -> None:
    old = _enroll(auth_engine, keyring, tenant, now)
    new = _enroll(auth_engine, keyring, tenant, now)
    assert old != new
    assert _verify(auth_engine, keyring, tenant, totp.totp(new, now), now)
