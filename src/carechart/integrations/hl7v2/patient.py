"""PID to FHIR Patient (HL7 v2-to-FHIR IG, "Segment PID to Patient Map").

https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-pid-to-patient.html
PID-3 (and the v2.3 PID-2/PID-4) identifiers with assigning authority, PID-5 names,
PID-7 birth date, PID-8 administrative sex (table 0001 to AdministrativeGender).

Matching: a patient is found again by its medical record number and the authority that
assigned it (the PID-3 repetition whose identifier type, table 0203, is MR; otherwise the
first), never by name or birth date. Identifiers whose authority has no universal id are
scoped to the sending facility (``datatypes.local_system``).
"""

from __future__ import annotations

from carechart.integrations.hl7v2.ack import AckError
from carechart.integrations.hl7v2.datatypes import (
    JSON,
    fhir_date,
    human_name,
    identifier,
    token_query,
)
from carechart.integrations.hl7v2.errors import TABLE_VALUE_NOT_FOUND, ErrorLocation
from carechart.integrations.hl7v2.parser import Message, Segment

# HL7 table 0001 -> http://hl7.org/fhir/R4/valueset-administrative-gender.html
# (v2-to-FHIR ConceptMap "table-0001-to-administrative-gender").
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}

# Identifier types (table 0203) that name a medical record number, best first. "MRN" is not
# in the table but several vendors send it.
MATCH_TYPES = ("MR", "MRN", "PI", "PT")


def sender_scope(message: Message) -> str:
    """The sending facility (MSH-4 universal id, else its namespace, else MSH-3), which
    scopes identifiers whose assigning authority is local to the interface."""
    facility = message.sending_facility
    application = message.sending_application
    return (
        facility.universal_id
        or facility.namespace_id
        or application.universal_id
        or application.namespace_id
        or "unknown"
    )


def _type_code(ident: JSON) -> str:
    codings = ident.get("type", {}).get("coding", [])
    return str(codings[0].get("code", "")).upper() if codings else ""


def match_identifier(identifiers: list[JSON]) -> JSON | None:
    """The identifier a patient is matched on: the first MR-typed one, else the first."""
    for wanted in MATCH_TYPES:
        for ident in identifiers:
            if _type_code(ident) == wanted:
                return ident
    return identifiers[0] if identifiers else None


def patient_from_pid(
    pid: Segment, warnings: list[AckError], *, scope: str | None = None
) -> tuple[JSON, str | None]:
    """The Patient and a search query on its matching identifier (None without one)."""
    patient: JSON = {"resourceType": "Patient"}
    identifiers: list[JSON] = []
    for field in (3, 2, 4):
        for rep in pid.field(field):
            ident = identifier(rep, scope=scope)
            if ident is not None and ident not in identifiers:
                identifiers.append(ident)
    if identifiers:
        patient["identifier"] = identifiers
    names = [n for n in (human_name(rep) for rep in pid.field(5)) if n is not None]
    if names:
        patient["name"] = names
    birth = fhir_date(pid.get(7), pid, 7)
    if birth:
        patient["birthDate"] = birth
    sex = pid.get(8)
    if sex:
        gender = GENDER.get(sex.upper())
        if gender is None:
            warnings.append(
                AckError(
                    TABLE_VALUE_NOT_FOUND,
                    "PID-8 administrative sex is not in table 0001; gender left out",
                    ErrorLocation("PID", pid.sequence, 8),
                    severity="W",
                )
            )
        else:
            patient["gender"] = gender
    first = match_identifier(identifiers)
    query = token_query("identifier", first) if first is not None else None
    return patient, query
