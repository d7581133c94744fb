"""PID to FHIR Patient (HL7 v2-to-FHIR IG, "Segment PID to Patient Map").

https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-segment-pid-to-patient.html
PID-3 (and the v2.3 PID-2/PID-4) identifiers with assigning authority, PID-5 names,
PID-7 birth date, PID-8 administrative sex (table 0001 to AdministrativeGender).
"""

from __future__ import annotations

from carechart.integrations.hl7v2.ack import AckError
from carechart.integrations.hl7v2.datatypes import JSON, fhir_date, human_name, identifier
from carechart.integrations.hl7v2.errors import TABLE_VALUE_NOT_FOUND, ErrorLocation
from carechart.integrations.hl7v2.parser import Segment

# HL7 table 0001 -> http://hl7.org/fhir/R4/valueset-administrative-gender.html
# (v2-to-FHIR ConceptMap "table-0001-to-administrative-gender").
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}


def patient_from_pid(pid: Segment, warnings: list[AckError]) -> tuple[JSON, str | None]:
    """The Patient and a conditional-create query on its first identifier."""
    patient: JSON = {"resourceType": "Patient"}
    identifiers: list[JSON] = []
    for field in (3, 2, 4):
        for rep in pid.field(field):
            ident = identifier(rep)
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
    query = None
    first = identifiers[0] if identifiers else None
    if first is not None:
        system = first.get("system")
        query = (
            f"identifier={system}|{first['value']}" if system else f"identifier={first['value']}"
        )
    return patient, query
