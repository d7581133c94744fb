"""The ``oauth_client`` repository: registered SMART apps and backend services (RFC 6749 2,
SMART App Launch v2 "Registering a SMART App", SECURITY A3, B7)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from carechart.db.auth_schema import oauth_client
from carechart.errors import Conflict

ClientKind = Literal["public", "confidential", "backend"]
CLIENT_KINDS: tuple[ClientKind, ...] = ("public", "confidential", "backend")


@dataclass(frozen=True, slots=True)
class OAuthClient:
    tenant: str
    client_id: str
    name: str
    kind: ClientKind
    secret_hash: str | None
    jwks: dict[str, Any] | None
    redirect_uris: tuple[str, ...]
    scope: frozenset[str]
    territories: tuple[str, ...]
    active: bool
    created_at: datetime


def _from_row(row: RowMapping) -> OAuthClient:
    kind = str(row["kind"])
    if kind not in CLIENT_KINDS:
        raise ValueError(f"unknown client kind {kind!r}")
    return OAuthClient(
        tenant=str(row["tenant_id"]),
        client_id=str(row["client_id"]),
        name=str(row["name"]),
        kind=kind,
        secret_hash=row["secret_hash"],
        jwks=row["jwks"],
        redirect_uris=tuple(str(u) for u in row["redirect_uris"] or ()),
        scope=frozenset(str(row["scope"]).split()),
        territories=tuple(str(t) for t in row["territories"] or ()),
        active=bool(row["active"]),
        created_at=row["created_at"],
    )


def create(
    conn: Connection,
    *,
    tenant: str,
    client_id: str,
    name: str,
    kind: ClientKind,
    scope: Sequence[str],
    now: datetime,
    redirect_uris: Sequence[str] = (),
    secret_hash: str | None = None,
    jwks: dict[str, Any] | None = None,
    territories: Sequence[str] = (),
    created_by: str | None = None,
) -> OAuthClient:
    """Register a client; 409 when the id is taken in the tenant."""
    values = {
        "tenant_id": tenant,
        "client_id": client_id,
        "name": name,
        "kind": kind,
        "secret_hash": secret_hash,
        "jwks": jwks,
        "redirect_uris": list(redirect_uris),
        "scope": " ".join(sorted(set(scope))),
        "territories": list(territories),
        "active": True,
        "created_at": now,
        "created_by": created_by,
    }
    try:
        with conn.begin_nested():
            conn.execute(oauth_client.insert().values(**values))
    except IntegrityError:
        raise Conflict(f"client id {client_id!r} is already registered") from None
    found = by_id(conn, tenant=tenant, client_id=client_id)
    assert found is not None
    return found


def by_id(conn: Connection, *, tenant: str, client_id: str) -> OAuthClient | None:
    t = oauth_client
    row = (
        conn.execute(sa.select(t).where(t.c.tenant_id == tenant, t.c.client_id == client_id))
        .mappings()
        .first()
    )
    return None if row is None else _from_row(row)


def deactivate(conn: Connection, *, tenant: str, client_id: str) -> bool:
    t = oauth_client
    result = conn.execute(
        t.update().where(t.c.tenant_id == tenant, t.c.client_id == client_id).values(active=False)
    )
    return result.rowcount == 1
