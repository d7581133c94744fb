"""MLLP framing: ``<VT> message <FS><CR>`` (HL7 v2.5.1 Appendix C, "Lower Layer Protocols",
section C.4 "Minimal Lower Layer Protocol", release 2).

The decoder is pure (no sockets): feed it whatever chunks the transport delivers and it
returns the complete frames. It bounds a frame's size, so a peer that never sends the
end block cannot make the receiver buffer without limit.
"""

from __future__ import annotations

from carechart.integrations.hl7v2.errors import Hl7ParseError

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_FRAME = 4 * 1024 * 1024


class MllpFrameError(Hl7ParseError):
    """The byte stream breaks MLLP framing (oversized frame, data outside a frame)."""

    code = "MLLP_FRAME_ERROR"


def encode_frame(message: bytes) -> bytes:
    """Wrap one message in an MLLP block. The payload must not contain the framing bytes."""
    if START_BLOCK in message or b"\x1c" in message:
        raise MllpFrameError("message contains MLLP framing characters", None, None)
    return START_BLOCK + message + END_BLOCK


class MllpDecoder:
    """Incremental MLLP frame decoder.

    Bytes between frames other than whitespace are a protocol error: the peer is not
    speaking MLLP (or lost sync), and guessing where a message starts risks accepting
    half of one. Blank bytes (CR/LF, often sent as keep-alives) are ignored.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._in_frame = False

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add received bytes; return every frame completed by them, in order."""
        frames: list[bytes] = []
        data = memoryview(chunk)
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = chunk.find(START_BLOCK, pos)
                stray = chunk[pos : start if start >= 0 else len(chunk)]
                if stray.strip(b"\r\n\t "):
                    self.reset()
                    raise MllpFrameError("data received outside an MLLP frame", None, None)
                if start < 0:
                    break
                self._in_frame = True
                pos = start + 1
                continue
            end = chunk.find(b"\x1c", pos)
            restart = chunk.find(START_BLOCK, pos, end if end >= 0 else len(chunk))
            if restart >= 0:
                # A start block inside a frame means the peer lost the previous frame's
                # end; accepting the mix would splice two messages together.
                self.reset()
                raise MllpFrameError("MLLP start block inside an open frame", None, None)
            piece = data[pos : end if end >= 0 else len(data)]
            if len(self._buffer) + len(piece) > self.max_frame:
                self.reset()
                raise MllpFrameError(
                    f"MLLP frame exceeds the {self.max_frame}-byte limit", None, None
                )
            self._buffer += piece
            if end < 0:
                break
            # The end block is FS CR; the CR may arrive in the next chunk, so FS alone
            # closes the frame and a CR right after it is skipped as part of the block.
            frames.append(bytes(self._buffer))
            self._buffer.clear()
            self._in_frame = False
            pos = end + 1
            if pos < len(chunk) and chunk[pos] == 0x0D:
                pos += 1
        return frames

    def reset(self) -> None:
        self._buffer.clear()
        self._in_frame = False
