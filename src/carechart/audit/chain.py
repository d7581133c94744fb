"""The audit trail as an HMAC hash chain (SECURITY C1, C3, C4, C5; ASTM E2147).

Each tenant's records form one chain: a record's ``record_hash`` is HMAC-SHA256, under the
tenant's ``audit-chain`` key, of its predecessor's hash and its own content. The key is derived
from the tenant data key, which never reaches the database, so whoever can write the table
still cannot forge a record, re-link the chain around a deleted one, or recompute hashes after
an edit. :func:`verify` names the first record modified, inserted or deleted; signed
checkpoints (compact JWS, ES256) pin the head so that cutting off the tail is detected too.

:func:`append` takes the caller's connection: the record commits or rolls back with the data
it describes (C5), and a failure to write it fails the request.

Appends from concurrent transactions must extend one chain. On PostgreSQL the append takes a
per-tenant transaction-scoped advisory lock before it reads the head; on SQLite the write
transaction (``BEGIN IMMEDIATE``) already serialises writers. The unique (tenant, chain_index)
constraint is the backstop either way: a fork fails to insert rather than being stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.auth.tokens import SigningKey, VerificationKeys, verify_jws
from carechart.crypto.keys import KeyRing
from carechart.db.auth_schema import as_utc, audit_event
from carechart.errors import CarechartError

KEY_PURPOSE = "audit-chain"
GENESIS = "0" * 64  # the predecessor hash of each tenant's first record
CHECKPOINT_TYPE = "audit-checkpoint+jwt"
_DOMAIN = b"carechart-audit-chain-v1\x1f"


class AuditChainBroken(CarechartError):
    status, code, fhir_code = 409, "AUDIT_CHAIN_BROKEN", "conflict"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What happened (C1). Identifiers only, never PHI values: the trail is itself read by
    auditors who may not see clinical content, and it is exported.

    ``action``: create, read, vread, update, patch, delete, search, history, export, print,
    ingest, login, logout, token, mfa, denied, break-glass, configure.
    ``outcome``: success, failure, denied. ``purpose_of_use``: a v3 PurposeOfUse code
    (TREAT, HPAYMT, HOPERAT, ETREAT, BTG, ...).
    """

    action: str
    outcome: str
    user_id: str | None = None
    client_id: str | None = None
    role: str | None = None
    patient_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    data_category: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    purpose_of_use: str | None = None
    correlation_id: str | None = None


RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A row of ``audit_event`` as the verifier sees it."""

    chain_index: int
    recorded_at: datetime
    record: AuditRecord
    prev_hash: str
    record_hash: str


@dataclass(frozen=True, slots=True)
class Tamper:
    """The first place the chain is wrong. For a deletion, ``chain_index`` is the index the
    missing record had."""

    kind: Literal["modified", "inserted", "deleted"]
    chain_index: int
    message: str


@dataclass(frozen=True, slots=True)
class ChainVerification:
    tenant: str
    records: int
    head_index: int
    head_hash: str
    first_tamper: Tamper | None

    @property
    def ok(self) -> bool:
        return self.first_tamper is None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tenant: str
    chain_index: int
    record_hash: str
    issued_at: datetime


def timestamp_text(moment: datetime) -> str:
    """The one textual form of ``recorded_at`` that is hashed: UTC, microseconds, ``Z``."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_mac(
    key: bytes, *, tenant: str, prev_hash: str, recorded_at: datetime, record: AuditRecord
) -> str:
    """HMAC-SHA256 over a canonical JSON of the tenant, time, content and predecessor."""
    content = {
        "tenant": tenant,
        "recorded_at": timestamp_text(recorded_at),
        "prev": prev_hash,
        **asdict(record),
    }
    message = _DOMAIN + json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _fit(record: AuditRecord) -> AuditRecord:
    """Cut over-long values (a 4 KB user agent) to their column, before hashing: a record
    that cannot be stored would fail the request it describes (C5) for a cosmetic reason."""
    changes: dict[str, str] = {}
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        limit = getattr(audit_event.c[name].type, "length", None)
        if isinstance(value, str) and limit is not None and len(value) > limit:
            changes[name] = value[:limit]
    return replace(record, **changes) if changes else record


def _advisory_key(tenant: str) -> int:
    # pg_advisory_xact_lock takes a signed bigint; a hash of the tenant keeps tenants apart.
    return int.from_bytes(
        hashlib.sha256(f"audit-chain\x1f{tenant}".encode()).digest()[:8], "big", signed=True
    )


def _lock_chain(conn: Connection, tenant: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_advisory_key(tenant))))


def _head(conn: Connection, tenant: str) -> tuple[int, str]:
    t = audit_event
    row = conn.execute(
        sa.select(t.c.chain_index, t.c.record_hash)
        .where(t.c.tenant_id == tenant)
        .order_by(t.c.chain_index.desc())
        .limit(1)
    ).first()
    return (0, GENESIS) if row is None else (int(row.chain_index), str(row.record_hash))


def append_many(
    conn: Connection,
    keyring: KeyRing,
    *,
    tenant: str,
    records: Sequence[AuditRecord],
    now: datetime | None = None,
) -> list[StoredEvent]:
    """Append records in order (e.g. one per patient in a search result) in one round trip.

    The tenant's data key must already exist (it is created in its own transaction, which on
    SQLite cannot happen inside this one); ``AppContext.store`` ensures that.
    """
    if not records:
        return []
    key = keyring.derived(tenant, KEY_PURPOSE)
    moment = as_utc(now or datetime.now(UTC))
    _lock_chain(conn, tenant)
    index, prev = _head(conn, tenant)
    stored: list[StoredEvent] = []
    for record in map(_fit, records):
        index += 1
        digest = record_mac(key, tenant=tenant, prev_hash=prev, recorded_at=moment, record=record)
        stored.append(StoredEvent(index, moment, record, prev, digest))
        prev = digest
    conn.execute(
        audit_event.insert(),
        [
            {
                "tenant_id": tenant,
                "chain_index": event.chain_index,
                "recorded_at": event.recorded_at,
                "prev_hash": event.prev_hash,
                "record_hash": event.record_hash,
                **asdict(event.record),
            }
            for event in stored
        ],
    )
    return stored


