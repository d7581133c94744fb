"""SECURITY A7: ES256 access tokens, key ids, JWKS, and every way a token must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import Engine

from carechart.auth.errors import Unauthorized
from carechart.auth.tokens import (
    ACCESS_TOKEN_TYPE,
    SigningKey,
    SigningKeyStore,
    b64url_encode,
    issue_access_token,
    jwk_thumbprint,
    keys_from_jwks,
    verify_access_token,
)
from carechart.crypto.keys import MasterKey
from carechart.db.auth_schema import token_signing_key
from carechart.db.engine import unit_of_work
from carechart.errors import EncryptionError

ISS = "https://carechart.test"
AUD = "https://carechart.test/fhir"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def _issue(key: SigningKey, now: datetime, **kwargs: Any) -> str:
    return issue_access_token(
        key, issuer=ISS, audience=AUD, subject="user-1", tenant="t-1", now=now, **kwargs
    )


def _verify(token: str, key: SigningKey, now: datetime, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"issuer": ISS, "audience": AUD, **kwargs}
    return verify_access_token(token, keys={key.kid: key.public_key}, now=now, **options)


def _reason(token: str, key: SigningKey, now: datetime, **kwargs: Any) -> str:
    with pytest.raises(Unauthorized) as caught:
        _verify(token, key, now, **kwargs)
    assert caught.value.status == 401
    assert caught.value.code == "UNAUTHORIZED"
    assert caught.value.details == {}
    return caught.value.reason


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return b64url_encode(json.dumps(value).encode())

    return f"{part(header)}.{part(claims)}"


def _claims(now: datetime) -> dict[str, Any]:
    t = int(now.timestamp())
    return {"iss": ISS, "aud": AUD, "sub": "mallory", "tenant": "t-1", "iat": t, "exp": t + 300}


def test_valid_token_verifies(key: SigningKey, now: datetime) -> None:
    token = _issue(key, now, session_id="s-1", scope="user/*.rs")
    claims = _verify(token, key, now + timedelta(minutes=4))
    assert claims["sub"] == "user-1"
    assert claims["tenant"] == "t-1"
    assert claims["sid"] == "s-1"
    assert claims["scope"] == "user/*.rs"
    assert claims["exp"] - claims["iat"] == 300


def test_header_names_es256_kid_and_type(key: SigningKey, now: datetime) -> None:
    header_b64 = _issue(key, now).split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    assert header == {"alg": "ES256", "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}


def test_alg_none_is_rejected(key: SigningKey, now: datetime) -> None:
    token = _unsigned({"alg": "none", "typ": ACCESS_TOKEN_TYPE, "kid": key.kid}, _claims(now)) + "."
    assert _reason(token, key, now) == "algorithm"


def test_alg_none_with_stolen_signature_is_rejected(key: SigningKey, now: datetime) -> None:
    signature = _issue(key, now).split(".")[2]
    token = _unsigned({"alg": "none", "typ": ACCESS_TOKEN_TYPE, "kid": key.kid}, _claims(now))
    assert _reason(f"{token}.{signature}", key, now) == "algorithm"


@pytest.mark.parametrize("encoding", ["pem", "jwk"])
def test_hs256_signed_with_the_public_key_is_rejected(
    key: SigningKey, now: datetime, encoding: str
) -> None:
    # The classic confusion: a verifier that takes alg from the token would check this HMAC
    # with the public key it holds as the secret.
    if encoding == "pem":
        secret = key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        secret = json.dumps(key.jwk()).encode()
    signing_input = _unsigned(
        {"alg": "HS256", "typ": ACCESS_TOKEN_TYPE, "kid": key.kid}, _claims(now)
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert _reason(f"{signing_input}.{b64url_encode(mac)}", key, now) == "algorithm"


def test_token_signed_by_another_key_is_rejected(key: SigningKey, now: datetime) -> None:
    other = SigningKey.generate()
    assert _reason(_issue(other, now), key, now) == "key"


def test_token_with_forged_kid_is_rejected(key: SigningKey, now: datetime) -> None:
    # Another key's signature under our kid: the kid selects our key, the signature fails.
    forged = SigningKey(kid=key.kid, private_key=SigningKey.generate().private_key)
    assert _reason(_issue(forged, now), key, now) == "signature"


def test_tampered_claims_are_rejected(key: SigningKey, now: datetime) -> None:
    header, _, signature = _issue(key, now).split(".")
    claims = b64url_encode(json.dumps({**_claims(now), "sub": "admin"}).encode())
    assert _reason(f"{header}.{claims}.{signature}", key, now) == "signature"


def test_wrong_audience_is_rejected(key: SigningKey, now: datetime) -> None:
    token = _issue(key, now)
    assert _reason(token, key, now, audience="https://elsewhere.test") == "audience"


def test_audience_list_containing_ours_is_accepted(key: SigningKey, now: datetime) -> None:
    token = key.sign({**_claims(now), "aud": ["other", AUD]}, typ=ACCESS_TOKEN_TYPE)
    assert _verify(token, key, now)["sub"] == "mallory"


def test_wrong_issuer_is_rejected(key: SigningKey, now: datetime) -> None:
    token = _issue(key, now)
    assert _reason(token, key, now, issuer="https://evil.test") == "issuer"


def test_expired_token_is_rejected(key: SigningKey, now: datetime) -> None:
    token = _issue(key, now, lifetime=timedelta(minutes=5))
    assert _reason(token, key, now + timedelta(minutes=5, seconds=31)) == "expired"


def test_token_without_expiry_is_rejected(key: SigningKey, now: datetime) -> None:
    claims = _claims(now)
    del claims["exp"]
    token = key.sign(claims, typ=ACCESS_TOKEN_TYPE)
    assert _reason(token, key, now) == "claim-exp"


def test_not_yet_valid_token_is_rejected(key: SigningKey, now: datetime) -> None:
    token = _issue(key, now + timedelta(minutes=2))
    assert _reason(token, key, now) == "not-yet-valid"


def test_small_clock_skew_is_tolerated(key: SigningKey, now: datetime) -> None:
    token = _issue(key, now + timedelta(seconds=10))
    assert _verify(token, key, now)["sub"] == "user-1"


def test_token_of_another_type_is_rejected(key: SigningKey, now: datetime) -> None:
    token = key.sign(_claims(now), typ="audit-checkpoint+jwt")
    assert _reason(token, key, now) == "type"


@pytest.mark.parametrize(
    "token", ["", "a.b", "a.b.c.d", "!!!.@@@.###", "eyJhbGciOiJFUzI1NiJ9.e30=.AAAA"]
)
def test_malformed_token_is_rejected(key: SigningKey, now: datetime, token: str) -> None:
    assert _reason(token, key, now) == "malformed"


def test_duplicate_header_members_are_rejected(key: SigningKey, now: datetime) -> None:
    header = b64url_encode(b'{"alg":"none","alg":"ES256","typ":"at+jwt"}')
    token = f"{header}.{b64url_encode(json.dumps(_claims(now)).encode())}.AAAA"
    assert _reason(token, key, now) == "malformed"


def test_kid_is_the_rfc7638_thumbprint(key: SigningKey) -> None:
    jwk = key.jwk()
    assert jwk["kid"] == jwk_thumbprint(jwk) == key.kid
    assert jwk["alg"] == "ES256"
    assert "d" not in jwk


# --- keys at rest and rotation (storage) ----------------------------------------------


def test_jwks_verifies_tokens_of_the_active_key(
    auth_engine: Engine, master_key: MasterKey, now: datetime
) -> None:
    store = SigningKeyStore(master_key)
    with unit_of_work(auth_engine, write=True) as conn:
        active = store.active(conn, now)
        jwks = store.jwks(conn, now)
    assert active.kid in {k["kid"] for k in jwks["keys"]}
    assert all(set(k) == {"kty", "crv", "x", "y", "kid", "use", "alg"} for k in jwks["keys"])
    token = _issue(active, now)
    claims = verify_access_token(
        token, keys=keys_from_jwks(jwks), issuer=ISS, audience=AUD, now=now
    )
    assert claims["sub"] == "user-1"


def test_signing_key_is_sealed_at_rest(
    auth_engine: Engine, master_key: MasterKey, now: datetime
) -> None:
    store = SigningKeyStore(master_key)
    with unit_of_work(auth_engine, write=True) as conn:
        key = store.rotate(conn, now)
        row = conn.execute(
            token_signing_key.select().where(token_signing_key.c.kid == key.kid)
        ).one()
    private_scalar = key.private_key.private_numbers().private_value.to_bytes(32, "big")
    der = key.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for column in row:
        raw = column if isinstance(column, bytes) else str(column).encode()
        assert private_scalar not in raw
        assert der not in raw
    assert '"d"' not in row.public_jwk


def test_signing_key_does_not_open_under_another_master_key(
    auth_engine: Engine, master_key: MasterKey, now: datetime
) -> None:
    with unit_of_work(auth_engine, write=True) as conn:
        SigningKeyStore(master_key).rotate(conn, now)
    stranger = SigningKeyStore(MasterKey.from_bytes(os.urandom(32)))
    with unit_of_work(auth_engine, write=False) as conn, pytest.raises(EncryptionError):
        stranger.active(conn, now)


def test_rotation_keeps_old_key_in_jwks_until_its_tokens_expire(
    auth_engine: Engine, master_key: MasterKey, now: datetime
) -> None:
    store = SigningKeyStore(master_key)
    with unit_of_work(auth_engine, write=True) as conn:
        old = store.rotate(conn, now)
        old_token = _issue(old, now)
        new = store.rotate(conn, now + timedelta(seconds=1))
        assert store.active(conn, now + timedelta(seconds=1)).kid == new.kid
        soon = store.verification_keys(conn, now + timedelta(minutes=4))
        later = store.verification_keys(conn, now + timedelta(minutes=6))
    assert {old.kid, new.kid} <= set(soon)
    assert old.kid not in later
    assert new.kid in later
    verify_access_token(
        old_token, keys=soon, issuer=ISS, audience=AUD, now=now + timedelta(minutes=4)
    )
    with pytest.raises(Unauthorized):
        verify_access_token(
            old_token, keys=later, issuer=ISS, audience=AUD, now=now + timedelta(minutes=6)
        )
