"""The SQL of import and export: which ids exist, and the current rows of a type in pages."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.db.schema import resource


def resource_types(conn: Connection, tenant: str) -> list[str]:
    """The types the tenant has current (not deleted) resources of, in name order."""
    r = resource.c
    query = (
        sa.select(r.resource_type)
        .where(r.tenant_id == tenant, r.deleted.is_(False))
        .distinct()
        .order_by(r.resource_type)
    )
    return [str(name) for name in conn.execute(query).scalars()]


def current_page(
    conn: Connection, tenant: str, resource_type: str, after: str | None, limit: int
) -> Sequence[Any]:
    """Up to ``limit`` current resources of a type with ids after ``after``, by id (keyset
    paging: memory stays bounded however many there are)."""
    r = resource.c
    conditions: list[Any] = [
        r.tenant_id == tenant,
        r.resource_type == resource_type,
        r.deleted.is_(False),
    ]
    if after is not None:
        conditions.append(r.id > after)
    query = (
        sa.select(r.id, r.version_id, r.key_version, r.body)
        .where(*conditions)
        .order_by(r.id)
        .limit(limit)
    )
    return conn.execute(query).all()


def existing_ids(
    conn: Connection, tenant: str, resource_type: str, ids: Collection[str]
) -> set[str]:
    """Which of ``ids`` already have a row (current or deleted) of this type."""
    if not ids:
        return set()
    r = resource.c
    query = sa.select(r.id).where(
        r.tenant_id == tenant, r.resource_type == resource_type, r.id.in_(list(ids))
    )
    return {str(found) for found in conn.execute(query).scalars()}
