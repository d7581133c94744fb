"""The demo's questions to the database: is this tenant still empty?"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.db.auth_schema import user_account
from carechart.db.schema import resource


def has_accounts(conn: Connection, tenant: str) -> bool:
    """Whether the identity tenant holds any user account (active or not)."""
    query = sa.select(sa.literal(1)).where(user_account.c.tenant_id == tenant).limit(1)
    return conn.execute(query).first() is not None


def has_patients(conn: Connection, tenant: str) -> bool:
    """Whether the tenant has ever held a Patient (a deleted one counts: it was real data)."""
    r = resource.c
    query = (
        sa.select(sa.literal(1)).where(r.tenant_id == tenant, r.resource_type == "Patient").limit(1)
    )
    return conn.execute(query).first() is not None
