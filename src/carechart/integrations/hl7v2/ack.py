"""General acknowledgement (ACK) builder, original acknowledgement mode.

Spec: HL7 v2.5.1 chapter 2, sections 2.9.2 (original mode: AA accept, AE error, AR
reject), 2.14.1 (ACK message: MSH, [SFT], MSA, [ERR]), 2.15.8 (MSA) and 2.15.5 (ERR).
- The ACK's MSH swaps sender and receiver of the original and echoes its processing id
  (MSH-11) and version (MSH-12), so the peer's parser reads our answer as its own dialect.
- MSA-2 is the original MSH-10 control id: the sender matches the answer to its message.
- v2.5 and later: ERR-2 location (ERL), ERR-3 code from table 0357, ERR-4 severity
  (table 0516), ERR-8 user message. v2.3/2.4: ERR-1 (ELD: segment^sequence^field^code)
  plus MSA-3 text and MSA-6 error condition, the fields those versions define.
ERR text never contains message values (PHI): only positions and the problem.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from carechart.integrations.hl7v2.errors import (
    ERROR_CODE_TEXT,
    ErrorLocation,
    Hl7Error,
)
from carechart.integrations.hl7v2.parser import Encoding, Message

DEFAULT_VERSION = "2.5.1"
OUR_APPLICATION = "CARECHART"


class AckCode(StrEnum):
    """HL7 table 0008, original mode."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment."""

    hl7_code: str
    message: str
    location: ErrorLocation | None = None
    severity: str = "E"  # table 0516: E error, W warning, I information, F fatal

    @classmethod
    def from_exception(cls, exc: Hl7Error) -> AckError:
        return cls(exc.hl7_code, exc.message, exc.location)


@dataclass(frozen=True, slots=True)
class OriginalHeader:
    """What an ACK needs from the original MSH, as unescaped component lists."""

    sending_application: tuple[str, ...] = ()
    sending_facility: tuple[str, ...] = ()
    receiving_application: tuple[str, ...] = ()
    receiving_facility: tuple[str, ...] = ()
    trigger_event: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = DEFAULT_VERSION

    @classmethod
    def from_message(cls, message: Message) -> OriginalHeader:
        msh = message.msh

        def comps(n: int) -> tuple[str, ...]:
            rep = msh.first(n)
            return tuple(rep.components()[:3]) if rep else ()

        return cls(
            sending_application=comps(3),
            sending_facility=comps(4),
            receiving_application=comps(5),
            receiving_facility=comps(6),
            trigger_event=message.trigger_event,
            control_id=message.control_id,
            processing_id=message.processing_id or "P",
            version=message.version or DEFAULT_VERSION,
        )

    @classmethod
    def salvage(cls, data: bytes | str) -> OriginalHeader:
        """Best effort from bytes the parser rejected: an AR still names what it rejects."""
        text = data.decode("latin-1") if isinstance(data, bytes | bytearray) else data
        start = text.find("MSH")
        if start < 0 or len(text) < start + 4:
            return cls()
        line = text[start:].replace("\n", "\r").split("\r", 1)[0]
        sep = line[3]
        parts = line.split(sep)
        msh2 = parts[1] if len(parts) > 1 else ""
        comp = msh2[0] if msh2 and not msh2[0].isalnum() else "^"

        def get(n: int) -> tuple[str, ...]:
            # parts[0] is "MSH" and parts[1] is MSH-2, so MSH-n sits at parts[n - 1].
            raw = parts[n - 1] if len(parts) >= n else ""
            return tuple(raw.split(comp)[:3]) if raw else ()

        def first(n: int, component: int = 0) -> str:
            values = get(n)
            return values[component] if len(values) > component else ""

        version = first(12)
        return cls(
            sending_application=get(3),
            sending_facility=get(4),
            receiving_application=get(5),
            receiving_facility=get(6),
            trigger_event=first(9, 1)[:3],
            control_id=first(10)[:199],
            processing_id=first(11)[:1] or "P",
            version=version if _version_tuple(version) else DEFAULT_VERSION,
        )


