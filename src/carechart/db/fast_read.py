"""The read-by-id fast path on PostgreSQL: asyncpg on the event loop.

A FHIR read is one primary-key lookup. Through the synchronous store it also pays a worker
thread hand-off, SQLAlchemy's statement machinery and BEGIN/COMMIT round trips; here it is
one round trip on the event loop. Same SQL, same table, same semantics: the row is turned
into a response by :func:`carechart.fhir.store.current_version`, as the store does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import sqlalchemy as sa

from carechart.errors import Unavailable

_CURRENT = (
    "SELECT version_id, last_updated, deleted, key_version, body FROM resource "
    "WHERE tenant_id = $1 AND resource_type = $2 AND id = $3"
)


async def _keep_session(_conn: Any) -> None:
    """The pool's default reset on release (RESET ALL, UNLISTEN, …) costs a round trip per
    read; these connections only ever run one plain SELECT and change no session state."""


@dataclass(frozen=True, slots=True)
class CurrentRow:
    version_id: int
    last_updated: datetime
    deleted: bool
    key_version: int
    body: bytes | None


class PgFastReader:
    """A small asyncpg pool, opened on first use inside the running event loop."""

    def __init__(self, url: str, *, max_size: int = 16) -> None:
        parsed = sa.make_url(url)
        self._connect: dict[str, Any] = {
            "host": parsed.host or "127.0.0.1",
            "port": parsed.port or 5432,
            "user": parsed.username,
            "password": parsed.password,
            "database": parsed.database,
        }
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._lock: asyncio.Lock | None = None

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        **self._connect,
                        min_size=1,
                        max_size=self._max_size,
                        timeout=5,
                        reset=_keep_session,
                    )
                except (OSError, asyncpg.PostgresError, TimeoutError):
                    raise Unavailable("the database is unavailable; try again shortly") from None
        return self._pool

    async def current(self, tenant: str, resource_type: str, resource_id: str) -> CurrentRow | None:
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                record = await conn.fetchrow(_CURRENT, tenant, resource_type, resource_id)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError):
            raise Unavailable("the database is unavailable; try again shortly") from None
        if record is None:
            return None
        return CurrentRow(
            version_id=record["version_id"],
            last_updated=record["last_updated"],
            deleted=record["deleted"],
            key_version=record["key_version"],
            body=record["body"],
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
