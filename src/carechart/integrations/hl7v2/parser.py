"""HL7 v2 (2.3-2.8) message parser: delimiters, escapes, repetitions, positional access.

Spec: HL7 v2.5.1 chapter 2 "Control", sections 2.5 (message construction rules),
2.5.4 (delimiters: MSH-1 field separator, MSH-2 component, repetition, escape,
subcomponent and, from 2.7, truncation characters), 2.7 (escape sequences in text),
2.10.3 (batch protocol: FHS/BHS ... BTS/FTS) and 2.14.9 (MSH fields).

Design notes
- Parsing is a handful of ``str.split`` passes and one hand-written escape scanner:
  linear time, no regular expressions, so hostile input cannot cause backtracking.
- Input over ``max_bytes`` is refused before any work, so memory is bounded too.
- Fields are kept in their raw (escaped) form and split on access. Escapes are undone
  only after splitting, because an escaped ``\\S\\`` is a literal ``^``, not a delimiter.
- Absent and empty differ: a field past the end of its segment is absent (``None``), a
  field between two separators is empty (``""``), and ``""`` (two double quotes) is the
  HL7 explicit null that tells the receiver to delete the value (section 2.5.3).
- Segment separators: the standard says CR; real interfaces send LF or CRLF too, and
  some files start with a UTF-8 byte-order mark. All are accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from carechart.integrations.hl7v2.errors import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    Hl7ParseError,
)

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
MAX_SEGMENTS = 50_000
HL7_NULL = '""'
_BOM = "\ufeff"
_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})

# MSH-18 character set names (HL7 table 0211) mapped to Python codecs.
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/5": "iso8859-5",
    "8859/7": "iso8859-7",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
}


@dataclass(frozen=True, slots=True)
class Encoding:
    """The delimiters a message declares in MSH-1 and MSH-2 (section 2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    def escape_text(self, text: str) -> str:
        """Escape delimiters in ``text`` for writing into a field (section 2.7.1)."""
        if not self.escape:
            return text
        table = {
            self.escape: "E",
            self.field: "F",
            self.component: "S",
            self.repetition: "R",
            self.subcomponent: "T",
        }
        out: list[str] = []
        for ch in text:
            code = table.get(ch)
            if code is not None:
                out.append(f"{self.escape}{code}{self.escape}")
            elif ch in "\r\n":
                out.append(f"{self.escape}.br{self.escape}")
            else:
                out.append(ch)
        return "".join(out)


# An encoding whose delimiters cannot occur in text, for MSH-1/MSH-2.
_LITERAL = Encoding(
    field="\x00", component="\x01", repetition="\x02", escape="", subcomponent="\x03"
)


def _decode_hex(hexdigits: str) -> str | None:
    """Decode the ``\\Xhh..\\`` payload; UTF-8 first, Latin-1 for legacy senders."""
    if len(hexdigits) % 2 or not hexdigits:
        return None
    try:
        raw = bytes.fromhex(hexdigits)
    except ValueError:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def unescape(text: str, enc: Encoding) -> str:
    """Undo HL7 escape sequences (v2.5.1 section 2.7).

    Delimiter escapes become the delimiter, ``\\Xhh\\`` becomes the decoded bytes,
    ``\\.br\\`` and ``\\.sp\\`` become line breaks; highlighting (``\\H\\``, ``\\N\\``),
    character-set switches (``\\C..\\``, ``\\M..\\``) and other formatting commands carry
    no text and are dropped. An escape character without a closing partner is kept as
    text: senders put stray backslashes in free text, and rejecting a whole lab result
    for that would lose clinical data.
    """
    esc = enc.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find(esc, i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find(esc, j + 1)
        if k < 0:
            out.append(text[j:])
            break
        body = text[j + 1 : k]
        replacement = _escape_replacement(body, enc)
        if replacement is None:
            # Not an escape we know: keep the opening character literally and resume
            # right after it, so the closing one can still start a real sequence.
            out.append(esc)
            i = j + 1
            continue
        out.append(replacement)
        i = k + 1
    return "".join(out)


def _escape_replacement(body: str, enc: Encoding) -> str | None:
    simple = {
        "F": enc.field,
        "S": enc.component,
        "T": enc.subcomponent,
        "R": enc.repetition,
        "E": enc.escape,
        "P": enc.truncation,
        "H": "",
        "N": "",
        ".br": "\n",
        ".fi": "",
        ".nf": "",
    }
    if body in simple:
        return simple[body]
    if not body:
        return None
    head = body[0]
    if head == "X":
        return _decode_hex(body[1:])
    if head in "CM" and len(body) > 1 and all(c in "0123456789ABCDEFabcdef" for c in body[1:]):
        return ""
    if head == "Z":
        return ""
    if body.startswith(".sp"):
        count = body[3:].strip().lstrip("+") or "1"
        # Capped: a formatting hint must not let a sender inflate the text.
        return "\n" * min(int(count[:3]), 10) if count.isdigit() else None
    if body.startswith((".in", ".ti", ".sk", ".ce")):
        return ""
    return None


@dataclass(frozen=True, slots=True)
class Repetition:
    """One occurrence of a (possibly repeating) field, split on access."""

    raw: str
    enc: Encoding

    @property
    def is_null(self) -> bool:
        """The HL7 explicit null ``""``: the sender says "delete this value"."""
        return self.raw == HL7_NULL

    @property
    def is_empty(self) -> bool:
        return self.raw == ""

    @property
    def text(self) -> str:
        """The first component's first subcomponent, unescaped (the usual "value")."""
        return self.component(1)

    def components(self) -> list[str]:
        """Every component, unescaped; subcomponents stay joined by their delimiter."""
        return [unescape(c, self.enc) for c in self.raw.split(self.enc.component)]

    def component(self, component: int = 1, subcomponent: int = 1) -> str:
        """Component ``component`` (1-based), subcomponent ``subcomponent``; ``""`` if absent."""
        if component < 1 or subcomponent < 1:
            raise ValueError("HL7 positions start at 1")
        parts = self.raw.split(self.enc.component)
        if component > len(parts):
            return ""
        subs = parts[component - 1].split(self.enc.subcomponent)
        if subcomponent > len(subs):
            return ""
        return unescape(subs[subcomponent - 1], self.enc)

    def subcomponents(self, component: int) -> list[str]:
        parts = self.raw.split(self.enc.component)
        if component < 1 or component > len(parts):
            return []
        return [unescape(s, self.enc) for s in parts[component - 1].split(self.enc.subcomponent)]

    def has_components(self) -> bool:
        return self.enc.component in self.raw or self.enc.subcomponent in self.raw


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment. ``fields[n]`` is field ``n`` in HL7 numbering (``fields[0]`` is the name).

    For MSH, ``fields[1]`` is the field separator itself and ``fields[2]`` the encoding
    characters, so MSH-n positions match the standard (section 2.14.9).
    """

    name: str
    fields: tuple[str, ...]
    enc: Encoding
    index: int  # position in the message, 0-based
    sequence: int  # 1-based occurrence among segments with this name (ERR-2.2)

    def __len__(self) -> int:
        return len(self.fields) - 1

    def has(self, field: int) -> bool:
        """True when the field is present (even if empty)."""
        return 1 <= field < len(self.fields)

    def raw(self, field: int) -> str | None:
        """The field's raw text, ``None`` when absent."""
        return self.fields[field] if self.has(field) else None

    def field(self, field: int) -> list[Repetition]:
        """The field's repetitions; ``[]`` when absent or empty."""
        raw = self.raw(field)
        if not raw:
            return []
        if self.name == "MSH" and field <= 2:
            # MSH-1 and MSH-2 are the delimiters themselves: never split or unescaped.
            return [Repetition(raw, _LITERAL)]
        return [Repetition(r, self.enc) for r in raw.split(self.enc.repetition)]

    def first(self, field: int) -> Repetition | None:
        reps = self.field(field)
        return reps[0] if reps else None

    def get(
        self, field: int, component: int = 1, subcomponent: int = 1, repetition: int = 1
    ) -> str:
        """Unescaped value at ``SEG-field.component.subcomponent``; ``""`` when absent."""
        reps = self.field(field)
        if repetition < 1 or repetition > len(reps):
            return ""
        return reps[repetition - 1].component(component, subcomponent)

    def text(self, field: int) -> str:
        """The whole field (first repetition), unescaped, delimiters kept as written."""
        rep = self.first(field)
        return unescape(rep.raw, self.enc) if rep else ""

    def is_null(self, field: int) -> bool:
        return self.raw(field) == HL7_NULL


@dataclass(frozen=True, slots=True)
class HierarchicDesignator:
    """HD data type (sending/receiving application and facility, assigning authority)."""

    namespace_id: str
    universal_id: str
    universal_id_type: str

    def __bool__(self) -> bool:
        return bool(self.namespace_id or self.universal_id)


class Message:
    """A parsed HL7 v2 message with typed MSH accessors (HL7 v2.5.1 section 2.14.9)."""

    __slots__ = ("_by_name", "encoding", "segments")

    def __init__(self, segments: list[Segment], encoding: Encoding) -> None:
        self.segments = segments
        self.encoding = encoding
        self._by_name: dict[str, list[Segment]] = {}
        for seg in segments:
            self._by_name.setdefault(seg.name, []).append(seg)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def segment(self, name: str) -> Segment | None:
        found = self._by_name.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[Segment]:
        return list(self._by_name.get(name, ()))

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def _hd(self, field: int) -> HierarchicDesignator:
        msh = self.msh
        return HierarchicDesignator(msh.get(field, 1), msh.get(field, 2), msh.get(field, 3))

    @property
    def sending_application(self) -> HierarchicDesignator:
        return self._hd(3)

    @property
    def sending_facility(self) -> HierarchicDesignator:
        return self._hd(4)

    @property
    def receiving_application(self) -> HierarchicDesignator:
        return self._hd(5)

    @property
    def receiving_facility(self) -> HierarchicDesignator:
        return self._hd(6)

    @property
    def datetime(self) -> str:
        return self.msh.get(7)

    @property
    def message_type(self) -> str:
        """MSH-9.1, e.g. ``ORU``."""
        return self.msh.get(9, 1)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, e.g. ``R01``."""
        return self.msh.get(9, 2)

    @property
    def message_structure(self) -> str:
        """MSH-9.3 (2.3.1+); derived as ``TYPE_EVENT`` when a 2.3 sender leaves it out."""
        explicit = self.msh.get(9, 3)
        if explicit:
            return explicit
        if self.message_type == "ACK":
            return "ACK"
        if self.message_type and self.trigger_event:
            return f"{self.message_type}_{self.trigger_event}"
        return self.message_type

    @property
    def control_id(self) -> str:
        """MSH-10, echoed in MSA-2 of the acknowledgement."""
        return self.msh.get(10)

    @property
    def processing_id(self) -> str:
        """MSH-11.1: P (production), D (debugging) or T (training), HL7 table 0103."""
        return self.msh.get(11)

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``2.5.1``."""
        return self.msh.get(12)

    @property
    def accept_ack_type(self) -> str:
        return self.msh.get(15)

    @property
    def application_ack_type(self) -> str:
        return self.msh.get(16)

    @property
    def character_set(self) -> str:
        return self.msh.get(18)


def _parse_encoding(line: str) -> Encoding:
    if len(line) < 4 or line[:3] != "MSH":
        raise Hl7ParseError("message does not start with an MSH segment", "MSH", None)
    field_sep = line[3]
    if field_sep.isalnum() or field_sep in "\r\n \t":
        raise Hl7ParseError("MSH-1 field separator is invalid", "MSH", 1)
    end = line.find(field_sep, 4)
    msh2 = line[4:] if end < 0 else line[4:end]
    if len(msh2) not in (4, 5):
        raise Hl7ParseError(
            "MSH-2 encoding characters are missing or malformed",
            "MSH",
            2,
            hl7_code=REQUIRED_FIELD_MISSING,
        )
    chars = msh2 + field_sep
    if len(set(chars)) != len(chars) or any(c.isalnum() or c in " \t" for c in msh2):
        raise Hl7ParseError("MSH-2 encoding characters are not distinct symbols", "MSH", 2)
    return Encoding(
        field=field_sep,
        component=msh2[0],
        repetition=msh2[1],
        escape=msh2[2],
        subcomponent=msh2[3],
        truncation=msh2[4] if len(msh2) == 5 else "",
    )


def _declared_charset(data: bytes) -> str | None:
    """MSH-18 read from the raw bytes: ASCII-compatible, so Latin-1 peeking is safe."""
    head = data[:4096].decode("latin-1")
    start = head.find("MSH")
    if start < 0 or len(head) < start + 4:
        return None
    sep = head[start + 3]
    line = head[start:].split("\r", 1)[0].split("\n", 1)[0]
    parts = line.split(sep)
    if len(parts) < 18:
        return None
    # parts[0] is "MSH", parts[1] is MSH-2, so MSH-18 is parts[17].
    comp = parts[1][:1] or "^"
    return parts[17].split(parts[1][1:2] or "~")[0].split(comp)[0].strip().upper() or None


def decode(data: bytes) -> str:
    """Bytes to text: a BOM wins, then UTF-8, then the MSH-18 character set, then Latin-1."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = _CHARSETS.get(_declared_charset(data) or "", "latin-1")
    return data.decode(codec, errors="replace")


def _lines(text: str) -> list[str]:
    text = text.removeprefix(_BOM)
    # Real interfaces use CR (the standard), LF or CRLF; a raw LF cannot occur inside a
    # field (it must be escaped as \.br\ or \X0A\), so treating it as a separator is safe.
    lines = list(text.replace("\r\n", "\r").replace("\n", "\r").split("\r"))
    return [ln for ln in lines if ln.strip()]


def _check_size(data: bytes | str, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise Hl7ParseError(f"message exceeds the {max_bytes}-byte limit", None, None)


def _segments(lines: list[str], enc: Encoding) -> list[Segment]:
    if len(lines) > MAX_SEGMENTS:
        raise Hl7ParseError(f"message has more than {MAX_SEGMENTS} segments", None, None)
    segments: list[Segment] = []
    counts: dict[str, int] = {}
    for index, line in enumerate(lines):
        name = line[:3]
        if (
            len(name) != 3
            or not (name[0].isascii() and name[0].isupper())
            or not all(c.isascii() and (c.isupper() or c.isdigit()) for c in name[1:])
            or (len(line) > 3 and line[3] != enc.field)
        ):
            raise Hl7ParseError(
                f"segment {index + 1} does not start with a segment id",
                None,
                None,
                hl7_code=SEGMENT_SEQUENCE_ERROR,
            )
        counts[name] = counts.get(name, 0) + 1
        if name == "MSH":
            if index != 0:
                raise Hl7ParseError("MSH segment appears after the start", "MSH", None)
            parts = line.split(enc.field)
            fields = ("MSH", enc.field, *parts[1:])
        else:
            fields = tuple(line.split(enc.field))
        segments.append(Segment(name, fields, enc, index, counts[name]))
    return segments


def _split_messages(lines: list[str]) -> list[list[str]]:
    """Group lines into messages at each MSH, dropping the batch envelope (section 2.10.3)."""
    messages: list[list[str]] = []
    for line in lines:
        name = line[:3]
        if name in _ENVELOPE:
            continue
        if name == "MSH":
            messages.append([line])
        elif messages:
            messages[-1].append(line)
        else:
            raise Hl7ParseError("message does not start with an MSH segment", "MSH", None)
    return messages


def _to_text(data: bytes | str, max_bytes: int) -> str:
    _check_size(data, max_bytes)
    text = decode(data) if isinstance(data, bytes | bytearray) else data
    if not text.strip().removeprefix(_BOM):
        raise Hl7ParseError("message is empty", None, None)
    return text


def parse_batch(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Message]:
    """Every message of an HL7 batch or file (FHS/BHS ... BTS/FTS), in order."""
    groups = _split_messages(_lines(_to_text(data, max_bytes)))
    if not groups:
        raise Hl7ParseError("no MSH segment found", "MSH", None)
    out: list[Message] = []
    for group in groups:
        enc = _parse_encoding(group[0])
        out.append(Message(_segments(group, enc), enc))
    return out


def parse_message(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Parse one HL7 v2 message.

    A batch envelope around exactly one message is tolerated (some senders wrap every
    message in FHS/BHS); several messages need ``parse_batch``.
    Raises ``Hl7ParseError`` and nothing else for malformed input.
    """
    messages = parse_batch(data, max_bytes=max_bytes)
    if len(messages) != 1:
        raise Hl7ParseError(f"expected one message, found {len(messages)}", "MSH", None, sequence=2)
    return messages[0]
