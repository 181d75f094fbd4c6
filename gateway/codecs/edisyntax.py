"""EDIFACT syntax: bytes <-> segments, with the envelope checks pydifact leaves out.

pydifact's Tokenizer splits the text (it handles the release character, also a
value that ends in an escaped ``?``); this module builds segments from its
tokens, because pydifact's own Parser refuses composite tags such as ``TXT:1``.
It then checks what pydifact accepts silently: the UNZ message count, UNH/UNT
reference and segment count, and the character set the UNB declares. A UNZ control
reference that differs from the UNB's (a published library's own fixtures do this)
is accepted with a warning; the counts stay strict. pydifact's Serializer writes segments back out.

Character sets: UNOA and UNOB are ASCII, UNOC is ISO-8859-1. Syntax version 4
(repetition separator) is refused. Input is capped at ``MAX_BYTES`` and any
segment at ``MAX_SEGMENT`` characters, which bounds the work on hostile input.
"""

from dataclasses import dataclass, field

from pydifact.control.characters import Characters
from pydifact.exceptions import EDISyntaxError
from pydifact.serializer import Serializer
from pydifact.token import Token
from pydifact.tokenizer import Tokenizer

from gateway.codecs.sniff import BOM
from gateway.errors import DecodeError

MAX_BYTES = 1024 * 1024
MAX_SEGMENT = 4096
MAX_MESSAGES = 1000
DEFAULT_UNA = ":+.? '"
CHARSETS = {"UNOA": "ascii", "UNOB": "ascii", "UNOC": "latin-1"}

_CONTENT = Token.Type.CONTENT
_COMPONENT = Token.Type.COMPONENT_SEPARATOR
_ELEMENT = Token.Type.DATA_SEPARATOR
_TERMINATOR = Token.Type.TERMINATOR


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment: ``tag``, the tag's own components (``TXT:1`` -> ("1",)) and the
    elements, each a list of components. ``number`` counts segments in the file from 1."""

    tag: str
    qualifier: tuple[str, ...]
    elements: list[list[str]]
    number: int

    def get(self, element: int, component: int = 0) -> str:
        """Element ``element`` (1-based, as in the standard), component ``component``; "" if absent."""
        try:
            return self.elements[element - 1][component]
        except IndexError:
            return ""

    def components(self, element: int) -> list[str]:
        return self.elements[element - 1] if element <= len(self.elements) else []


@dataclass
class Message:
    """The segments from UNH to UNT inclusive, with the interchange's UNB."""

    unb: Segment
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Interchange:
    text: str
    messages: list[Message]
    charset: str
    warnings: list[str] = field(default_factory=list)

    def error(self, message: str, segment: Segment | int, element: int = 0,
              component: int = 0, code: str = "E-EDI-STRUCTURE") -> DecodeError:
        """A DecodeError whose location names segment, line, element and component."""
        return DecodeError(message, where=locate(self.text, segment, element, component), code=code)


def locate(text: str, segment: Segment | int, element: int = 0, component: int = 0) -> str:
    number = segment.number if isinstance(segment, Segment) else segment
    where = f"segment {number}"
    if isinstance(segment, Segment):
        where += f" ({segment.tag})"
    where += f", line {_line_of(text, number)}"
    if element:
        where += f", element {element}"
    if component:
        where += f", component {component}"
    return where


def _line_of(text: str, number: int) -> int:
    """The 1-based line on which segment ``number`` starts (slow; only for error messages)."""
    start = 0
    for seen, index in enumerate(_terminators(text), 1):
        if seen >= number:
            break
        start = index + 1
    while start < len(text) and text[start] in " \r\n":
        start += 1
    return text.count("\n" if "\n" in text else "\r", 0, start) + 1


