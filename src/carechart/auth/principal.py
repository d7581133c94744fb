"""Who is calling: roles and the authenticated principal handed to every protected route."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """The roles of the role x permission matrix (SECURITY B5)."""

    physician = "physician"
    nurse = "nurse"
    front_desk = "front_desk"
    lab_technician = "lab_technician"
    billing = "billing"
    admin = "admin"
    auditor = "auditor"
    patient = "patient"
    system = "system"


# Scopes of first-party sessions (the native login). A full session carries the user's own
# rights, which the policy point intersects with the role (SECURITY B7); the two restricted
# scopes allow nothing but the step the account still owes.
FULL_USER_SCOPE = "user/*.cruds"
FULL_PATIENT_SCOPE = "patient/*.cruds"
CHANGE_PASSWORD_SCOPE = "auth:change-password"  # noqa: S105 - a scope name, not a secret
MFA_ENROLL_SCOPE = "auth:mfa-enroll"
RESTRICTED_SCOPES = frozenset({CHANGE_PASSWORD_SCOPE, MFA_ENROLL_SCOPE})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, as verified on this request (token, live session, account)."""

    user_id: str
    tenant: str
    role: Role
    patient_id: str | None
    territories: tuple[str, ...]
    scopes: frozenset[str]
    session_id: str
    mfa_passed: bool
