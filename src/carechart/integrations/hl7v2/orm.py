"""ORM^O01 and OML^O21 (lab orders) to a FHIR R4 transaction Bundle.

HL7 v2-to-FHIR IG message maps "ORM_O01 to Bundle" and "OML_O21 to Bundle"
(https://build.fhir.org/ig/HL7/v2-to-fhir/): PID -> Patient; ORC + OBR -> ServiceRequest
(ORC-1 order control and ORC-5 order status -> status, OBR-4 code, placer/filler ids);
OBX in an order group are ask-at-order-entry answers -> Observation referenced from
ServiceRequest.supportingInfo; NTE -> ServiceRequest.note; SPM -> Specimen.
Structure: HL7 v2.5.1 chapter 4, sections 4.4.1 (ORM^O01) and 4.4.6 (OML^O21).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from carechart.integrations.hl7v2.ack import AckError
from carechart.integrations.hl7v2.bundle import MappingResult, TransactionBuilder, new_uuid
from carechart.integrations.hl7v2.datatypes import JSON, codeable_concept, person_display, require
from carechart.integrations.hl7v2.errors import SEGMENT_SEQUENCE_ERROR, Hl7DataError
from carechart.integrations.hl7v2.observation import observation_from_obx
from carechart.integrations.hl7v2.oru import _identifiers, _specimen, note_text
from carechart.integrations.hl7v2.parser import Message, Segment
from carechart.integrations.hl7v2.patient import patient_from_pid, sender_scope
from carechart.labs.critical_limits import LabLimits

# ORC-1 order control (table 0119) -> ServiceRequest.status, v2-to-FHIR "table-0119".
ORDER_CONTROL_STATUS = {
    "NW": "active",
    "OK": "active",
    "SC": "active",
    "XO": "active",
    "CA": "revoked",
    "OC": "revoked",
    "CR": "revoked",
    "DC": "revoked",
    "HD": "on-hold",
    "RP": "active",
}
# ORC-5 order status (table 0038) wins when present.
ORDER_STATUS = {
    "A": "active",
    "CA": "revoked",
    "CM": "completed",
    "DC": "revoked",
    "ER": "entered-in-error",
    "HD": "on-hold",
    "IP": "active",
    "SC": "active",
}


def _request(obr: Segment, orc: Segment | None, subject: str | None) -> JSON:
    require(obr, 4, "universal service identifier")
    status = "active"
    if orc is not None:
        status = ORDER_STATUS.get(orc.get(5), ORDER_CONTROL_STATUS.get(orc.get(1), "unknown"))
    request: JSON = {
        "resourceType": "ServiceRequest",
        "status": status,
        "intent": "order",
        "code": codeable_concept(obr.first(4)),
    }
    identifiers = _identifiers(obr) or (_identifiers(orc) if orc is not None else [])
    if identifiers:
        request["identifier"] = identifiers
    if subject:
        request["subject"] = {"reference": subject}
    requester = person_display(obr.first(16)) or (person_display(orc.first(12)) if orc else None)
    if requester:
        request["requester"] = {"display": requester}
    return request


def map_order(
    message: Message,
    *,
    limits: Mapping[str, LabLimits] | None = None,
    id_factory: Callable[[], str] = new_uuid,
) -> MappingResult:
    """Map ORM^O01 / OML^O21; raise ``Hl7DataError`` on bad content."""
    builder = TransactionBuilder(id_factory)
    scope = sender_scope(message)
    warnings: list[AckError] = []
    subject: str | None = None
    orc: Segment | None = None
    request: JSON | None = None
    note_target: JSON | None = None
    requests = 0
    for seg in message.segments[1:]:
        if seg.name == "PID":
            patient, query = patient_from_pid(seg, warnings, scope=scope)
            subject = builder.add(patient, if_none_exist=query)
        elif seg.name == "ORC":
            orc = seg
        elif seg.name == "OBR":
            request = _request(seg, orc, subject)
            builder.add(request)
            note_target = request
            requests += 1
        elif seg.name == "OBX" and request is not None:
            # Ask-at-order-entry answers: no lab range or flag applies.
            observation = observation_from_obx(seg, subject=subject, limits={}, category=None)
            ref = builder.add(observation)
            request.setdefault("supportingInfo", []).append({"reference": ref})
            note_target = observation
        elif seg.name == "NTE" and note_target is not None:
            text = note_text(seg)
            if text:
                note_target.setdefault("note", []).append({"text": text})
        elif seg.name == "SPM" and request is not None:
            ref = builder.add(_specimen(seg, subject))
            request.setdefault("specimen", []).append({"reference": ref})
    if requests == 0:
        raise Hl7DataError(
            "order message has no OBR segment", "OBR", None, hl7_code=SEGMENT_SEQUENCE_ERROR
        )
    return MappingResult(builder.bundle(), warnings)
