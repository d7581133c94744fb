"""Tables of the resource store (one schema for SQLite and PostgreSQL).

Every row carries ``tenant_id``; patient-compartment rows carry the patient id, which keeps
tenant isolation a single WHERE clause and is the distribution key for scale-out.
Search-index tables live in :mod:`carechart.db.search_schema`.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TENANT = sa.String(64)
RTYPE = sa.String(64)
RID = sa.String(64)
# SQLite stores BIGINT autoincrement only for "INTEGER PRIMARY KEY"; the variant keeps both.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

resource = sa.Table(
    "resource",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("resource_type", RTYPE, primary_key=True),
    sa.Column("id", RID, primary_key=True),
    sa.Column("version_id", sa.Integer, nullable=False),
    sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    # First patient of the resource's Patient compartment (the distribution key); the full
    # membership is in resource_compartment.
    sa.Column("patient_id", RID, nullable=True),
    sa.Column("key_version", sa.Integer, nullable=False),
    # AES-256-GCM sealed JSON; NULL once deleted.
    sa.Column("body", sa.LargeBinary, nullable=True),
    sa.Index(None, "tenant_id", "resource_type", "last_updated"),
    sa.Index(None, "tenant_id", "patient_id"),
)

resource_history = sa.Table(
    "resource_history",
    metadata,
    sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", TENANT, nullable=False),
    sa.Column("resource_type", RTYPE, nullable=False),
    sa.Column("id", RID, nullable=False),
    sa.Column("version_id", sa.Integer, nullable=False),
    sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("patient_id", RID, nullable=True),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=True),
    sa.UniqueConstraint("tenant_id", "resource_type", "id", "version_id"),
    sa.Index(None, "tenant_id", "resource_type", "seq"),
    sa.Index(None, "tenant_id", "last_updated"),
)

resource_compartment = sa.Table(
    "resource_compartment",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("patient_id", RID, primary_key=True),
    sa.Column("resource_type", RTYPE, primary_key=True),
    sa.Column("resource_id", RID, primary_key=True),
    sa.Index(None, "tenant_id", "resource_type", "resource_id"),
)

# Wrapped per-tenant data keys (envelope encryption). The master key never touches the
# database; a row is useless without it.
tenant_key = sa.Table(
    "tenant_key",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("master_key_id", sa.String(32), nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)

# Search result snapshots for paging (search.html#3.1.1.6: paging links stay valid while
# resources change). Holds ids only, never content; expires after an hour.
search_snapshot = sa.Table(
    "search_snapshot",
    metadata,
    sa.Column("tenant_id", TENANT, primary_key=True),
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("resource_type", RTYPE, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    # Matching ids in result order, comma-separated (FHIR ids never contain commas).
    sa.Column("ids", sa.Text, nullable=False),
    sa.Index(None, "created_at"),
)
