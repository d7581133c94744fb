"""What a running server holds: settings, the engine and the key ring."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from carechart.config import Settings
from carechart.crypto.keys import KeyRing, load_master_key
from carechart.db.engine import make_engine, unit_of_work
from carechart.db.fast_read import PgFastReader
from carechart.fhir.store import SqlResourceStore


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    keyring: KeyRing
    # PostgreSQL only: reads by id on the event loop (see carechart.db.fast_read).
    fast_reader: PgFastReader | None = field(default=None)

    def __post_init__(self) -> None:
        if self.fast_reader is None and self.engine.dialect.name == "postgresql":
            self.fast_reader = PgFastReader(self.engine.url.render_as_string(hide_password=False))

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        engine = make_engine(settings.effective_database_url)
        key_file = settings.master_key_file or settings.data_dir / "keys" / "master.key"
        master = load_master_key(settings.master_key, key_file)
        return cls(settings=settings, engine=engine, keyring=KeyRing(master, engine))

    @contextmanager
    def store(self, *, write: bool, tenant: str | None = None) -> Iterator[SqlResourceStore]:
        """One unit of work over the resource store; committed when the block succeeds."""
        tenant = tenant or self.settings.default_tenant
        # The tenant's data key is created, if need be, in its own transaction before the
        # unit of work opens: SQLite has one writer, so it cannot happen inside it.
        self.keyring.active(tenant)
        with unit_of_work(self.engine, write=write) as conn:
            store = SqlResourceStore(conn, self.keyring, tenant)
            yield store
            store.flush()