def _terminators(text: str):
    """Yield the offset of every segment terminator in ``text``, honouring the release character."""
    una = _characters(text)
    begin = 0
    if text.startswith("UNA"):
        yield 8
        begin = 9
    escaped = False
    for index in range(begin, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == una[3]:
            escaped = True
        elif char == una[5]:
            yield index


def _characters(text: str) -> str:
    return text[3:9] if text.startswith("UNA") and len(text) >= 9 else DEFAULT_UNA


def read(data: bytes) -> Interchange:
    """Decode ``data`` into messages; raise DecodeError naming segment, line and element."""
    if len(data) > MAX_BYTES:
        raise DecodeError(f"interchange is larger than {MAX_BYTES} bytes", where="byte 1",
                          code="E-EDI-TOO-LARGE")
    text = data.removeprefix(BOM).lstrip(b" \r\n").decode("latin-1")
    una = _characters(text)
    body, first = (text[9:], 2) if text.startswith("UNA") else (text, 1)
    _check_una(text, una)
    lengths = [len(part) for part in body.split(una[5])]
    if max(lengths) > MAX_SEGMENT:
        number = first + lengths.index(max(lengths))
        raise DecodeError(f"segment longer than {MAX_SEGMENT} characters", code="E-EDI-TOO-LARGE",
                          where=locate(text, number))
    segments = _segments(text, body, una, first)
    if not segments or segments[0].tag != "UNB":
        raise DecodeError("interchange does not start with UNB", code="E-EDI-STRUCTURE",
                          where=locate(text, first))
    interchange = Interchange(text, [], _charset(text, segments[0]))
    _check_encoding(interchange)
    _envelope(interchange, segments)
    return interchange


def _check_una(text: str, una: str) -> None:
    if text.startswith("UNA") and len(text) < 9:
        raise DecodeError("UNA service string advice is shorter than 6 characters",
                          where=locate(text, 1), code="E-EDI-SYNTAX")
    if una[4] != " ":
        raise DecodeError(f"syntax version 4 repetition separator {una[4]!r} is not supported",
                          where=locate(text, 1), code="E-EDI-SYNTAX4")
    controls = una[0] + una[1] + una[3] + una[5]
    if len(set(controls)) != 4 or any(c.isalnum() for c in controls):
        raise DecodeError("UNA separators must be four different non-alphanumeric characters",
                          where=locate(text, 1), code="E-EDI-SYNTAX")


def _segments(text: str, body: str, una: str, number: int) -> list[Segment]:
    segments: list[Segment] = []
    elements: list[list[str]] = [[""]]
    try:
        for token in Tokenizer().get_tokens(body, Characters.from_str(una)):
            kind = token.type
            if kind is _CONTENT:
                elements[-1][-1] = token.value
            elif kind is _COMPONENT:
                elements[-1].append("")
            elif kind is _ELEMENT:
                elements.append([""])
            else:
                segments.append(_segment(text, elements, number))
                number += 1
                elements = [[""]]
    except EDISyntaxError as exc:
        if "Unexpected end" in str(exc):
            raise DecodeError("interchange ends inside a segment (truncated?)",
                              where=locate(text, number), code="E-EDI-TRUNCATED") from None
        raise DecodeError("release character followed by a line break", where=locate(text, number),
                          code="E-EDI-SYNTAX") from None
    if elements != [[""]]:
        raise DecodeError("interchange ends inside a segment (truncated?)",
                          where=locate(text, number), code="E-EDI-TRUNCATED")
    return segments


def _segment(text: str, elements: list[list[str]], number: int) -> Segment:
    head = elements[0]
    tag = head[0].lstrip("\r\n ")
    if len(tag) != 3 or not tag.isalnum() or not tag.isupper():
        raise DecodeError("segment tag must be three capital letters or digits",
                          where=locate(text, number), code="E-EDI-SYNTAX")
    return Segment(tag, tuple(head[1:]), elements[1:], number)


def _charset(text: str, unb: Segment) -> str:
    identifier, version = unb.get(1, 0), unb.get(1, 1)
    if version == "4":
        raise DecodeError("syntax version 4 is not supported", where=locate(text, unb, 1, 2),
                          code="E-EDI-SYNTAX4")
    if identifier not in CHARSETS:
        raise DecodeError(f"unknown character set {identifier[:8]!r} (known: UNOA, UNOB, UNOC)",
                          where=locate(text, unb, 1, 1), code="E-EDI-CHARSET")
    return identifier


def _check_encoding(interchange: Interchange) -> None:
    text = interchange.text
    if CHARSETS[interchange.charset] == "ascii" and not text.isascii():
        offset = next(i for i, c in enumerate(text) if ord(c) > 127)
        number = 1 + sum(1 for index in _terminators(text) if index < offset)
        raise DecodeError(f"byte 0x{ord(text[offset]):02X} is not allowed in {interchange.charset}; "
                          "the sender should declare UNOC", where=locate(text, number),
                          code="E-EDI-CHARSET")


def _envelope(interchange: Interchange, segments: list[Segment]) -> None:
    """Split ``segments`` into messages, checking UNB/UNZ and UNH/UNT pairs and counts."""
    index = 0
    while index < len(segments):
        unb = segments[index]
        if unb.tag != "UNB":
            raise interchange.error(f"expected UNB, found {unb.tag}", unb)
        index += 1
        count = 0
        while index < len(segments) and segments[index].tag == "UNH":
            index = _message(interchange, unb, segments, index)
            count += 1
            if len(interchange.messages) > MAX_MESSAGES:
                raise interchange.error(f"more than {MAX_MESSAGES} messages", segments[index - 1])
        if index >= len(segments):
            raise interchange.error("interchange ends without UNZ (truncated?)", segments[-1],
                                    code="E-EDI-TRUNCATED")
        unz = segments[index]
        if unz.tag != "UNZ":
            raise interchange.error(f"expected UNH or UNZ, found {unz.tag}", unz)
        if count == 0:
            raise interchange.error("interchange holds no message", unz)
        if unz.get(1) != str(count):
            raise interchange.error(f"UNZ message count is {unz.get(1)[:10]!r}, counted {count}",
                                    unz, 1, code="E-EDI-COUNT")
        if unz.get(2) != unb.get(5):          # seen in published fixtures: accepted, noted
            interchange.warnings.append(
                f"UNZ control reference {unz.get(2)[:14]!r} differs from UNB's {unb.get(5)[:14]!r} "
                f"(accepted), {locate(interchange.text, unz, 2)}")
        index += 1


def _message(interchange: Interchange, unb: Segment, segments: list[Segment], index: int) -> int:
    """Collect the message starting at UNH ``segments[index]``; return the index after its UNT."""
    unh = segments[index]
    end = index + 1
    while end < len(segments) and segments[end].tag not in ("UNT", "UNH", "UNZ"):
        end += 1
    if end >= len(segments) or segments[end].tag != "UNT":
        raise interchange.error("message has no UNT (truncated?)", unh, code="E-EDI-TRUNCATED")
    unt = segments[end]
    counted = end - index + 1
    if unt.get(1) != str(counted):
        raise interchange.error(f"UNT segment count is {unt.get(1)[:10]!r}, counted {counted}",
                                unt, 1, code="E-EDI-COUNT")
    if unt.get(2) != unh.get(1):
        raise interchange.error(f"UNT reference {unt.get(2)[:14]!r} does not match "
                                f"UNH {unh.get(1)[:14]!r}", unt, 2, code="E-EDI-REFERENCE")
    interchange.messages.append(Message(unb, segments[index:end + 1]))
    return end + 1


@dataclass(frozen=True, slots=True)
class OutSegment:
    """A segment to write: ``tag`` may carry components (``TXT:1``); elements are
    strings or lists of components. Duck-types pydifact's Segment for its Serializer."""

    tag: str
    elements: list


def write(segments: list[OutSegment]) -> str:
    """Serialize ``segments`` after a UNA with the default separators, one per line;
    trailing empty elements are left out."""
    trimmed = []
    for segment in segments:
        elements = list(segment.elements)
        while elements and not any(elements[-1]):
            elements.pop()
        trimmed.append(OutSegment(segment.tag, elements))
    serializer = Serializer(Characters.from_str(DEFAULT_UNA))
    return serializer.serialize(trimmed, with_una_header=True, break_lines=True)