def append(
    conn: Connection,
    keyring: KeyRing,
    *,
    tenant: str,
    record: AuditRecord,
    now: datetime | None = None,
) -> StoredEvent:
    """Append one record in the caller's transaction (C5)."""
    return append_many(conn, keyring, tenant=tenant, records=[record], now=now)[0]


def stored_events(conn: Connection, tenant: str, *, batch: int = 1000) -> Iterator[StoredEvent]:
    """The tenant's chain in order, streamed in batches by keyset (bounded memory)."""
    t = audit_event
    after = 0
    while True:
        rows = conn.execute(
            sa.select(t)
            .where(t.c.tenant_id == tenant, t.c.chain_index > after)
            .order_by(t.c.chain_index)
            .limit(batch)
        ).all()
        for row in rows:
            values = row._mapping
            yield StoredEvent(
                chain_index=int(values["chain_index"]),
                recorded_at=as_utc(values["recorded_at"]),
                record=AuditRecord(**{name: values[name] for name in RECORD_FIELDS}),
                prev_hash=str(values["prev_hash"]),
                record_hash=str(values["record_hash"]),
            )
        if len(rows) < batch:
            return
        after = int(rows[-1].chain_index)


def find_first_tamper(
    key: bytes,
    tenant: str,
    events: Iterable[StoredEvent],
    checkpoints: Sequence[Checkpoint] = (),
) -> ChainVerification:
    """Walk the chain once and classify the first break.

    At each record, with ``expected`` the hash the chain has reached: a valid MAC linked to
    ``expected`` is fine. Otherwise, if the *next* record links to ``expected`` (or this one
    repeats the previous record), this record was slipped in (inserted); else if its MAC fails, it was altered (modified); else it is
    genuine but its predecessor is gone (deleted). Checkpoints pin (index, hash) pairs: a
    checkpoint beyond the end means the tail was cut off.
    """
    pinned = {c.chain_index: c.record_hash for c in checkpoints if c.tenant == tenant}
    expected_hash, expected_index, count = GENESIS, 1, 0
    iterator = iter(events)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        count += 1
        mac = record_mac(
            key,
            tenant=tenant,
            prev_hash=current.prev_hash,
            recorded_at=current.recorded_at,
            record=current.record,
        )
        mac_ok = hmac.compare_digest(mac, current.record_hash)
        tamper: Tamper | None = None
        if mac_ok and current.prev_hash == expected_hash:
            if current.chain_index != expected_index:
                tamper = Tamper("modified", current.chain_index, "record was renumbered")
            elif pinned.get(current.chain_index, current.record_hash) != current.record_hash:
                tamper = Tamper(
                    "modified", current.chain_index, "record differs from a signed checkpoint"
                )
        elif current.record_hash == expected_hash or (
            following is not None and following.prev_hash == expected_hash
        ):
            tamper = Tamper("inserted", current.chain_index, "record is not part of the chain")
        elif not mac_ok:
            tamper = Tamper("modified", current.chain_index, "record content or hash was altered")
        else:
            tamper = Tamper("deleted", expected_index, "the record before this one is missing")
        if tamper is not None:
            return ChainVerification(tenant, count, expected_index - 1, expected_hash, tamper)
        expected_hash, expected_index = current.record_hash, current.chain_index + 1
        current = following
    beyond = [index for index in pinned if index >= expected_index]
    if beyond:
        return ChainVerification(
            tenant,
            count,
            expected_index - 1,
            expected_hash,
            Tamper(
                "deleted", expected_index, f"a signed checkpoint covers up to record {max(beyond)}"
            ),
        )
    return ChainVerification(tenant, count, expected_index - 1, expected_hash, None)


def verify(
    conn: Connection,
    keyring: KeyRing,
    *,
    tenant: str,
    checkpoints: Sequence[Checkpoint] = (),
) -> ChainVerification:
    """C4's verify command: the first modified, inserted or deleted record, if any."""
    return find_first_tamper(
        keyring.derived(tenant, KEY_PURPOSE), tenant, stored_events(conn, tenant), checkpoints
    )


def export_checkpoint(
    conn: Connection, keyring: KeyRing, *, tenant: str, signer: SigningKey, now: datetime
) -> str:
    """A signed statement of the chain head (compact JWS, ``typ: audit-checkpoint+jwt``).

    The chain is verified first: signing the head of a broken chain would bless the damage.
    Keep exported checkpoints, and the public key that signed them, outside the database.
    """
    result = verify(conn, keyring, tenant=tenant)
    if not result.ok:
        raise AuditChainBroken("the audit chain does not verify; no checkpoint was signed")
    payload: dict[str, Any] = {
        "tenant": tenant,
        "chain_index": result.head_index,
        "record_hash": result.head_hash,
        "iat": int(now.timestamp()),
    }
    return signer.sign(payload, typ=CHECKPOINT_TYPE)


def read_checkpoint(token: str, keys: VerificationKeys) -> Checkpoint:
    """Check a checkpoint's signature; raises ``Unauthorized`` when it does not verify."""
    claims = verify_jws(token, keys, typ=CHECKPOINT_TYPE)
    return Checkpoint(
        tenant=str(claims["tenant"]),
        chain_index=int(claims["chain_index"]),
        record_hash=str(claims["record_hash"]),
        issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
    )
