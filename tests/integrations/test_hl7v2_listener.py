"""The MLLP listener on a real localhost socket, with the real inbound pipeline."""

from __future__ import annotations

import asyncio

from carechart.integrations.hl7v2.inbound import receive
from carechart.integrations.hl7v2.listener import start_listener
from carechart.integrations.hl7v2.mllp import MllpDecoder, encode_frame
from carechart.integrations.hl7v2.parser import parse_message

MESSAGE = (
    b"MSH|^~\\&|LAB|FAC|EHR|HOSP|20240101||ORU^R01^ORU_R01|C77|P|2.5.1\r"
    b"PID|1||1^^^H^MR||DOE^J||19800101|F\r"
    b"OBR|1|P1|F1|2345-7^Glucose^LN\r"
    b"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99||||F\r"
)


def _handle(data: bytes) -> bytes | None:
    return receive(data).ack_bytes


async def _exchange() -> list[bytes]:
    server = await start_listener(_handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        frame = encode_frame(MESSAGE)
        # Two messages, the first split across writes, as TCP may deliver them.
        writer.write(frame[:10])
        await writer.drain()
        writer.write(frame[10:] + encode_frame(MESSAGE.replace(b"C77", b"C78")))
        await writer.drain()
        decoder = MllpDecoder()
        acks: list[bytes] = []
        while len(acks) < 2:
            acks += decoder.feed(await asyncio.wait_for(reader.read(4096), 5))
        writer.close()
        await writer.wait_closed()
        return acks
    finally:
        server.close()
        await server.wait_closed()


def test_listener_acknowledges_each_framed_message_in_order() -> None:
    acks = asyncio.run(_exchange())
    controls = []
    for ack in acks:
        msa = parse_message(ack).segment("MSA")
        assert msa is not None
        assert msa.get(1) == "AA"
        controls.append(msa.get(2))
    assert controls == ["C77", "C78"]
