"""What a running server holds: settings, the engine and the key ring."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from carechart.access.policy import AccessGuard
from carechart.audit.chain import AuditRecord, append_many
from carechart.config import Settings
from carechart.crypto.keys import KeyRing, load_master_key
from carechart.db.engine import make_engine, unit_of_work
from carechart.fhir.store import SqlResourceStore

log = logging.getLogger("carechart")


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    keyring: KeyRing

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        engine = make_engine(settings.effective_database_url)
        key_file = settings.master_key_file or settings.data_dir / "keys" / "master.key"
        master = load_master_key(settings.master_key, key_file)
        return cls(settings=settings, engine=engine, keyring=KeyRing(master, engine))

    @contextmanager
    def store(
        self, *, write: bool, tenant: str | None = None, guard: AccessGuard | None = None
    ) -> Iterator[SqlResourceStore]:
        """One unit of work over the resource store; committed when the block succeeds.

        With a ``guard`` (every request), what it admitted is audited in the same transaction
        (SECURITY C5: no PHI served unaudited; if the records cannot be written, the request
        fails), and what it refused is audited even when the request then fails (B2)."""
        tenant = tenant or (guard.tenant if guard is not None else self.settings.default_tenant)
        # The tenant's data key is created, if need be, in its own transaction before the
        # unit of work opens: SQLite has one writer, so it cannot happen inside it.
        self.keyring.active(tenant)
        if guard is not None and self.engine.dialect.name == "sqlite":
            write = True  # audit records are written even by reads
        try:
            with unit_of_work(self.engine, write=write) as conn:
                store = SqlResourceStore(conn, self.keyring, tenant, guard)
                yield store
                store.flush()
                if guard is not None:
                    append_many(conn, self.keyring, tenant=tenant, records=guard.take_records())
        except Exception:
            if guard is not None:
                self.audit_refusals(tenant, guard)
            raise

    def audit_refusals(self, tenant: str, guard: AccessGuard) -> None:
        """Write the refusals of a failed unit of work in a transaction of their own."""
        records = guard.take_records(outcomes=("denied",))
        try:
            self.audit(tenant, records)
        except Exception as exc:  # the request is failing already; keep its own error
            log.error("could not audit %d refusal(s): %s", len(records), type(exc).__name__)

    def audit(self, tenant: str, records: Sequence[AuditRecord]) -> None:
        """Append records in a transaction of their own (for events outside a unit of work)."""
        if not records:
            return
        self.keyring.active(tenant)
        with unit_of_work(self.engine, write=True) as conn:
            append_many(conn, self.keyring, tenant=tenant, records=records)
