"""Index maintenance: re-index after definitions or keys change, and re-size blind indexes.

Each batch is its own unit of work, so a re-index of a large store neither holds one huge
transaction nor loses its progress; reads and writes go on meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from carechart.context import AppContext
from carechart.fhir.search.buckets import plan_blind_buckets, record_bits
from carechart.fhir.search.extract import BLIND_TYPES

Progress = Callable[[int], None]


def reindex(
    ctx: AppContext,
    tenant: str,
    resource_type: str | None = None,
    *,
    batch: int = 500,
    progress: Progress | None = None,
) -> int:
    """Rebuild the search index of every current resource (of one type, or all)."""
    done = 0
    after: tuple[str, str] | None = None
    while True:
        with ctx.store(write=True, tenant=tenant) as store:
            count, after = store.reindex_batch(resource_type, after, batch)
        done += count
        if progress is not None:
            progress(count)
        if after is None:
            return done


@dataclass(frozen=True, slots=True)
class Resized:
    resource_type: str
    code: str
    rows: int
    old_bits: int
    new_bits: int
    reindexed: bool


def resize_blind_indexes(ctx: AppContext, tenant: str) -> list[Resized]:
    """Size each blind index from its row count so every token stays shared by several rows
    (narrowed in place; widened by re-indexing the type from the sealed bodies)."""
    resized: list[Resized] = []
    for resource_type in sorted(BLIND_TYPES):
        with ctx.store(write=True, tenant=tenant) as store:
            changes = plan_blind_buckets(store.conn, tenant, resource_type)
            for change in changes:
                if change.needs_reindex:
                    record_bits(
                        store.conn, tenant, resource_type, change.code, change.new_bits, change.rows
                    )
        if any(change.needs_reindex for change in changes):
            reindex(ctx, tenant, resource_type)
        resized += [
            Resized(resource_type, c.code, c.rows, c.old_bits, c.new_bits, c.needs_reindex)
            for c in changes
        ]
    return resized
