"""The SQL of access decisions: care relationships and break-glass grants (SECURITY B2, B9)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from carechart.crypto.aead import open_sealed, seal
from carechart.crypto.keys import KeyRing
from carechart.db.auth_schema import as_utc, break_glass_grant
from carechart.db.schema import resource
from carechart.db.search_schema import search_reference

# The references that put a practitioner in a patient's care, as (resource type, search
# parameter code) pairs of the R4 search parameter registry: CareTeam.participant.member,
# Encounter.participant.individual, Appointment.participant.actor and
# Patient.generalPractitioner.
CARE_REFERENCES: tuple[tuple[str, str], ...] = (
    ("CareTeam", "participant"),
    ("Encounter", "participant"),
    ("Encounter", "practitioner"),
    ("Appointment", "actor"),
    ("Appointment", "practitioner"),
    ("Patient", "general-practitioner"),
)
REASON_KEY_PURPOSE = "break-glass-reason"


def care_relationship_patients(conn: Connection, tenant: str, practitioner_id: str) -> set[str]:
    """Patients in a care relationship with the practitioner: named on a current CareTeam,
    Encounter or Appointment of theirs, or as their general practitioner."""
    ref, r = search_reference.c, resource.c
    query = (
        sa.select(r.patient_id)
        .distinct()
        .select_from(
            search_reference.join(
                resource,
                sa.and_(
                    r.tenant_id == ref.tenant_id,
                    r.resource_type == ref.resource_type,
                    r.id == ref.resource_id,
                ),
            )
        )
        .where(
            ref.tenant_id == tenant,
            ref.target_type == "Practitioner",
            ref.target_id == practitioner_id,
            sa.or_(
                *(
                    sa.and_(ref.resource_type == rtype, ref.code == code)
                    for rtype, code in CARE_REFERENCES
                )
            ),
            r.deleted.is_(False),
            r.patient_id.is_not(None),
        )
    )
    return {str(pid) for pid in conn.execute(query).scalars()}


@dataclass(frozen=True, slots=True)
class BreakGlassGrant:
    id: str
    user_id: str
    patient_id: str
    reason: str
    created_at: datetime
    expires_at: datetime


def _reason_ad(tenant: str, grant_id: str) -> bytes:
    return f"break-glass-reason\x1f{tenant}\x1f{grant_id}".encode()


def open_grant(
    conn: Connection,
    keyring: KeyRing,
    *,
    tenant: str,
    user_id: str,
    patient_id: str,
    reason: str,
    now: datetime,
    expires_at: datetime,
) -> BreakGlassGrant:
    grant_id = uuid.uuid4().hex
    conn.execute(
        break_glass_grant.insert().values(
            tenant_id=tenant,
            id=grant_id,
            user_id=user_id,
            patient_id=patient_id,
            sealed_reason=seal(
                keyring.derived(tenant, REASON_KEY_PURPOSE),
                reason.encode("utf-8"),
                _reason_ad(tenant, grant_id),
            ),
            created_at=now,
            expires_at=expires_at,
        )
    )
    return BreakGlassGrant(grant_id, user_id, patient_id, reason, now, expires_at)


def active_grant_patients(conn: Connection, tenant: str, user_id: str, now: datetime) -> set[str]:
    g = break_glass_grant.c
    query = sa.select(g.patient_id).where(
        g.tenant_id == tenant, g.user_id == user_id, g.expires_at > now
    )
    return {str(pid) for pid in conn.execute(query).scalars()}


def list_grants(
    conn: Connection,
    keyring: KeyRing,
    *,
    tenant: str,
    user_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[BreakGlassGrant]:
    """Grants newest first, for review (B9) or for the user's own list."""
    g = break_glass_grant.c
    conditions = [g.tenant_id == tenant]
    if user_id is not None:
        conditions.append(g.user_id == user_id)
    if since is not None:
        conditions.append(g.created_at >= since)
    rows = conn.execute(
        sa.select(break_glass_grant).where(*conditions).order_by(g.created_at.desc()).limit(limit)
    ).all()
    key = keyring.derived(tenant, REASON_KEY_PURPOSE)
    return [
        BreakGlassGrant(
            id=row.id,
            user_id=row.user_id,
            patient_id=row.patient_id,
            reason=open_sealed(key, row.sealed_reason, _reason_ad(tenant, row.id)).decode(),
            created_at=as_utc(row.created_at),
            expires_at=as_utc(row.expires_at),
        )
        for row in rows
    ]
