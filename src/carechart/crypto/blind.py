"""Keyed blind indexes: equality search over values that are stored only sealed.

A blind index is HMAC-SHA256(per-tenant, per-parameter key, normalised value), truncated to a
number of bits chosen so that each index value is shared by several rows (CipherSweet's
planning rule): the index then answers "maybe" and the sealed body confirms, and the index
alone never singles a row out.
"""

from __future__ import annotations

import hashlib
import hmac


def blind_token(key: bytes, value: str, bits: int = 32) -> str:
    """Truncated HMAC of ``value`` as a hex string of ``bits`` bits (multiple of 4)."""
    digest = hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[: max(1, bits // 4)]
