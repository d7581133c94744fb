"""The one policy decision point (SECURITY B1-B5, B7-B9, C1): deny by default.

An :class:`AccessGuard` is built per request from the verified principal and the territory
the request addresses, and handed to the resource store, which asks it about every resource
before a body leaves or a version is written. It answers three questions:

* may this caller use interaction ``letter`` (SMART v2 ``c r u d s``) on this type at all:
  the role x permission matrix (:mod:`carechart.access.matrix`) intersected with the
  token's scopes (B5, B7);
* which patients' data may it touch (:class:`Reach`): every patient of the territory, a
  clinician's care relationships plus live break-glass grants (B2, B9), or one patient (a
  patient user's own record, a SMART launch context);
* as a SQL condition, so that searches count and page over permitted rows only (B3).

Everything it admitted or refused is kept as audit records (C1), which the unit of work
writes in its own transaction (C5); refusals are written even when the request fails.
Any error inside a decision propagates and fails the request: an error never means allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from carechart.access import repository
from carechart.access.matrix import (
    BREAK_GLASS_PURPOSE,
    CARE_TEAM_ROLES,
    OWN_COMPARTMENT_ROLES,
    PURPOSE_OF_USE,
    category_of,
    role_letters,
)
from carechart.access.scopes import ResourceScope, letters_for, parse_scopes
from carechart.audit.chain import AuditRecord
from carechart.auth.principal import ClientInfo, Principal, Role
from carechart.db.schema import resource
from carechart.fhir.definitions import load_definitions

# Actions whose results are audited once per patient rather than once per resource (C1).
_PER_PATIENT = frozenset({"search", "history", "export"})


@dataclass(frozen=True, slots=True)
class Reach:
    """The patients whose data an interaction may touch: all of the territory's, or a set.
    ``unlinked``: whether compartment resources that name no patient are included."""

    everyone: bool
    patients: frozenset[str] = frozenset()
    unlinked: bool = True

    def admits(self, patient_id: str | None) -> bool:
        if patient_id is None:
            return self.unlinked
        return self.everyone or patient_id in self.patients

    def narrowed_to(self, patient_id: str | None) -> Reach:
        """This reach restricted to one patient (a patient-level SMART scope)."""
        if patient_id is None or not self.admits(patient_id):
            return Reach(everyone=False, unlinked=False)
        return Reach(everyone=False, patients=frozenset({patient_id}), unlinked=False)


NOBODY = Reach(everyone=False, unlinked=False)


@dataclass
class _Access:
    action: str
    resource_type: str | None
    resource_id: str | None
    patient_id: str | None
    outcome: str


@dataclass
class AccessGuard:
    principal: Principal
    tenant: str
    client: ClientInfo = field(default_factory=ClientInfo)
    now: datetime | None = None
    _scopes: tuple[ResourceScope, ...] = ()
    _care: frozenset[str] | None = None
    _glass: frozenset[str] = frozenset()
    _log: list[_Access] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._scopes = parse_scopes(self.principal.scopes)

    # --- relationships ------------------------------------------------------------------

    def bind(self, conn: Connection) -> None:
        """Load what the decisions need from the database, once per request (the store calls
        this when it opens). Clinicians' care relationships and break-glass grants are read
        in the request's own transaction."""
        if self._care is not None or self.principal.role not in CARE_TEAM_ROLES:
            return
        care: set[str] = set()
        if self.principal.practitioner_id is not None:
            care = repository.care_relationship_patients(
                conn, self.tenant, self.principal.practitioner_id
            )
        glass: set[str] = set()
        if self.principal.user_id is not None and self.now is not None:
            glass = repository.active_grant_patients(
                conn, self.tenant, self.principal.user_id, self.now
            )
        self._care = frozenset(care)
        self._glass = frozenset(glass - care)

    def _base_reach(self) -> Reach:
        role = self.principal.role
        if role in OWN_COMPARTMENT_ROLES:
            own = self.principal.patient_id
            return NOBODY if own is None else Reach(False, frozenset({own}), unlinked=False)
        if role in CARE_TEAM_ROLES:
            if self._care is None:
                raise RuntimeError("the access guard was used before it was bound")
            return Reach(False, self._care | self._glass, unlinked=True)
        return Reach(everyone=True)

    # --- decisions ----------------------------------------------------------------------

    def letters(self, resource_type: str) -> tuple[str, str]:
        """(letters at the caller's full reach, letters only within the patient context)."""
        allowed = role_letters(self.principal.role, resource_type)
        if self.principal.role is Role.system:
            broad = letters_for(self._scopes, resource_type, ("system",))
        else:
            broad = letters_for(self._scopes, resource_type, ("user",))
        narrow = letters_for(self._scopes, resource_type, ("patient",))
        return (
            "".join(c for c in broad if c in allowed),
            "".join(c for c in narrow if c in allowed),
        )

    def reach(self, resource_type: str, letter: str) -> Reach | None:
        """The patients ``letter`` on ``resource_type`` may touch; None when not at all."""
        broad, narrow = self.letters(resource_type)
        if letter in broad:
            return self._base_reach()
        if letter in narrow:
            return self._base_reach().narrowed_to(self.principal.patient_id)
        return None

    def allows(self, resource_type: str, letter: str) -> bool:
        return self.reach(resource_type, letter) is not None

    def admits(
        self, resource_type: str, patient_id: str | None, letter: str, *, resource_id: str = ""
    ) -> bool:
        """Whether one resource (of ``patient_id``'s compartment) may be touched."""
        reach = self.reach(resource_type, letter)
        if reach is None:
            return False
        if not is_patient_data(resource_type):
            return True
        if resource_type == "Patient" and letter == "c":
            # A new Patient has no record yet to protect; the create letter suffices.
            return True
        return reach.admits(patient_id)

    def search_condition(
        self, resource_type: str, column: Any = resource.c.patient_id
    ) -> ColumnElement[bool] | None:
        """The SQL restriction of a search over ``resource_type`` (``column``: the
        ``patient_id`` of the rows filtered), or None when the caller's reach is the whole
        territory. Callers check the ``s`` letter first (:meth:`allows`)."""
        reach = self.reach(resource_type, "s") or NOBODY
        if not is_patient_data(resource_type) or reach.everyone:
            return None
        conditions: list[ColumnElement[bool]] = []
        if reach.patients:
            conditions.append(column.in_(sorted(reach.patients)))
        if reach.unlinked and resource_type != "Patient":
            conditions.append(column.is_(None))
        return sa.or_(*conditions) if conditions else sa.false()

    # --- the audit trail ----------------------------------------------------------------

    def record(
        self,
        action: str,
        resource_type: str | None,
        resource_id: str | None,
        patient_id: str | None,
        outcome: str = "success",
    ) -> None:
        self._log.append(_Access(action, resource_type, resource_id, patient_id, outcome))

    def purpose_of_use(self, patient_id: str | None) -> str:
        if patient_id is not None and patient_id in self._glass:
            return BREAK_GLASS_PURPOSE
        return PURPOSE_OF_USE[self.principal.role]

    def _record(self, access: _Access) -> AuditRecord:
        return AuditRecord(
            action=access.action,
            outcome=access.outcome,
            user_id=self.principal.user_id,
            client_id=self.principal.client_id,
            role=self.principal.role.value,
            patient_id=access.patient_id,
            resource_type=access.resource_type,
            resource_id=access.resource_id,
            data_category=category_of(access.resource_type).value if access.resource_type else None,
            source_ip=self.client.source_ip,
            user_agent=self.client.user_agent,
            purpose_of_use=self.purpose_of_use(access.patient_id),
            correlation_id=self.client.correlation_id,
        )

    def take_records(self, *, outcomes: Iterable[str] | None = None) -> list[AuditRecord]:
        """The audit records of what was logged so far (then forgotten): one per resource
        read or written, one per patient (and type) for searches, history and exports."""
        wanted = None if outcomes is None else set(outcomes)
        kept: list[_Access] = []
        records: list[AuditRecord] = []
        seen: set[tuple[str | None, ...]] = set()
        for access in self._log:
            if wanted is not None and access.outcome not in wanted:
                kept.append(access)
                continue
            resource_id = None if access.action in _PER_PATIENT else access.resource_id
            key = (
                access.action,
                access.outcome,
                access.resource_type,
                resource_id,
                access.patient_id,
            )
            if key in seen:
                continue
            seen.add(key)
            records.append(
                self._record(
                    _Access(
                        access.action,
                        access.resource_type,
                        resource_id,
                        access.patient_id,
                        access.outcome,
                    )
                )
            )
        self._log = kept
        return records


def is_patient_data(resource_type: str) -> bool:
    """Types whose rows belong to a patient's compartment (and Patient itself)."""
    return resource_type in load_definitions().patient_compartment
