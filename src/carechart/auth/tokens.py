"""Signed access tokens: ES256 JWS with key ids and a JWKS (SECURITY A7).

RFC 7515 (JWS compact serialisation), RFC 7518 3.4 (ES256: ECDSA P-256 SHA-256, signature as
the 64-byte R||S), RFC 7517 (JWK/JWKS), RFC 7638 (thumbprint as ``kid``), RFC 7519 (claims),
RFC 9068 (``typ: at+jwt``), RFC 8725 (best practices: the verifier fixes the algorithm, it
never takes it from the token; this defeats ``alg=none`` and HS256-with-the-public-key).

Signing keys live in ``token_signing_key``, the private half sealed under the master key
(SECURITY D3: no usable key in the database). Rotation keeps retired public keys in the JWKS
until every token they signed has expired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from sqlalchemy.engine import Connection

from carechart.auth.errors import Unauthorized
from carechart.crypto.aead import open_sealed, seal
from carechart.crypto.keys import MasterKey
from carechart.db.auth_schema import as_utc, token_signing_key
from carechart.errors import EncryptionError

ALGORITHM = "ES256"
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
ACCESS_TOKEN_LIFETIME = timedelta(minutes=5)
CLOCK_LEEWAY = timedelta(seconds=30)
_COORD = 32  # P-256 coordinate and signature-half length in bytes

VerificationKeys = Mapping[str, ec.EllipticCurvePublicKey]


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    # RFC 7515 2: base64url without padding; anything else is malformed, not "close enough".
    if "=" in text or not text.isascii():
        raise ValueError("padded or non-ASCII base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 5.2 lets a verifier reject duplicate members; parsers disagree on which wins.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data, object_pairs_hook=_no_duplicates)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(_COORD, "big")),
        "y": b64url_encode(numbers.y.to_bytes(_COORD, "big")),
    }


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    return b64url_encode(hashlib.sha256(_json_bytes(required)).digest())


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("not a P-256 key")
    x = int.from_bytes(b64url_decode(str(jwk["x"])), "big")
    y = int.from_bytes(b64url_decode(str(jwk["y"])), "big")
    # Constructing the key checks that the point is on the curve.
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, ec.EllipticCurvePublicKey]:
    return {str(jwk["kid"]): public_key_from_jwk(jwk) for jwk in jwks.get("keys", [])}


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        private_key = ec.generate_private_key(ec.SECP256R1())
        return cls(
            kid=jwk_thumbprint(public_jwk(private_key.public_key())), private_key=private_key
        )

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, str]:
        return {**public_jwk(self.public_key), "kid": self.kid, "use": "sig", "alg": ALGORITHM}

    def sign(self, payload: Mapping[str, Any], *, typ: str) -> str:
        """A compact JWS over ``payload`` with ``alg=ES256``, this key's ``kid`` and ``typ``."""
        header = {"alg": ALGORITHM, "kid": self.kid, "typ": typ}
        signing_input = (
            f"{b64url_encode(_json_bytes(header))}.{b64url_encode(_json_bytes(payload))}"
        )
        der = self.private_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
        return f"{signing_input}.{b64url_encode(raw)}"


