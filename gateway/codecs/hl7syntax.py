"""HL7 v2 syntax: split messages into segments and fields, escape and unescape, and
turn text values (ST, TX, FT, NTE comments) into letter lines.

A small tokenizer of our own (hl7apy is far too slow for the live path): the
separators come from MSH-1/MSH-2 (ZorgDomein writes ``^_\\&``: ``_`` repeats),
segments end in CR, LF or CRLF on input and in CR on output, and the character set
follows MSH-18 (``8859/1`` or empty: ISO-8859-1; ``8859/15``; ``UNICODE UTF-8``;
``ASCII``). Bytes that are valid UTF-8 (and not ASCII) under a declared single-byte
set are read as UTF-8 with a warning — ZorgDomein's own test messages do this, and
reading them as declared would turn ``Dijkë`` into ``DijkÃ«``. Fields are split
lazily; only the values the codec reads are unescaped. A field holding only ``""``
(HL7's null) reads as empty.

Text values: repetitions are lines, and the formatting commands of HL7 v2.4
section 2.7 become text: ``\\.br\\`` a new line, ``\\.sp N\\`` a new line and
N blank ones (one without N), ``\\.in N\\`` indents the lines that follow by N
spaces, ``\\.ti N\\`` the current line only, ``\\.ce\\`` ends the line,
``\\.fi\\``, ``\\.nf\\``, ``\\H\\`` and ``\\N\\`` (fill and highlighting) leave nothing,
``\\Xhh…\\`` are bytes in the message's character set. Escapes we do not know
(``\\Z…\\``, character-set switches) are kept as written, so no text is lost. A
``.sp``/``.in``/``.ti`` asking for more than 100 lines or columns is refused
(E-HL7-FORMAT): a 1 kB message must not turn into a 100 MB letter.

Every segment knows its position (``Segments.ordered``); a decoder marks the
OBX and NTE segments it put into the document with ``place`` so that
``unplaced`` can name any content left over.
"""

import functools
import re

from gateway.codecs.sniff import BOM
from gateway.errors import DecodeError

MAX_BYTES = 16 * 1024 * 1024
SEPARATORS = "|^~\\&"
CHARSETS = {"": "latin-1", "8859/1": "latin-1", "8859/15": "iso8859-15", "UNICODE UTF-8": "utf-8",
            "ASCII": "ascii"}
_ESCAPE_OUT = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_ESCAPE_TABLE = str.maketrans(_ESCAPE_OUT)
_COMMAND = re.compile(r"\.(br|sp|in|ti|ce|fi|nf)\s*([+-]?[0-9]{1,6})?\Z")
MAX_SPACING = 100      # blank lines one .sp may add, columns one .in/.ti may indent


