"""ADT^A01/A03/A04/A08/A31 to FHIR Patient (and Encounter where the event has one).

HL7 v2-to-FHIR IG message maps "ADT_A01 to Bundle" and "Segment PV1 to Encounter"
(https://build.fhir.org/ig/HL7/v2-to-fhir/). Events per HL7 v2.5.1 chapter 3: A01 admit,
A03 discharge, A04 register, A08 update patient information, A31 update person
information (no visit, so no Encounter).

ADT is the registration system speaking, so its Patient is a conditional update on the
matching identifier (MRN and assigning authority): a second ADT for the same MRN updates
the patient instead of creating another. The service merges it into the stored record
(fields the message does not carry are kept). The Encounter is likewise an update of the
visit named by PV1-19 (visit number), so A01 then A03 is one Encounter, admitted then
finished.
"""

from __future__ import annotations

from collections.abc import Callable

from carechart.integrations.hl7v2.ack import AckError
from carechart.integrations.hl7v2.bundle import MappingResult, TransactionBuilder, new_uuid
from carechart.integrations.hl7v2.datatypes import JSON, fhir_datetime, identifier, token_query
from carechart.integrations.hl7v2.errors import REQUIRED_FIELD_MISSING, Hl7DataError
from carechart.integrations.hl7v2.parser import Message, Segment
from carechart.integrations.hl7v2.patient import patient_from_pid, sender_scope

SUPPORTED_EVENTS = frozenset({"A01", "A03", "A04", "A08", "A31"})
EVENT_STATUS = {"A01": "in-progress", "A03": "finished", "A04": "arrived", "A08": "in-progress"}
# PV1-2 patient class (table 0004) -> Encounter.class (v3 ActCode), v2-to-FHIR "table-0004".
PATIENT_CLASS = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("AMB", "ambulatory"),
}


def _encounter(pv1: Segment, event: str, subject: str, scope: str) -> tuple[JSON, str | None]:
    """The Encounter and a query on its visit number (None when PV1-19 is empty)."""
    code, display = PATIENT_CLASS.get(pv1.get(2), ("AMB", "ambulatory"))
    encounter: JSON = {
        "resourceType": "Encounter",
        "status": EVENT_STATUS.get(event, "unknown"),
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": code,
            "display": display,
        },
        "subject": {"reference": subject},
    }
    visit = pv1.first(19)
    visit_id = identifier(visit, scope=scope) if visit is not None else None
    query = None
    if visit_id is not None:
        encounter["identifier"] = [visit_id]
        query = token_query("identifier", visit_id)
    start = fhir_datetime(pv1.get(44), pv1, 44)
    end = fhir_datetime(pv1.get(45), pv1, 45)
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        encounter["period"] = period
    return encounter, query


def map_adt(message: Message, *, id_factory: Callable[[], str] = new_uuid) -> MappingResult:
    pid = message.segment("PID")
    if pid is None:
        raise Hl7DataError("ADT message has no PID segment", "PID", None,
                           hl7_code=REQUIRED_FIELD_MISSING)  # fmt: skip
    builder = TransactionBuilder(id_factory)
    warnings: list[AckError] = []
    scope = sender_scope(message)
    patient, query = patient_from_pid(pid, warnings, scope=scope)
    subject = builder.put(patient, query) if query else builder.add(patient)
    pv1 = message.segment("PV1")
    event = message.trigger_event
    if pv1 is not None and event in EVENT_STATUS:
        encounter, visit_query = _encounter(pv1, event, subject, scope)
        if visit_query:
            builder.put(encounter, visit_query)
        else:
            builder.add(encounter)
    return MappingResult(builder.bundle(), warnings)
