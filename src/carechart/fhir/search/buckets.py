"""Blind-index bucket sizing: how many bits of each HMAC a blind index keeps.

DESIGN §3 and the CipherSweet planner: no blind index may be so specific that a token
singles out one row. With ``N`` resources carrying a parameter, keeping
``floor(log2(N / 2))`` bits (clamped to [:data:`MIN_BITS`, :data:`MAX_BITS`]) makes each
token value expected to be shared by at least two rows' values, so every blind-index lookup
answers with *candidates* that the caller confirms against the unsealed body
(:func:`carechart.fhir.search.confirm_candidate`).

Bits are recorded per (tenant, resource type, parameter) in ``search_blind_bits`` so that
writes and queries compute the same tokens; a parameter without a row uses
:data:`carechart.fhir.search.indexer.BLIND_BITS` (the 32 bits every token had before
planning). A token of ``b`` bits is the top ``b`` bits of the 32-bit token, in hex, so
*fewer* bits can be derived from stored tokens (:func:`plan_blind_buckets` does that in
place), while *more* bits need the plaintext: the store re-indexes the resources of that
type (unseal, :func:`carechart.fhir.search.index_resource`) after :func:`record_bits`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.db.search_schema import search_blind, search_blind_bits

__all__ = [
    "DEFAULT_BITS",
    "MAX_BITS",
    "MIN_BITS",
    "BucketChange",
    "blind_bits",
    "plan_blind_buckets",
    "planned_bits",
    "record_bits",
    "truncate_token",
]

MIN_BITS = 8
MAX_BITS = 32
#: Bits of a parameter never planned (the width of every token written before planning).
DEFAULT_BITS = 32


def planned_bits(rows: int) -> int:
    """Bits for a blind index over ``rows`` resources: clamp(floor(log2(rows / 2)), 8, 32)."""
    if rows < 4:
        return MIN_BITS
    return max(MIN_BITS, min(MAX_BITS, math.floor(math.log2(rows / 2))))


def truncate_token(token: str, from_bits: int, to_bits: int) -> str:
    """The ``to_bits``-bit token of a value from its ``from_bits``-bit token (fewer bits
    only): both are the leading bits of the same HMAC, as zero-padded hex."""
    if to_bits > from_bits:
        raise ValueError("a token cannot gain bits without the plaintext")
    value = int(token, 16) >> (from_bits - to_bits)
    return f"{value:0{(to_bits + 3) // 4}x}"


def blind_bits(conn: Connection, tenant: str, resource_type: str) -> dict[str, int]:
    """The recorded bits per blind-indexed parameter code of ``resource_type`` (codes not
    listed use :data:`DEFAULT_BITS`)."""
    t = search_blind_bits.c
    rows = conn.execute(
        sa.select(t.code, t.bits).where(t.tenant_id == tenant, t.resource_type == resource_type)
    ).all()
    return {code: bits for code, bits in rows}  # noqa: C416 (Row is not a 2-tuple to mypy)


def record_bits(
    conn: Connection, tenant: str, resource_type: str, code: str, bits: int, rows: int
) -> None:
    """Record the bits of one parameter (replacing any previous record)."""
    t = search_blind_bits.c
    conn.execute(
        search_blind_bits.delete().where(
            t.tenant_id == tenant, t.resource_type == resource_type, t.code == code
        )
    )
    conn.execute(
        search_blind_bits.insert().values(
            tenant_id=tenant, resource_type=resource_type, code=code, bits=bits, planned_rows=rows
        )
    )


@dataclass(frozen=True, slots=True)
class BucketChange:
    code: str
    rows: int
    old_bits: int
    new_bits: int
    #: True when the new width is wider: the caller must re-index from the bodies
    #: (record_bits, then index_resource for every resource of the type).
    needs_reindex: bool


def plan_blind_buckets(
    conn: Connection, tenant: str, resource_type: str, current: Mapping[str, int] | None = None
) -> list[BucketChange]:
    """Size every blind index of ``resource_type`` in ``tenant`` from its row count.

    Narrowing is applied here (tokens rewritten in place, bits recorded). Widening is only
    reported (``needs_reindex``): it needs the plaintext, which this module never sees.
    A widening is proposed only when the planned width exceeds the recorded one by two bits,
    so that a tenant growing past a power of two does not re-index on every doubling.
    """
    b = search_blind.c
    counts = conn.execute(
        sa.select(b.code, sa.func.count(sa.distinct(b.resource_id)))
        .where(b.tenant_id == tenant, b.resource_type == resource_type)
        .group_by(b.code)
    ).all()
    recorded = dict(current) if current is not None else blind_bits(conn, tenant, resource_type)
    changes: list[BucketChange] = []
    for code, rows in counts:
        old = recorded.get(code, DEFAULT_BITS)
        new = planned_bits(rows)
        if new < old:
            _narrow(conn, tenant, resource_type, code, old, new)
            record_bits(conn, tenant, resource_type, code, new, rows)
            changes.append(BucketChange(code, rows, old, new, needs_reindex=False))
        elif new >= old + 2:
            changes.append(BucketChange(code, rows, old, new, needs_reindex=True))
    return changes


def _narrow(
    conn: Connection, tenant: str, resource_type: str, code: str, old: int, new: int
) -> None:
    b = search_blind.c
    owner = (b.tenant_id == tenant, b.resource_type == resource_type, b.code == code)
    rows = conn.execute(sa.select(b.resource_id, b.token).where(*owner)).all()
    narrowed = {(rid, truncate_token(token, old, new)) for rid, token in rows}
    conn.execute(search_blind.delete().where(*owner))
    if narrowed:
        conn.execute(
            search_blind.insert(),
            [
                {
                    "tenant_id": tenant,
                    "resource_type": resource_type,
                    "resource_id": rid,
                    "code": code,
                    "token": token,
                }
                for rid, token in sorted(narrowed)
            ],
        )
