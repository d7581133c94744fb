"""Receive one HL7 v2 message: parse, check the header, map to FHIR, build the ACK.

This is what an MLLP listener's ``handle`` calls; storing the Bundle is the caller's
job (the service layer), so this module stays pure. Acknowledgement rules, HL7 v2.5.1
chapter 2, section 2.9.2 (original mode):
- AR (reject): the message cannot be taken at all: unparseable MSH, missing MSH-9 or
  MSH-10, unsupported message type, event, version or processing id;
- AE (error): the message was understood but its content is in error (segment order,
  data type, required field);
- AA: accepted, possibly with ERR warnings (ERR-4 = W).
An incoming ACK is an answer, not a message to acknowledge (section 2.9.2): it gets none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from carechart.integrations.hl7v2.ack import AckCode, AckError, OriginalHeader, build_ack
from carechart.integrations.hl7v2.adt import SUPPORTED_EVENTS as ADT_EVENTS
from carechart.integrations.hl7v2.adt import map_adt
from carechart.integrations.hl7v2.bundle import JSON, MappingResult, new_uuid
from carechart.integrations.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION_ID,
    ErrorLocation,
    Hl7DataError,
    Hl7Error,
    Hl7ParseError,
)
from carechart.integrations.hl7v2.orm import map_order
from carechart.integrations.hl7v2.oru import map_oru_r01
from carechart.integrations.hl7v2.parser import DEFAULT_MAX_BYTES, Message, parse_message
from carechart.labs.critical_limits import LabLimits

SUPPORTED_VERSIONS = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"}
)
PROCESSING_IDS = frozenset({"P", "D", "T"})
SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    "ORU": frozenset({"R01"}),
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
    "ADT": ADT_EVENTS,
}


@dataclass(slots=True)
class InboundResult:
    ack_code: AckCode | None
    ack: str | None
    message: Message | None = None
    bundle: JSON | None = None
    errors: list[AckError] = field(default_factory=list)

    @property
    def ack_bytes(self) -> bytes | None:
        return self.ack.encode("utf-8") if self.ack is not None else None


def header_problems(message: Message) -> list[AckError]:
    """Why the header makes the message impossible to take (each one means AR)."""
    problems: list[AckError] = []

    def problem(code: str, text: str, field_no: int) -> None:
        problems.append(AckError(code, text, ErrorLocation("MSH", 1, field_no)))

    if not message.message_type:
        problem(REQUIRED_FIELD_MISSING, "MSH-9 message type is required", 9)
    elif message.message_type not in SUPPORTED_TYPES and message.message_type != "ACK":
        problem(UNSUPPORTED_MESSAGE_TYPE, "message type is not supported", 9)
    elif message.message_type != "ACK" and (
        message.trigger_event not in SUPPORTED_TYPES[message.message_type]
    ):
        problem(UNSUPPORTED_EVENT_CODE, "trigger event is not supported", 9)
    if not message.control_id:
        problem(REQUIRED_FIELD_MISSING, "MSH-10 message control id is required", 10)
    if message.processing_id not in PROCESSING_IDS:
        problem(UNSUPPORTED_PROCESSING_ID, "MSH-11 processing id is not supported", 11)
    if message.version not in SUPPORTED_VERSIONS:
        problem(UNSUPPORTED_VERSION_ID, "MSH-12 version is not supported", 12)
    return problems


def _map(
    message: Message, limits: Mapping[str, LabLimits] | None, id_factory: Callable[[], str]
) -> MappingResult:
    kind = message.message_type
    if kind == "ORU":
        return map_oru_r01(message, limits=limits, id_factory=id_factory)
    if kind in ("ORM", "OML"):
        return map_order(message, limits=limits, id_factory=id_factory)
    return map_adt(message, id_factory=id_factory)


def receive(
    data: bytes | str,
    *,
    limits: Mapping[str, LabLimits] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    now: datetime | None = None,
    id_factory: Callable[[], str] = new_uuid,
) -> InboundResult:
    """Parse and map one message; always returns, with the ACK to send back."""
    try:
        message = parse_message(data, max_bytes=max_bytes)
    except Hl7ParseError as exc:
        # A broken MSH means we cannot even trust the header: reject. A broken body
        # segment after a sound MSH is a content error.
        code = AckCode.REJECT if exc.segment in (None, "MSH") else AckCode.ERROR
        errors = [AckError.from_exception(exc)]
        ack = build_ack(OriginalHeader.salvage(data), code, errors, now=now)
        return InboundResult(code, ack, errors=errors)
    if message.message_type == "ACK":
        return InboundResult(None, None, message)
    problems = header_problems(message)
    if problems:
        ack = build_ack(message, AckCode.REJECT, problems, now=now)
        return InboundResult(AckCode.REJECT, ack, message, errors=problems)
    try:
        result = _map(message, limits, id_factory)
    except Hl7DataError as exc:
        errors = [AckError.from_exception(exc)]
        ack = build_ack(message, AckCode.ERROR, errors, now=now)
        return InboundResult(AckCode.ERROR, ack, message, errors=errors)
    except Hl7Error as exc:  # pragma: no cover - mappers raise Hl7DataError only
        errors = [AckError.from_exception(exc)]
        ack = build_ack(message, AckCode.ERROR, errors, now=now)
        return InboundResult(AckCode.ERROR, ack, message, errors=errors)
    ack = build_ack(message, AckCode.ACCEPT, result.warnings, now=now)
    return InboundResult(AckCode.ACCEPT, ack, message, result.bundle, result.warnings)
