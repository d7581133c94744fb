"""The errors the HL7 v2 interface raises, each carrying what an ACK's ERR segment needs.

Codes come from HL7 table 0357 (message error condition codes, HL7 v2.5.1 chapter 2,
section 2.15.5 "ERR segment", ERR-3). Messages name the place and the problem, never the
offending value: values are PHI and errors end up in logs and ACKs.
"""

from __future__ import annotations

from dataclasses import dataclass

from carechart.errors import BadRequest

# HL7 table 0357: the subset this interface reports.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_INTERNAL_ERROR = "207"

ERROR_CODE_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class ErrorLocation:
    """ERR-2 (ERL): segment id, its 1-based sequence among segments of that name, field."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None


class Hl7Error(BadRequest):
    """Base of every error the HL7 v2 interface raises."""

    code = "HL7_ERROR"
    hl7_code: str = APPLICATION_INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        segment: str | None = None,
        field: int | None = None,
        *,
        sequence: int = 1,
        component: int | None = None,
        hl7_code: str | None = None,
    ) -> None:
        super().__init__(message, details={"segment": segment, "field": field})
        self.segment = segment
        self.field = field
        self.sequence = sequence
        self.component = component
        if hl7_code is not None:
            self.hl7_code = hl7_code

    @property
    def location(self) -> ErrorLocation | None:
        if self.segment is None:
            return None
        return ErrorLocation(self.segment, self.sequence, self.field, self.component)


class Hl7ParseError(Hl7Error):
    """The bytes are not a well-formed HL7 v2 message (framing, MSH, encoding, size)."""

    code = "HL7_PARSE_ERROR"
    hl7_code = SEGMENT_SEQUENCE_ERROR


class Hl7DataError(Hl7Error):
    """The message is well-formed but a field's content cannot be used (type, required)."""

    code = "HL7_DATA_ERROR"
    hl7_code = DATA_TYPE_ERROR


class Hl7UnsupportedError(Hl7Error):
    """The message type, event, version or processing id is not one this interface takes."""

    code = "HL7_UNSUPPORTED"
    hl7_code = UNSUPPORTED_MESSAGE_TYPE
