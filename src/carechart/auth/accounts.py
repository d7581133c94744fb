"""The ``user_account`` repository: the only SQL on user accounts (SECURITY A1, A3).

Usernames are found by blind index: HMAC-SHA256 of the canonical username
(:func:`~carechart.auth.passwords.canonical_username`) under a per-tenant derived key. The
e-mail address and full name are sealed together and bound to tenant and account id, so a
dump shows neither, and a profile copied onto another row does not open.

The tenant's data key must exist before a unit of work opens (``KeyRing.active``): it is
created in its own transaction, which SQLite cannot nest inside another writer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from carechart.auth.errors import UsernameTaken
from carechart.auth.principal import Role
from carechart.crypto.aead import open_sealed, seal
from carechart.crypto.keys import KeyRing
from carechart.db.auth_schema import user_account

USERNAME_KEY_PURPOSE = "user-account-username"
PROFILE_KEY_PURPOSE = "user-account-profile"


@dataclass(frozen=True, slots=True)
class UserAccount:
    id: str
    tenant: str
    email: str
    full_name: str
    role: Role
    password_hash: str | None
    must_change_password: bool
    patient_id: str | None
    territories: tuple[str, ...]
    active: bool
    created_at: datetime
    practitioner_id: str | None = None


def username_index(keyring: KeyRing, tenant: str, canonical: str) -> str:
    key = keyring.derived(tenant, USERNAME_KEY_PURPOSE)
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def _profile_ad(tenant: str, user_id: str) -> bytes:
    return f"user-account-profile\x1f{tenant}\x1f{user_id}".encode()


def _from_row(keyring: KeyRing, row: RowMapping) -> UserAccount:
    tenant, user_id = str(row["tenant_id"]), str(row["id"])
    profile = json.loads(
        open_sealed(
            keyring.derived(tenant, PROFILE_KEY_PURPOSE),
            row["sealed_profile"],
            _profile_ad(tenant, user_id),
        )
    )
    territories: Any = row["territories"]
    return UserAccount(
        id=user_id,
        tenant=tenant,
        email=str(profile["email"]),
        full_name=str(profile["full_name"]),
        role=Role(row["role"]),
        password_hash=row["password_hash"],
        must_change_password=bool(row["must_change_password"]),
        patient_id=row["patient_id"],
        territories=tuple(str(t) for t in territories or ()),
        active=bool(row["active"]),
        created_at=row["created_at"],
        practitioner_id=row["practitioner_id"],
    )


def create(
    conn: Connection,
    keyring: KeyRing,
    *,
    tenant: str,
    canonical_username: str,
    email: str,
    full_name: str,
    role: Role,
    password_hash: str | None,
    must_change_password: bool,
    patient_id: str | None,
    territories: tuple[str, ...],
    now: datetime,
    practitioner_id: str | None = None,
) -> UserAccount:
    """Insert an account; :class:`UsernameTaken` when the canonical username is in use."""
    user_id = uuid.uuid4().hex
    profile = json.dumps({"email": email, "full_name": full_name}).encode("utf-8")
    values = {
        "tenant_id": tenant,
        "id": user_id,
        "username_index": username_index(keyring, tenant, canonical_username),
        "sealed_profile": seal(
            keyring.derived(tenant, PROFILE_KEY_PURPOSE), profile, _profile_ad(tenant, user_id)
        ),
        "role": role.value,
        "password_hash": password_hash,
        "must_change_password": must_change_password,
        "patient_id": patient_id,
        "practitioner_id": practitioner_id,
        "territories": list(territories),
        "active": True,
        "created_at": now,
        "updated_at": now,
        "password_changed_at": now if password_hash is not None else None,
    }
    try:
        # A savepoint, so a collision leaves the caller's transaction usable (PostgreSQL
        # aborts the whole transaction on a failed statement otherwise).
        with conn.begin_nested():
            conn.execute(user_account.insert().values(**values))
    except IntegrityError:
        raise UsernameTaken() from None
    return UserAccount(
        id=user_id,
        tenant=tenant,
        email=email,
        full_name=full_name,
        role=role,
        password_hash=password_hash,
        must_change_password=must_change_password,
        patient_id=patient_id,
        territories=territories,
        active=True,
        created_at=now,
        practitioner_id=practitioner_id,
    )


def by_username(
    conn: Connection, keyring: KeyRing, *, tenant: str, canonical_username: str
) -> UserAccount | None:
    t = user_account
    row = (
        conn.execute(
            sa.select(t).where(
                t.c.tenant_id == tenant,
                t.c.username_index == username_index(keyring, tenant, canonical_username),
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _from_row(keyring, row)


def by_id(conn: Connection, keyring: KeyRing, *, tenant: str, user_id: str) -> UserAccount | None:
    t = user_account
    row = (
        conn.execute(sa.select(t).where(t.c.tenant_id == tenant, t.c.id == user_id))
        .mappings()
        .first()
    )
    return None if row is None else _from_row(keyring, row)


def username_in_use(
    conn: Connection, keyring: KeyRing, *, tenant: str, canonical_username: str
) -> bool:
    t = user_account
    return (
        conn.execute(
            sa.select(sa.literal(1)).where(
                t.c.tenant_id == tenant,
                t.c.username_index == username_index(keyring, tenant, canonical_username),
            )
        ).first()
        is not None
    )


def set_password(
    conn: Connection,
    *,
    tenant: str,
    user_id: str,
    password_hash: str,
    must_change_password: bool,
    now: datetime,
) -> None:
    t = user_account
    conn.execute(
        t.update()
        .where(t.c.tenant_id == tenant, t.c.id == user_id)
        .values(
            password_hash=password_hash,
            must_change_password=must_change_password,
            password_changed_at=now,
            updated_at=now,
        )
    )


def replace_password_hash(conn: Connection, *, tenant: str, user_id: str, new_hash: str) -> None:
    """Upgrade a hash made with older parameters, after a successful login."""
    t = user_account
    conn.execute(
        t.update().where(t.c.tenant_id == tenant, t.c.id == user_id).values(password_hash=new_hash)
    )
