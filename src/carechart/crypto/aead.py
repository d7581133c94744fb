"""AES-256-GCM sealing with associated data.

The associated data binds a ciphertext to its row (tenant, type, id, version): a body copied
into another row fails to open instead of being served as that row's content.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carechart.errors import EncryptionError

_FORMAT = b"\x01"
_NONCE = 12


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    # Random 96-bit nonces: safe well past the number of versions one data key will seal
    # before it is rotated (NIST SP 800-38D 8.3 bounds random nonces at 2^32 per key).
    nonce = os.urandom(_NONCE)
    return _FORMAT + nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _FORMAT:
        raise EncryptionError("sealed data has an unknown format")
    nonce = sealed[1 : 1 + _NONCE]
    try:
        return AESGCM(key).decrypt(nonce, sealed[1 + _NONCE :], associated_data)
    except InvalidTag:
        raise EncryptionError("sealed data failed authentication") from None


def resource_ad(tenant: str, resource_type: str, resource_id: str, version: int) -> bytes:
    return f"{tenant}\x1f{resource_type}\x1f{resource_id}\x1f{version}".encode()
