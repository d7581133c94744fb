"""Envelope key hierarchy: master key -> wrapped per-tenant data keys -> derived keys.

The master (key-encryption) key comes from ``CARECHART_MASTER_KEY`` or a key file created on
first run with mode 0600. It never reaches the database; only data keys wrapped under it do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from carechart.crypto.aead import open_sealed, seal
from carechart.db.schema import tenant_key
from carechart.errors import EncryptionError

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class MasterKey:
    key: bytes
    key_id: str

    @classmethod
    def from_bytes(cls, key: bytes) -> MasterKey:
        if len(key) != KEY_BYTES:
            raise EncryptionError(f"master key must be {KEY_BYTES} bytes, got {len(key)}")
        # The id is a MAC of a constant, so it identifies the key without revealing it.
        key_id = hmac.new(key, b"carechart master key id", hashlib.sha256).hexdigest()[:16]
        return cls(key=key, key_id=key_id)


def decode_key(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionError("master key is not valid base64") from None


def load_master_key(env_value: str | None, key_file: Path) -> MasterKey:
    """The environment wins; otherwise the key file, created (0600) when missing."""
    if env_value:
        return MasterKey.from_bytes(decode_key(env_value))
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
    return MasterKey.from_bytes(decode_key(key_file.read_text()))


def derive_key(data_key: bytes, purpose: str) -> bytes:
    """Per-purpose subkeys (blind indexes, fields) from a tenant data key (RFC 5869 HKDF)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose.encode()
    ).derive(data_key)


@dataclass(frozen=True, slots=True)
class DataKey:
    tenant: str
    version: int
    key: bytes


def _wrap_ad(tenant: str, version: int) -> bytes:
    return f"tenant-key\x1f{tenant}\x1f{version}".encode()


class KeyRing:
    """Unwrapped tenant data keys, cached in memory; created on first use.

    Keys are created in their own committed transaction: a key must never exist only inside
    a request transaction that may roll back while its ciphertexts are cached elsewhere.
    """

    def __init__(self, master: MasterKey, engine: Engine) -> None:
        self._master = master
        self._engine = engine
        self._lock = threading.Lock()
        self._active: dict[str, DataKey] = {}
        self._by_version: dict[tuple[str, int], DataKey] = {}
        self._derived: dict[tuple[str, int, str], bytes] = {}

    @property
    def master_key_id(self) -> str:
        return self._master.key_id

    def active(self, tenant: str) -> DataKey:
        key = self._active.get(tenant)
        if key is None:
            with self._lock:
                key = self._active.get(tenant) or self._load_or_create(tenant)
        return key

    def version(self, tenant: str, version: int) -> DataKey:
        key = self._by_version.get((tenant, version))
        if key is None:
            with self._lock:
                self._load_all(tenant)
            key = self._by_version.get((tenant, version))
            if key is None:
                raise EncryptionError("data key version is unknown")
        return key

    def has_version(self, tenant: str, version: int) -> bool:
        """Whether the key is already unwrapped in memory (no database needed)."""
        return (tenant, version) in self._by_version

    def derived(self, tenant: str, purpose: str) -> bytes:
        """A subkey of the tenant's first data key: stable across data-key rotation, so
        blind indexes stay valid until they are deliberately re-keyed."""
        base = self.version(tenant, 1) if self._has_version(tenant, 1) else self.active(tenant)
        cache_key = (tenant, base.version, purpose)
        sub = self._derived.get(cache_key)
        if sub is None:
            sub = derive_key(base.key, purpose)
            self._derived[cache_key] = sub
        return sub

    def _has_version(self, tenant: str, version: int) -> bool:
        if (tenant, version) in self._by_version:
            return True
        self.active(tenant)
        return (tenant, version) in self._by_version

    def _unwrap(self, tenant: str, version: int, wrapped: bytes, master_id: str) -> DataKey:
        if master_id != self._master.key_id:
            raise EncryptionError("data key is wrapped by a different master key")
        raw = open_sealed(self._master.key, wrapped, _wrap_ad(tenant, version))
        return DataKey(tenant=tenant, version=version, key=raw)

    def _load_all(self, tenant: str) -> DataKey | None:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    tenant_key.c.version,
                    tenant_key.c.wrapped_key,
                    tenant_key.c.master_key_id,
                    tenant_key.c.active,
                ).where(tenant_key.c.tenant_id == tenant)
            ).all()
        active: DataKey | None = None
        for version, wrapped, master_id, is_active in rows:
            key = self._unwrap(tenant, version, wrapped, master_id)
            self._by_version[(tenant, version)] = key
            if is_active:
                active = key
        if active is not None:
            self._active[tenant] = active
        return active

    def _load_or_create(self, tenant: str) -> DataKey:
        active = self._load_all(tenant)
        if active is not None:
            return active
        raw = os.urandom(KEY_BYTES)
        wrapped = seal(self._master.key, raw, _wrap_ad(tenant, 1))
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    tenant_key.insert().values(
                        tenant_id=tenant,
                        version=1,
                        master_key_id=self._master.key_id,
                        wrapped_key=wrapped,
                        created_at=datetime.now(UTC),
                        active=True,
                    )
                )
        except IntegrityError:
            pass  # another process created it first; use theirs
        active = self._load_all(tenant)
        if active is None:
            raise EncryptionError("could not establish a data key for the tenant")
        return active