def _version_tuple(version: str) -> tuple[int, ...] | None:
    parts = version.split(".")
    if not all(p.isdigit() and len(p) < 3 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def uses_err_v25(version: str) -> bool:
    """ERR-2..ERR-12 exist from v2.5 on; earlier versions only have ERR-1."""
    parsed = _version_tuple(version)
    return parsed is None or parsed >= (2, 5)


def _hl7_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def build_ack(
    original: Message | OriginalHeader,
    code: AckCode,
    errors: Sequence[AckError] = (),
    *,
    now: datetime | None = None,
    control_id: str | None = None,
    application: str | None = None,
    facility: str | None = None,
) -> str:
    """The ACK for ``original`` as HL7 text with CR segment separators."""
    header = (
        original if isinstance(original, OriginalHeader) else OriginalHeader.from_message(original)
    )
    enc = Encoding()
    version = header.version
    new_version = uses_err_v25(version)

    def hd(values: tuple[str, ...]) -> str:
        return enc.component.join(enc.escape_text(v) for v in values).rstrip(enc.component)

    our_app = hd((application,)) if application else hd(header.receiving_application)
    our_fac = hd((facility,)) if facility else hd(header.receiving_facility)
    trigger = enc.escape_text(header.trigger_event)
    # ACK^<event>^ACK from v2.3.1 on (MSH-9.3 message structure); v2.3 has no MSH-9.3.
    msg_type = "ACK" if not trigger else f"ACK^{trigger}"
    if new_version or (_version_tuple(version) or (0,)) >= (2, 3, 1):
        msg_type += "^ACK" if trigger else "^^ACK"
    msh = [
        "MSH",
        enc.msh2,
        our_app or OUR_APPLICATION,
        our_fac,
        hd(header.sending_application),
        hd(header.sending_facility),
        _hl7_timestamp(now or datetime.now(UTC)),
        "",
        msg_type,
        enc.escape_text(control_id or uuid.uuid4().hex[:20]),
        enc.escape_text(header.processing_id),
        enc.escape_text(version),
    ]
    msa = ["MSA", code.value, enc.escape_text(header.control_id)]
    if errors and not new_version:
        first = errors[0]
        text = ERROR_CODE_TEXT.get(first.hl7_code, "")
        msa += [enc.escape_text(first.message)[:80], "", "", f"{first.hl7_code}^{text}^HL70357"]
    segments = [enc.field.join(msh), enc.field.join(msa)]
    for error in errors:
        segments.append(_err_segment(error, enc, new_version))
    return "\r".join(segments) + "\r"


def _err_segment(error: AckError, enc: Encoding, new_version: bool) -> str:
    text = enc.escape_text(ERROR_CODE_TEXT.get(error.hl7_code, ""))
    loc = error.location
    if not new_version:
        # ERR-1 ELD (v2.3/2.4): segment id ^ sequence ^ field ^ code&text&HL70357.
        sub = enc.subcomponent
        parts = [
            loc.segment if loc else "",
            str(loc.sequence) if loc else "",
            str(loc.field) if loc and loc.field is not None else "",
            f"{error.hl7_code}{sub}{text}{sub}HL70357",
        ]
        return f"ERR|{enc.component.join(parts)}"
    location = ""
    if loc is not None:
        fields = [loc.segment, str(loc.sequence)]
        if loc.field is not None:
            fields.append(str(loc.field))
            if loc.component is not None:
                fields += ["1", str(loc.component)]
        location = enc.component.join(fields)
    err = [
        "ERR",
        "",
        location,
        f"{error.hl7_code}^{text}^HL70357",
        error.severity,
        "",
        "",
        "",
        enc.escape_text(error.message),
    ]
    return enc.field.join(err)


def ack_for_error(
    data: bytes | str | Message, exc: Hl7Error, code: AckCode, *, now: datetime | None = None
) -> str:
    """The ACK answering a message that failed with ``exc``."""
    header = (
        OriginalHeader.from_message(data)
        if isinstance(data, Message)
        else OriginalHeader.salvage(data)
    )
    return build_ack(header, code, [AckError.from_exception(exc)], now=now)
