"""Engines and the unit of work.

SQLite is the embedded default; PostgreSQL is used when ``CARECHART_DATABASE_URL`` says so.
Dialect differences (pragmas, transaction start) stay in this package.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

_WRITE = "carechart_write"


def make_engine(url: str, *, pool_size: int = 20) -> Engine:
    """Create an engine; for SQLite, make sure the file's directory exists."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            sa_url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=pool_size
        )
        _configure_sqlite(engine)
        return engine
    if sa_url.get_backend_name() == "postgresql" and sa_url.drivername == "postgresql":
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    # No pre-ping: it would cost a round trip per request. A dropped connection surfaces as a
    # DBAPI error, which the application answers with 503, and the pool replaces it.
    return sa.create_engine(sa_url, pool_size=pool_size, max_overflow=20, pool_recycle=1800)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling starts transactions late and cannot take the write
    # lock up front; we start them ourselves so a writer holds the lock from BEGIN and
    # concurrent writers queue on busy_timeout instead of failing on lock upgrade.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITE) else "BEGIN")


def is_sqlite(conn_or_engine: Connection | Engine) -> bool:
    return conn_or_engine.dialect.name == "sqlite"


@contextmanager
def unit_of_work(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """One transaction: committed when the block ends normally, rolled back otherwise.

    Code below the endpoint receives the connection and never commits.
    """
    with engine.connect() as conn:
        conn.info[_WRITE] = write
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info.pop(_WRITE, None)


# Below this many rows a plain executemany is as quick as COPY and simpler.
_COPY_THRESHOLD = 50


def bulk_insert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows in the connection's transaction.

    PostgreSQL: COPY FROM STDIN, which streams rows without per-row statements (a transaction
    Bundle writes tens of thousands of index rows). Elsewhere: executemany.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) < _COPY_THRESHOLD:
        conn.execute(table.insert(), rows)
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    preparer = conn.dialect.identifier_preparer
    statement = "COPY {} ({}) FROM STDIN".format(
        preparer.format_table(table), ", ".join(preparer.quote(c) for c in columns)
    )
    dbapi_connection: Any = conn.connection.dbapi_connection
    with dbapi_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([row.get(c) for c in columns])
