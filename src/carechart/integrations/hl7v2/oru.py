"""ORU^R01 (unsolicited observation result) to a FHIR R4 transaction Bundle.

Follows the HL7 v2-to-FHIR IG message map "ORU_R01 to Bundle"
(https://build.fhir.org/ig/HL7/v2-to-fhir/ConceptMap-message-oru-r01-to-bundle.html):
PID -> Patient; ORC/OBR -> ServiceRequest (what was ordered; OBR-level NTE -> its note)
and DiagnosticReport (OBR: code OBR-4, status OBR-25, effective OBR-7, issued OBR-22,
identifiers OBR-2 placer / OBR-3 filler, result -> its Observations); OBX -> Observation
(NTE after an OBX -> Observation.note); SPM -> Specimen. Message structure per HL7
v2.5.1 chapter 7, section 7.3.1 (PATIENT_RESULT / ORDER_OBSERVATION / OBSERVATION /
SPECIMEN groups), walked in order so each NTE and OBX attaches to its own parent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from carechart.integrations.hl7v2.ack import AckError
from carechart.integrations.hl7v2.bundle import MappingResult, TransactionBuilder, new_uuid
from carechart.integrations.hl7v2.datatypes import (
    JSON,
    codeable_concept,
    entity_identifier,
    fhir_datetime,
    person_display,
    require,
)
from carechart.integrations.hl7v2.errors import SEGMENT_SEQUENCE_ERROR, Hl7DataError
from carechart.integrations.hl7v2.observation import observation_from_obx
from carechart.integrations.hl7v2.parser import Message, Segment
from carechart.integrations.hl7v2.patient import patient_from_pid, sender_scope
from carechart.labs.critical_limits import LabLimits, load_critical_limits

# HL7 table 0123 -> DiagnosticReport.status (v2-to-FHIR ConceptMap "table-0123").
REPORT_STATUS = {
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "A": "partial",
    "P": "preliminary",
    "C": "corrected",
    "R": "partial",
    "F": "final",
    "X": "cancelled",
    "Y": "unknown",
    "Z": "unknown",
}


def _identifiers(obr: Segment) -> list[JSON]:
    out: list[JSON] = []
    for field, type_code in ((2, "PLAC"), (3, "FILL")):
        for rep in obr.field(field):
            ident = entity_identifier(rep)
            if ident is None:
                continue
            ident["type"] = {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": type_code}
                ]
            }
            out.append(ident)
    return out


def note_text(nte: Segment) -> str:
    """NTE-3 comment; repetitions are lines (v2.5.1 section 2.15.10)."""
    return "\n".join(rep.component(1) for rep in nte.field(3))


class _OrderGroup:
    """One ORDER_OBSERVATION group while it is being read."""

    def __init__(self, request: JSON, report: JSON, request_ref: str, report_ref: str) -> None:
        self.request = request
        self.report = report
        self.request_ref = request_ref
        self.report_ref = report_ref
        self.observations: list[JSON] = []
        self.specimens: list[str] = []


def _service_request(obr: Segment, orc: Segment | None, subject: str | None) -> JSON:
    require(obr, 4, "universal service identifier")
    request: JSON = {
        "resourceType": "ServiceRequest",
        "status": "completed",
        "intent": "order",
        "code": codeable_concept(obr.first(4)),
    }
    identifiers = _identifiers(obr)
    if not identifiers and orc is not None:
        identifiers = _identifiers(orc)
    if identifiers:
        request["identifier"] = identifiers
    if subject:
        request["subject"] = {"reference": subject}
    requester = person_display(obr.first(16)) or (person_display(orc.first(12)) if orc else None)
    if requester:
        request["requester"] = {"display": requester}
    return request


def _diagnostic_report(obr: Segment, subject: str | None, request_ref: str) -> JSON:
    report: JSON = {
        "resourceType": "DiagnosticReport",
        "status": REPORT_STATUS.get(obr.get(25).upper(), "unknown"),
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": codeable_concept(obr.first(4)),
        "basedOn": [{"reference": request_ref}],
    }
    identifiers = [i for i in _identifiers(obr) if i["type"]["coding"][0]["code"] == "FILL"]
    report["identifier"] = identifiers or _identifiers(obr)
    if not report["identifier"]:
        del report["identifier"]
    if subject:
        report["subject"] = {"reference": subject}
    effective = fhir_datetime(obr.get(7), obr, 7)
    if effective:
        report["effectiveDateTime"] = effective
    issued = fhir_datetime(obr.get(22), obr, 22)
    # FHIR ``issued`` is an instant (needs a time and zone); a date-only OBR-22 can't be one.
    if issued and "T" in issued:
        report["issued"] = issued
    return report


def _specimen(spm: Segment, subject: str | None) -> JSON:
    """SPM -> Specimen (v2-to-FHIR "Segment SPM to Specimen Map")."""
    specimen: JSON = {"resourceType": "Specimen"}
    identifiers: list[JSON] = []
    rep = spm.first(2)
    if rep is not None:
        # SPM-2 is EIP: placer EI in component 1, filler EI in component 2 (as subcomponents).
        for component, type_code in ((1, "PLAC"), (2, "FILL")):
            subs = rep.subcomponents(component)
            if subs and subs[0]:
                ident: JSON = {"value": subs[0]}
                if len(subs) > 2 and subs[2]:
                    universal = subs[2]
                    ident["system"] = (
                        f"urn:oid:{universal}" if universal[:1].isdigit() else universal
                    )
                ident["type"] = {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": type_code,
                        }
                    ]
                }
                identifiers.append(ident)
    if identifiers:
        specimen["identifier"] = identifiers
    kind = codeable_concept(spm.first(4))
    if kind:
        specimen["type"] = kind
    if subject:
        specimen["subject"] = {"reference": subject}
    collected = fhir_datetime(spm.get(17, 1), spm, 17)
    if collected:
        specimen["collection"] = {"collectedDateTime": collected}
    received = fhir_datetime(spm.get(18), spm, 18)
    if received and "T" in received:
        specimen["receivedTime"] = received
    conditions = [c for c in (codeable_concept(r) for r in spm.field(24)) if c]
    if conditions:
        specimen["condition"] = conditions
    return specimen


def map_oru_r01(
    message: Message,
    *,
    limits: Mapping[str, LabLimits] | None = None,
    id_factory: Callable[[], str] = new_uuid,
) -> MappingResult:
    """Map an ORU^R01 to a transaction Bundle; raise ``Hl7DataError`` on bad content."""
    table = load_critical_limits() if limits is None else limits
    builder = TransactionBuilder(id_factory)
    scope = sender_scope(message)
    warnings: list[AckError] = []
    subject: str | None = None
    orc: Segment | None = None
    group: _OrderGroup | None = None
    last: JSON | None = None  # resource the next NTE belongs to
    last_kind = ""
    groups: list[_OrderGroup] = []

    for seg in message.segments[1:]:
        name = seg.name
        if name == "PID":
            patient, query = patient_from_pid(seg, warnings, scope=scope)
            subject = builder.add(patient, if_none_exist=query)
            group, orc, last, last_kind = None, None, None, ""
        elif name == "ORC":
            orc = seg
        elif name == "OBR":
            request = _service_request(seg, orc, subject)
            request_ref = builder.add(request)
            report = _diagnostic_report(seg, subject, request_ref)
            report_ref = builder.add(report)
            group = _OrderGroup(request, report, request_ref, report_ref)
            groups.append(group)
            orc = None
            last, last_kind = request, "request"
        elif name == "OBX":
            if group is None:
                raise Hl7DataError(
                    "OBX outside an OBR group", "OBX", None, sequence=seg.sequence,
                    hl7_code=SEGMENT_SEQUENCE_ERROR,
                )  # fmt: skip
            observation = observation_from_obx(seg, subject=subject, limits=table)
            ref = builder.add(observation)
            group.observations.append(observation)
            group.report.setdefault("result", []).append({"reference": ref})
            last, last_kind = observation, "observation"
        elif name == "NTE":
            text = note_text(seg)
            if last is not None and text and last_kind in ("request", "observation"):
                last.setdefault("note", []).append({"text": text})
        elif name == "SPM":
            if group is None:
                raise Hl7DataError(
                    "SPM outside an OBR group", "SPM", None, sequence=seg.sequence,
                    hl7_code=SEGMENT_SEQUENCE_ERROR,
                )  # fmt: skip
            ref = builder.add(_specimen(seg, subject))
            group.specimens.append(ref)
            group.report.setdefault("specimen", []).append({"reference": ref})
            last, last_kind = None, "specimen"
    if not groups:
        raise Hl7DataError(
            "ORU^R01 has no OBR segment", "OBR", None, hl7_code=SEGMENT_SEQUENCE_ERROR
        )
    for g in groups:
        for observation in g.observations:
            if g.specimens:
                observation["specimen"] = {"reference": g.specimens[0]}
    return MappingResult(builder.bundle(), warnings)


def observations(result: MappingResult) -> list[dict[str, Any]]:
    return result.resources("Observation")
