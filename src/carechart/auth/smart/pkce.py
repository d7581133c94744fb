"""PKCE (RFC 7636) with the S256 method only (SMART App Launch v2: ``plain`` SHALL NOT be
supported; SECURITY A7)."""

from __future__ import annotations

import hashlib
import hmac
import re

from carechart.auth.tokens import b64url_encode

METHOD = "S256"
# RFC 7636 4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
# BASE64URL of a SHA-256 digest: exactly 43 characters, no padding.
_CHALLENGE = re.compile(r"^[A-Za-z0-9_\-]{43}$")


def is_challenge(value: str) -> bool:
    return _CHALLENGE.fullmatch(value) is not None


def challenge_of(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(code_verifier)))`` (RFC 7636 4.2)."""
    return b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())


def verifies(verifier: str, challenge: str) -> bool:
    """Whether ``verifier`` is well-formed and hashes to ``challenge`` (constant-time)."""
    if _VERIFIER.fullmatch(verifier) is None or not is_challenge(challenge):
        return False
    return hmac.compare_digest(challenge_of(verifier), challenge)
