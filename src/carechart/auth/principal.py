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


# Roles whose users are Practitioners: care relationships name them (SECURITY B2).
CLINICIAN_ROLES = frozenset({Role.physician, Role.nurse})

# Scopes of first-party sessions (the native login). A full session carries the user's own
# rights, which the policy point intersects with the role (SECURITY B7); the two restricted
# scopes allow nothing but the step the account still owes.
FULL_USER_SCOPE = "user/*.cruds"
FULL_PATIENT_SCOPE = "patient/*.cruds"
CHANGE_PASSWORD_SCOPE = "auth:change-password"  # noqa: S105 - a scope name, not a secret
MFA_ENROLL_SCOPE = "auth:mfa-enroll"
RESTRICTED_SCOPES = frozenset({CHANGE_PASSWORD_SCOPE, MFA_ENROLL_SCOPE})


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a request comes from, for the audit record (C1)."""

    source_ip: str | None = None
    user_agent: str | None = None
    correlation_id: str | None = None
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, as verified on this request: a user (token, live session,
    account) or a registered client acting for itself (a backend service: ``user_id`` and
    ``session_id`` are None, ``client_id`` is set).

    ``patient_id`` is the patient context: a patient user's own record, or the patient a
    SMART app was launched for. ``practitioner_id`` is the Practitioner a clinician is."""

    user_id: str | None
    tenant: str
    role: Role
    patient_id: str | None
    territories: tuple[str, ...]
    scopes: frozenset[str]
    session_id: str | None
    mfa_passed: bool
    practitioner_id: str | None = None
    client_id: str | None = None

    @property
    def subject(self) -> str:
        """The rate-limit and log key of the caller: never a name, only an opaque id."""
        return f"user:{self.user_id}" if self.user_id is not None else f"client:{self.client_id}"