class Segments:
    """The segments of one message. ``field(tag, n)`` gives field n as in the
    standard (MSH-1 is the field separator, so MSH-n is at the same index)."""

    def __init__(self, lines: list[str], ordered: list[list[str]], separators: str,
                 codec: str = "latin-1"):
        """``ordered``: the fields of each line (``split_messages`` splits them)."""
        fs, self.cs, self.rs, esc, self.ss = separators
        self.fs, self.esc = fs, esc
        self.lines, self.ordered, self.codec = lines, ordered, codec
        self.placed: set[int] = set()
        self.warnings: list[str] = []
        self._by_tag: dict[str, list[list[str]]] = {}
        for fields in ordered:
            if (same := self._by_tag.get(fields[0])) is None:
                self._by_tag[fields[0]] = [fields]
            else:
                same.append(fields)
        self._unescape = _unescaper(esc)
        self._simple = {"F": fs, "S": self.cs, "T": self.ss, "R": self.rs, "E": esc}

    def all(self, tag: str) -> list[list[str]]:
        return self._by_tag.get(tag, [])

    def first(self, tag: str) -> list[str] | None:
        found = self._by_tag.get(tag)
        return found[0] if found else None

    def components(self, fields: list[str] | None, n: int) -> list[str]:
        """Field ``n`` of a segment split into (still escaped) components."""
        if fields is None or n >= len(fields):
            return []
        return fields[n].split(self.cs)

    def repetitions(self, value: str) -> list[str]:
        return value.split(self.rs)

    def unescape(self, value: str) -> str:
        """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and \\Xhh\\; other escapes are kept as written."""
        if self.esc not in value:
            return value
        return self._unescape.sub(self._escape_value, value)

    def clean(self, value: str) -> str:
        """``value`` unescaped and stripped: how most fields are read."""
        if self.esc in value:
            value = self._unescape.sub(self._escape_value, value)
        return value.strip()

    def _escape_value(self, match: re.Match) -> str:
        if (separator := self._simple.get(match[1])) is not None:      # the common case
            return separator
        resolved = self.resolve(match[1])
        return match[0] if resolved is None else resolved

    def resolve(self, code: str) -> str | None:
        """The text of the escape ``\\code\\`` (a separator or hex data), or None if unknown."""
        if code in self._simple:
            return self._simple[code]
        if code[:1] == "X" and len(code) % 2 == 1 and re.fullmatch(r"[0-9A-Fa-f]*", code[1:]):
            data = bytes.fromhex(code[1:])
            try:
                return data.decode(self.codec)
            except UnicodeDecodeError:
                return data.decode("latin-1")
        return None

    def text(self, value: str, blank: bool = False) -> list[str]:
        """A text value as letter lines: one per repetition, formatting commands applied.
        An empty value is no line at all, or one blank line when ``blank``."""
        if not value:
            return [""] if blank else []
        if self.esc not in value:
            return value.split(self.rs)
        if not self._formatted(value):        # escaped characters only: one line each
            return [self.unescape(repetition) for repetition in value.split(self.rs)]
        lines: list[str] = []
        for repetition in value.split(self.rs):
            lines += _Lines(self).read(repetition) if self.esc in repetition else [repetition]
        return lines

    def _formatted(self, value: str) -> bool:
        """Whether ``value`` may hold a formatting command, \\H\\ or \\N\\: an escape
        whose code starts with ``.`` or is H or N (a cheap test that may say yes
        wrongly, never no)."""
        esc = self.esc
        return esc + "." in value or f"{esc}H{esc}" in value or f"{esc}N{esc}" in value

    def place(self, fields: list[str]) -> None:
        """Mark a segment as put into the document."""
        self.placed.add(id(fields))

    def is_placed(self, fields: list[str]) -> bool:
        return id(fields) in self.placed

    def position(self, fields: list[str]) -> int:
        """The 1-based position of a segment in its message (for error locations)."""
        return next(n for n, found in enumerate(self.ordered, 1) if found is fields)

    def unplaced(self) -> tuple[int, str] | None:
        """(1-based position, tag) of the first OBX or NTE with content no decoder placed."""
        left = [fields for tag, places in _CONTENT.items() for fields in self.all(tag)
                if id(fields) not in self.placed and any(len(fields) > n and fields[n]
                                                          for n in places)]
        if not left:
            return None
        number = min(self.position(fields) for fields in left)
        return number, self.ordered[number - 1][0]


_CONTENT = {"OBX": (5,), "NTE": (3,)}       # fields holding content that must be placed


class _Lines:
    """Builds the lines of one text repetition (see the module docstring)."""

    def __init__(self, msg: Segments):
        self.msg = msg
        self.lines: list[str] = []
        self.line, self.indent, self.temporary = "", 0, None

    def read(self, value: str) -> list[str]:
        esc = self.msg.esc
        position = 0
        while (start := value.find(esc, position)) >= 0:
            end = value.find(esc, start + 1)
            if end < 0:
                break
            self.add(value[position:start])
            self.escape(value[start + 1:end], value[start:end + 1])
            position = end + 1
        self.add(value[position:])
        self.end()
        return self.lines

    def add(self, text: str) -> None:
        self.line += text

    def end(self) -> None:
        margin = self.indent if self.temporary is None else self.indent + self.temporary
        self.lines.append(" " * max(margin, 0) + self.line if self.line else self.line)
        self.line, self.temporary = "", None

    def escape(self, code: str, written: str) -> None:
        command = _COMMAND.match(code)
        if command is None:
            if code not in ("H", "N"):
                resolved = self.msg.resolve(code)
                self.add(written if resolved is None else resolved)
            return
        name, number = command[1], int(command[2]) if command[2] else None
        if number is not None and abs(number) > MAX_SPACING:
            raise DecodeError(f"formatting command .{name} {number} asks for more than "
                              f"{MAX_SPACING} lines or columns", where="text value",
                              code="E-HL7-FORMAT")
        if name in ("br", "ce"):
            self.end()
        elif name == "sp":
            self.end()
            for _ in range(1 if number is None else max(number, 0)):
                self.lines.append("")
        elif name == "in":
            self.indent = number or 0
        elif name == "ti":
            self.temporary = number or 0


@functools.lru_cache(maxsize=8)
def _unescaper(esc: str) -> re.Pattern:
    """The pattern of one escape sequence for escape character ``esc``."""
    return re.compile(re.escape(esc) + r"([^" + re.escape(esc) + r"]*)" + re.escape(esc))


