"""Blind-index bucket sizing (DESIGN §3: "bits bounded so buckets never shrink to one row"),
on both engines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.crypto.keys import KeyRing
from carechart.db.search_schema import search_blind
from carechart.fhir.search import (
    blind_bits,
    confirm_candidate,
    index_resource,
    plan_blind_buckets,
    planned_bits,
    record_bits,
    search,
)
from carechart.fhir.search.buckets import truncate_token

Put = Callable[..., str]


@pytest.mark.parametrize(
    ("rows", "bits"),
    [(0, 8), (3, 8), (512, 8), (1024, 9), (2047, 9), (2048, 10), (10**6, 18), (2**40, 32)],
)
def test_planned_bits_keep_at_least_two_rows_per_token(rows: int, bits: int) -> None:
    assert planned_bits(rows) == bits
    if rows >= 1024:
        assert rows / 2**bits >= 2


def test_truncated_token_is_the_leading_bits() -> None:
    assert truncate_token("abcdef12", 32, 8) == "ab"
    assert truncate_token("abcdef12", 32, 10) == f"{0xABCDEF12 >> 22:03x}"
    assert truncate_token(truncate_token("abcdef12", 32, 20), 20, 9) == truncate_token(
        "abcdef12", 32, 9
    )
    with pytest.raises(ValueError, match="plaintext"):
        truncate_token("ab", 8, 16)


def patient(family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}], "gender": "other"}


def tokens(conn: Connection, tenant: str, code: str) -> set[str]:
    b = search_blind.c
    return set(
        conn.execute(sa.select(b.token).where(b.tenant_id == tenant, b.code == code)).scalars()
    )


def test_planning_narrows_small_indexes_in_place_and_search_still_finds(
    put: Put, conn: Connection, keyring: KeyRing, tenant: str
) -> None:
    smith = put(patient("Smith"))
    jones = put(patient("Jones"))
    assert all(len(t) == 8 for t in tokens(conn, tenant, "family"))
    changes = plan_blind_buckets(conn, tenant, "Patient")
    family = next(c for c in changes if c.code == "family")
    assert (family.old_bits, family.new_bits, family.rows, family.needs_reindex) == (
        32,
        8,
        2,
        False,
    )
    assert blind_bits(conn, tenant, "Patient")["family"] == 8
    assert all(len(t) == 2 for t in tokens(conn, tenant, "family"))
    found = set(search(conn, keyring, tenant, "Patient", [("family", "smi")]).ids)
    assert smith in found  # the same leading bits: still found (maybe with company)
    assert plan_blind_buckets(conn, tenant, "Patient") == []  # stable once planned
    # New writes use the recorded width, so they are found too.
    later = put(patient("Smithers"))
    assert all(len(t) == 2 for t in tokens(conn, tenant, "family"))
    found = set(search(conn, keyring, tenant, "Patient", [("family", "smithe")]).ids)
    assert later in found
    assert jones not in found or not confirm_candidate(
        "Patient", patient("Jones"), [("family", "smithe")]
    )


def test_wider_bits_are_reported_for_reindexing_not_applied(
    put: Put, conn: Connection, keyring: KeyRing, tenant: str
) -> None:
    rid = put(patient("Smith"))
    record_bits(conn, tenant, "Patient", "family", 8, 1)
    index_resource(conn, keyring, tenant, "Patient", rid, {**patient("Smith"), "id": rid})
    changes = plan_blind_buckets(conn, tenant, "Patient", {"family": 8})
    assert [c for c in changes if c.code == "family"] == []  # one row plans 8 bits
    grown = plan_blind_buckets(conn, tenant, "Patient", {"family": 4})
    assert [(c.code, c.new_bits, c.needs_reindex) for c in grown if c.code == "family"] == [
        ("family", 8, True)
    ]
    assert blind_bits(conn, tenant, "Patient")["family"] == 8  # unchanged until re-indexed


def test_other_tenants_keep_their_own_bits(
    put: Put, conn: Connection, tenant: str, other_tenant: str
) -> None:
    put(patient("Smith"))
    plan_blind_buckets(conn, tenant, "Patient")
    assert blind_bits(conn, other_tenant, "Patient") == {}
