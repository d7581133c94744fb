"""``private_key_jwt`` client authentication (RFC 7523 2.2 and 3, SMART Backend Services;
SECURITY A7).

A client proves itself with a JWT it signed with a key from the JWKS registered for it: ``iss``
and ``sub`` are its client id, ``aud`` is our token endpoint, ``exp`` at most five minutes
ahead, and a ``jti`` never seen before (replay is refused by the caller, which records the
jti). The verifier fixes the algorithms (ES256, ES384, RS384) and ties each to one key type,
so ``alg=none``, HMAC keyed with a public key, or an RSA signature checked against an EC key
are refused before any signature is checked (RFC 8725 3.1).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from carechart.auth.tokens import CLOCK_LEEWAY, b64url_decode

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("ES256", "ES384", "RS384")
MAX_LIFETIME = timedelta(minutes=5)
MAX_ASSERTION_LENGTH = 16_384
MAX_KEYS = 20
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES = {"P-256": (ec.SECP256R1(), "ES256", 32), "P-384": (ec.SECP384R1(), "ES384", 48)}

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class InvalidJwks(ValueError):
    """A registered JWKS that is not a set of usable public signing keys."""


class AssertionRefused(Exception):
    """The assertion does not authenticate the client; ``reason`` is for logs and audit only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientKey:
    kid: str
    algorithm: str  # the one algorithm this key verifies
    key: PublicKey


@dataclass(frozen=True, slots=True)
class Assertion:
    client_id: str
    jti: str
    expires_at: datetime


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data, object_pairs_hook=_no_duplicates)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _b64_int(value: Any) -> int:
    if not isinstance(value, str) or not value:
        raise InvalidJwks("a key parameter is missing or not base64url")
    try:
        return int.from_bytes(b64url_decode(value), "big")
    except (ValueError, binascii.Error):
        raise InvalidJwks("a key parameter is not base64url") from None


def _client_key(jwk: Any) -> ClientKey:
    if not isinstance(jwk, dict):
        raise InvalidJwks("each key must be a JSON object")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidJwks("register public keys only: a key holds private or symmetric material")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not 1 <= len(kid) <= 256:
        raise InvalidJwks("each key needs a kid")
    if jwk.get("use", "sig") != "sig":
        raise InvalidJwks("keys must be signature keys (use=sig)")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise InvalidJwks("key_ops must allow verify")
    kty = jwk.get("kty")
    key: PublicKey
    if kty == "EC":
        curve_name = jwk.get("crv")
        if curve_name not in _CURVES:
            raise InvalidJwks("EC keys must be on P-256 or P-384")
        curve, algorithm, size = _CURVES[curve_name]
        x, y = _b64_int(jwk.get("x")), _b64_int(jwk.get("y"))
        if x.bit_length() > 8 * size or y.bit_length() > 8 * size:
            raise InvalidJwks("an EC coordinate is too long")
        try:
            key = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        except ValueError:
            raise InvalidJwks("the EC point is not on the curve") from None
    elif kty == "RSA":
        algorithm = "RS384"
        n, e = _b64_int(jwk.get("n")), _b64_int(jwk.get("e"))
        if n.bit_length() < MIN_RSA_BITS or n.bit_length() > 8192:
            raise InvalidJwks(f"RSA keys need {MIN_RSA_BITS} to 8192 bits")
        if e < 3 or e % 2 == 0 or e.bit_length() > 64:
            raise InvalidJwks("the RSA public exponent is not usable")
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise InvalidJwks("the RSA key is not valid") from None
    else:
        raise InvalidJwks("keys must be EC (P-256, P-384) or RSA")
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        raise InvalidJwks(f"a {kty} key here verifies {algorithm} only")
    return ClientKey(kid=kid, algorithm=algorithm, key=key)


def parse_jwks(jwks: Mapping[str, Any]) -> list[ClientKey]:
    """The keys of a JWKS document (RFC 7517 5), or :class:`InvalidJwks`."""
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise InvalidJwks("the JWKS must have a non-empty 'keys' list")
    if len(keys) > MAX_KEYS:
        raise InvalidJwks(f"at most {MAX_KEYS} keys")
    parsed = [_client_key(jwk) for jwk in keys]
    if len({key.kid for key in parsed}) != len(parsed):
        raise InvalidJwks("kid values must be unique")
    return parsed


def _split(token: str) -> tuple[str, str, dict[str, Any], dict[str, Any], bytes]:
    if len(token) > MAX_ASSERTION_LENGTH or not token.isascii():
        raise AssertionRefused("malformed")
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(b64url_decode(header_b64))
        payload = _json_object(b64url_decode(payload_b64))
        signature = b64url_decode(signature_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AssertionRefused("malformed") from None
    return header_b64, payload_b64, header, payload, signature


def claimed_client(token: str) -> str | None:
    """The ``iss`` an assertion claims, before anything is verified: only to find the client
    whose keys then verify it."""
    try:
        payload = _split(token)[3]
    except AssertionRefused:
        return None
    issuer = payload.get("iss")
    return issuer if isinstance(issuer, str) and 0 < len(issuer) <= 128 else None


def _check_signature(key: ClientKey, signing_input: bytes, signature: bytes) -> None:
    try:
        if isinstance(key.key, ec.EllipticCurvePublicKey):
            size = (key.key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                raise AssertionRefused("signature")
            digest: hashes.HashAlgorithm = (
                hashes.SHA256() if key.algorithm == "ES256" else hashes.SHA384()
            )
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            key.key.verify(der, signing_input, ec.ECDSA(digest))
        else:
            key.key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA384())
    except InvalidSignature:
        raise AssertionRefused("signature") from None


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AssertionRefused(f"claim-{name}")
    return float(value)


def verify_assertion(
    token: str,
    keys: list[ClientKey],
    *,
    client_id: str,
    audiences: frozenset[str],
    now: datetime,
    leeway: timedelta = CLOCK_LEEWAY,
) -> Assertion:
    """The verified assertion of ``client_id``, or :class:`AssertionRefused`."""
    header_b64, payload_b64, header, claims, signature = _split(token)
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise AssertionRefused("algorithm")
    if "crit" in header or "jku" in header or "jwk" in header or "x5u" in header:
        # Keys come from the registration only, never from the token (RFC 8725 3.10).
        raise AssertionRefused("header")
    kid = header.get("kid")
    key = next((k for k in keys if k.kid == kid), None) if isinstance(kid, str) else None
    if key is None or key.algorithm != algorithm:
        raise AssertionRefused("key")
    _check_signature(key, f"{header_b64}.{payload_b64}".encode("ascii"), signature)
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRefused("issuer")
    aud = claims.get("aud")
    named = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and a in audiences for a in named):
        raise AssertionRefused("audience")
    instant, slack = now.timestamp(), leeway.total_seconds()
    expires = _number(claims, "exp", required=True)
    assert expires is not None
    if instant >= expires + slack:
        raise AssertionRefused("expired")
    if expires > instant + MAX_LIFETIME.total_seconds() + slack:
        raise AssertionRefused("lifetime")
    for name in ("nbf", "iat"):
        moment = _number(claims, name, required=False)
        if moment is not None and moment > instant + slack:
            raise AssertionRefused(f"claim-{name}")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= 1024:
        raise AssertionRefused("jti")
    return Assertion(client_id=client_id, jti=jti, expires_at=datetime.fromtimestamp(expires, UTC))