def verify_jws(token: str, keys: VerificationKeys, *, typ: str) -> dict[str, Any]:
    """Check structure, header and ES256 signature; return the payload. Claims are not checked.

    The algorithm is ours, not the token's: any ``alg`` but ES256 (``none``, ``HS256`` keyed
    with our public key, ``ES384`` ...) is refused before a key is even chosen.
    """
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(b64url_decode(header_b64))
        payload = _json_object(b64url_decode(payload_b64))
        signature = b64url_decode(signature_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed") from None
    if header.get("alg") != ALGORITHM:
        raise Unauthorized("algorithm")
    if header.get("typ") != typ:
        raise Unauthorized("type")
    if "crit" in header:
        raise Unauthorized("critical-header")  # RFC 7515 4.1.11
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None or len(signature) != 2 * _COORD:
        raise Unauthorized("key")
    der = encode_dss_signature(
        int.from_bytes(signature[:_COORD], "big"), int.from_bytes(signature[_COORD:], "big")
    )
    try:
        key.verify(der, f"{header_b64}.{payload_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Unauthorized("signature") from None
    return payload


def issue_access_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    tenant: str,
    now: datetime,
    lifetime: timedelta = ACCESS_TOKEN_LIFETIME,
    session_id: str | None = None,
    scope: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """RFC 9068 access token; ``sid`` lets the resource server check the session is alive
    (logout takes effect at once, SECURITY A6)."""
    issued = int(now.timestamp())
    claims: dict[str, Any] = {
        **(extra or {}),
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "tenant": tenant,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(lifetime.total_seconds()),
        "jti": secrets.token_urlsafe(16),
    }
    if session_id is not None:
        claims["sid"] = session_id
    if scope is not None:
        claims["scope"] = scope
    return key.sign(claims, typ=ACCESS_TOKEN_TYPE)


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"claim-{name}")
    return float(value)


def verify_access_token(
    token: str,
    *,
    keys: VerificationKeys,
    issuer: str,
    audience: str,
    now: datetime,
    leeway: timedelta = CLOCK_LEEWAY,
) -> dict[str, Any]:
    """The verified claims, or :class:`Unauthorized` (RFC 7519 4.1, RFC 9068 4)."""
    claims = verify_jws(token, keys, typ=ACCESS_TOKEN_TYPE)
    if claims.get("iss") != issuer:
        raise Unauthorized("issuer")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise Unauthorized("audience")
    instant = now.timestamp()
    slack = leeway.total_seconds()
    expires = _numeric_date(claims, "exp", required=True)
    if expires is None or instant >= expires + slack:
        raise Unauthorized("expired")
    not_before = _numeric_date(claims, "nbf", required=False)
    if not_before is not None and instant + slack < not_before:
        raise Unauthorized("not-yet-valid")
    issued = _numeric_date(claims, "iat", required=False)
    if issued is not None and instant + slack < issued:
        raise Unauthorized("issued-in-future")
    if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("tenant"), str):
        raise Unauthorized("subject")
    return claims


def _key_ad(kid: str) -> bytes:
    return f"token-signing-key\x1f{kid}".encode()


class SigningKeyStore:
    """ES256 keys at rest in ``token_signing_key``, sealed under the master key.

    ``published_for`` is how long a retired key stays in the JWKS: at least the longest
    lifetime of anything it signed, so rotation never invalidates a live token.
    """

    def __init__(
        self, master: MasterKey, *, published_for: timedelta = ACCESS_TOKEN_LIFETIME + CLOCK_LEEWAY
    ) -> None:
        self._master = master
        self._published_for = published_for

    def _insert(self, conn: Connection, key: SigningKey, now: datetime) -> None:
        der = key.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        conn.execute(
            token_signing_key.insert().values(
                kid=key.kid,
                master_key_id=self._master.key_id,
                sealed_private_key=seal(self._master.key, der, _key_ad(key.kid)),
                public_jwk=json.dumps(key.jwk(), sort_keys=True),
                created_at=now,
                retired_at=None,
            )
        )

    def _unseal(self, kid: str, master_key_id: str, sealed: bytes) -> SigningKey:
        if master_key_id != self._master.key_id:
            raise EncryptionError("signing key is sealed by a different master key")
        private_key = serialization.load_der_private_key(
            open_sealed(self._master.key, sealed, _key_ad(kid)), password=None
        )
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise EncryptionError("signing key is not an EC key")
        return SigningKey(kid=kid, private_key=private_key)

    def active(self, conn: Connection, now: datetime) -> SigningKey:
        """The newest unretired key, created on first use."""
        t = token_signing_key
        row = conn.execute(
            sa.select(t.c.kid, t.c.master_key_id, t.c.sealed_private_key)
            .where(t.c.retired_at.is_(None))
            .order_by(t.c.created_at.desc(), t.c.kid)
            .limit(1)
        ).first()
        if row is None:
            key = SigningKey.generate()
            self._insert(conn, key, now)
            return key
        return self._unseal(row.kid, row.master_key_id, row.sealed_private_key)

    def rotate(self, conn: Connection, now: datetime) -> SigningKey:
        """A new active key; the previous ones are retired but stay published for a while."""
        t = token_signing_key
        conn.execute(t.update().where(t.c.retired_at.is_(None)).values(retired_at=now))
        key = SigningKey.generate()
        self._insert(conn, key, now)
        return key

    def jwks(self, conn: Connection, now: datetime) -> dict[str, list[dict[str, Any]]]:
        """The JWKS document (RFC 7517 5): every key that may have signed a live token."""
        t = token_signing_key
        rows = conn.execute(
            sa.select(t.c.public_jwk, t.c.retired_at).order_by(t.c.created_at, t.c.kid)
        ).all()
        keys = []
        for public, retired_at in rows:
            if retired_at is not None and as_utc(retired_at) + self._published_for <= now:
                continue
            keys.append(json.loads(public))
        return {"keys": keys}

    def verification_keys(
        self, conn: Connection, now: datetime
    ) -> dict[str, ec.EllipticCurvePublicKey]:
        return keys_from_jwks(self.jwks(conn, now))
