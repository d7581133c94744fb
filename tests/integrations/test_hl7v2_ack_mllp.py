"""ACK building (v2.5+ ERR form and v2.3 ERR-1 form) and MLLP framing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carechart.integrations.hl7v2.ack import AckCode, AckError, build_ack
from carechart.integrations.hl7v2.errors import ErrorLocation, Hl7ParseError
from carechart.integrations.hl7v2.inbound import receive
from carechart.integrations.hl7v2.mllp import MllpDecoder, MllpFrameError, encode_frame
from carechart.integrations.hl7v2.parser import parse_message

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _msg(version: str) -> str:
    return (
        f"MSH|^~\\&|LABAPP|LABFAC|EHR|HOSP|20240101||ORU^R01^ORU_R01|C42|P|{version}\r"
        "PID|1||1^^^H^MR||DOE^J||19800101|F\r"
        "OBR|1|P1|F1|2345-7^Glucose^LN|||202401011200-0500\r"
        "OBX|1|NM|2345-7^Glucose^LN||x|mg/dL|70-99||||F\r"
    )


def test_ack_swaps_sender_and_receiver_and_echoes_control_id_and_version() -> None:
    ack = parse_message(
        build_ack(parse_message(_msg("2.5.1")), AckCode.ACCEPT, now=NOW, control_id="A1")
    )
    assert ack.sending_application.namespace_id == "EHR"
    assert ack.sending_facility.namespace_id == "HOSP"
    assert ack.receiving_application.namespace_id == "LABAPP"
    assert ack.msh.raw(9) == "ACK^R01^ACK"
    assert ack.version == "2.5.1"
    assert ack.processing_id == "P"
    assert ack.control_id == "A1"
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(1) == "AA"
    assert msa.get(2) == "C42"
    assert ack.msh.get(7) == "20240501120000+0000"


def test_v25_error_uses_err2_location_err3_code_err4_severity_err8_text() -> None:
    result = receive(_msg("2.5.1"), now=NOW)
    assert result.ack_code == AckCode.ERROR
    err = parse_message(result.ack or "").segment("ERR")
    assert err is not None
    assert (err.get(2, 1), err.get(2, 2), err.get(2, 3)) == ("OBX", "1", "5")
    assert (err.get(3, 1), err.get(3, 3)) == ("102", "HL70357")
    assert err.get(4) == "E"
    assert "not a number" in err.get(8)
    assert "x" not in err.get(8).replace("OBX", "")  # the value (PHI) is not echoed


def test_v23_error_uses_err1_and_msa6() -> None:
    result = receive(_msg("2.3"), now=NOW)
    ack = parse_message(result.ack or "")
    assert ack.version == "2.3"
    assert ack.msh.raw(9) == "ACK^R01"
    err = ack.segment("ERR")
    assert err is not None
    assert (err.get(1, 1), err.get(1, 2), err.get(1, 3), err.get(1, 4, 1)) == (
        "OBX",
        "1",
        "5",
        "102",
    )
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(6, 1) == "102"


def test_unparseable_message_gets_reject_with_salvaged_control_id() -> None:
    result = receive("MSH||A|B|C|D|2024||ORU^R01|C9|P|2.5.1\r")
    assert result.ack_code == AckCode.REJECT
    ack = parse_message(result.ack or "")
    msa = ack.segment("MSA")
    assert msa is not None
    assert msa.get(1) == "AR"


def test_unsupported_version_and_type_are_rejected() -> None:
    result = receive(_msg("2.9"))
    assert result.ack_code == AckCode.REJECT
    assert {e.hl7_code for e in result.errors} == {"203"}
    result = receive(_msg("2.5.1").replace("ORU^R01^ORU_R01", "SIU^S12"))
    assert {e.hl7_code for e in result.errors} == {"200"}


def test_warning_rides_on_accept() -> None:
    ack = build_ack(
        parse_message(_msg("2.5.1")),
        AckCode.ACCEPT,
        [AckError("103", "PID-8 unknown", ErrorLocation("PID", 1, 8), severity="W")],
    )
    assert "ERR||PID^1^8|103^Table value not found^HL70357|W" in ack


def test_mllp_round_trip_with_byte_by_byte_chunks() -> None:
    messages = [b"MSH|one\r", b"MSH|two\r"]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = MllpDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == messages
    assert decoder.pending == 0


def test_mllp_frame_size_is_bounded() -> None:
    decoder = MllpDecoder(max_frame=10)
    with pytest.raises(MllpFrameError):
        decoder.feed(b"\x0b" + b"x" * 11)


def test_mllp_rejects_data_outside_a_frame_and_nested_start() -> None:
    with pytest.raises(MllpFrameError):
        MllpDecoder().feed(b"garbage\x0bMSH\x1c\r")
    with pytest.raises(MllpFrameError):
        MllpDecoder().feed(b"\x0bMSH\x0bMSH\x1c\r")
    assert MllpDecoder().feed(b"\r\n\x0bA\x1c\r\r\n") == [b"A"]


def test_mllp_frame_error_is_a_parse_error() -> None:
    assert issubclass(MllpFrameError, Hl7ParseError)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.binary(max_size=50).filter(lambda b: b"\x0b" not in b and b"\x1c" not in b), max_size=5
    ),
    st.integers(1, 7),
)
def test_mllp_decoder_recovers_any_messages_from_any_chunking(
    messages: list[bytes], size: int
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = MllpDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), size):
        out += decoder.feed(stream[i : i + size])
    assert out == messages