def split_messages(data: bytes) -> list[Segments]:
    """Decode ``data`` (one or more messages, each starting with MSH) into Segments."""
    if len(data) > MAX_BYTES:
        raise DecodeError(f"message is larger than {MAX_BYTES} bytes", where="byte 1",
                          code="E-HL7-TOO-LARGE")
    raw = data.removeprefix(BOM).lstrip(b" \t\r\n\x0b").rstrip(b"\r\n\x0b\x1c")
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise DecodeError("HL7 message does not start with an MSH segment", where="segment 1",
                          code="E-HL7-NO-MSH")
    separators = raw[3:8].decode("latin-1")
    if separators != SEPARATORS and (len(set(separators)) != 5 or
                                     any(c.isalnum() or c in "\r\n" for c in separators)):
        raise DecodeError("MSH-1/MSH-2 do not declare five distinct separators",
                          where="segment 1 (MSH), field 2", code="E-HL7-SYNTAX")
    charset, text, warnings = _text(raw, *_charset(raw, separators))
    lines = list(filter(None, text.replace("\r\n", "\r").replace("\n", "\r").split("\r")))
    messages = [Segments(own_lines, ordered, separators, charset)
                for own_lines, ordered in _fields(lines, separators[0])]
    for msg in messages:
        msg.warnings += warnings
    return messages


def _fields(lines: list[str], fs: str):
    """(lines, their fields) of each message in ``lines``: a message starts at an MSH,
    whose MSH-1 is put in place; a field holding only ``""`` reads as empty."""
    messages: list[tuple[list[str], list[list[str]]]] = []
    for number, line in enumerate(lines, 1):
        fields = line.split(fs)
        tag = fields[0]         # three letters or digits, then the separator or the end
        if len(tag) != 3 or not tag.isalnum():
            raise DecodeError("segment does not start with a three-character tag and a field "
                              "separator", where=f"segment {number}", code="E-HL7-SYNTAX")
        if '""' in line:
            fields = ["" if value == '""' else value for value in fields]
        if tag == "MSH":                        # the first line always is
            fields.insert(1, fs)
            messages.append((own_lines := [], own_fields := []))
        own_lines.append(line)
        own_fields.append(fields)
    return messages


def _text(raw: bytes, charset: str, declared: str) -> tuple[str, str, list[str]]:
    """(codec, text, warnings) of ``raw``: as MSH-18 declares, or as UTF-8 with a warning
    when a single-byte set is declared but the bytes are UTF-8 (decoded once)."""
    if charset != "utf-8" and not raw.isascii():
        try:
            return "utf-8", raw.decode("utf-8"), [
                f"MSH-18 declares {declared or 'no character set (8859/1)'} but the message "
                "is UTF-8; read as UTF-8"]
        except UnicodeDecodeError:
            pass
    try:
        return charset, raw.decode(charset), []
    except UnicodeDecodeError as exc:
        raise DecodeError(f"byte at offset {exc.start} is not valid {charset} as MSH-18 declares",
                          where="segment 1 (MSH), field 18", code="E-HL7-CHARSET") from None


def _charset(raw: bytes, separators: str) -> tuple[str, str]:
    """(Python codec, MSH-18 as declared) of the first message."""
    msh = raw.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1").split(separators[0])
    declared = msh[17] if len(msh) > 17 else ""
    for separator in separators[1:3]:          # its first component and repetition
        declared = declared.split(separator, 1)[0]
    declared = declared.strip()
    if declared not in CHARSETS:
        raise DecodeError(f"unknown character set {declared[:20]!r} (known: "
                          f"{', '.join(c for c in CHARSETS if c)})",
                          where="segment 1 (MSH), field 18", code="E-HL7-CHARSET")
    return CHARSETS[declared], declared


def is_utf8(raw: bytes) -> bool:
    """Whether ``raw`` decodes as UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def escape(value: str) -> str:
    """Escape the five separator characters (standard separators) in ``value``."""
    if "\\" in value or "|" in value or "^" in value or "&" in value or "~" in value:
        return value.translate(_ESCAPE_TABLE)
    return value


def join(parts, separator: str) -> str:
    """Join already-escaped parts, dropping trailing empty ones."""
    parts = list(parts)
    while parts and not parts[-1]:
        parts.pop()
    return separator.join(parts)


def field(*components) -> str:
    """One field from components; a component given as a tuple is joined as subcomponents."""
    parts = [escape(c) if c.__class__ is str else join([escape(s) for s in c], "&")
             for c in components]
    while parts and not parts[-1]:
        parts.pop()
    joined = "^".join(parts)
    return joined if joined != '""' else "\\X2222\\"    # two quotes, not HL7's null


def segment(tag: str, *fields: str) -> str:
    return join((tag, *fields), "|")
