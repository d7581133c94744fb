"""The first refresh token of a SMART session, held sealed between sign-in and code exchange.

The sign-in opens the session (and with it the refresh-token family) before the app has
exchanged its code; the token waits in the code's row, sealed with AES-256-GCM under a
tenant-derived key and bound to the code's digest, and is wiped when the code is claimed
(SECURITY A3: never in clear). The exchange rotates it at once, so the sealed copy is spent.
"""

from __future__ import annotations

from carechart.crypto.aead import open_sealed, seal
from carechart.crypto.keys import KeyRing

KEY_PURPOSE = "smart-code-refresh"


def _ad(tenant: str, code_hash: str) -> bytes:
    return f"{KEY_PURPOSE}\x1f{tenant}\x1f{code_hash}".encode()


def seal_refresh(keyring: KeyRing, tenant: str, code_hash: str, refresh_token: str) -> bytes:
    return seal(
        keyring.derived(tenant, KEY_PURPOSE), refresh_token.encode(), _ad(tenant, code_hash)
    )


def open_refresh(keyring: KeyRing, tenant: str, code_hash: str, sealed: bytes) -> str:
    return open_sealed(
        keyring.derived(tenant, KEY_PURPOSE), sealed, _ad(tenant, code_hash)
    ).decode()
