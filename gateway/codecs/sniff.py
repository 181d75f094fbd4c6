"""Which wire format a message is in, judged from its first bytes."""

from gateway.errors import DecodeError

BOM = b"\xef\xbb\xbf"
_MAGIC = ((b"UNA", "edifact"), (b"UNB", "edifact"), (b"MSH", "hl7"), (b"<", "xml"))


def sniff(data: bytes) -> str:
    """Return ``edifact``, ``hl7`` or ``xml`` for ``data``; raise DecodeError otherwise.

    A leading UTF-8 byte order mark, blanks and an MLLP start byte are skipped.
    """
    head = data[:64].removeprefix(BOM).lstrip(b" \t\r\n\x0b")
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    raise DecodeError("unknown message format: expected EDIFACT (UNA/UNB), HL7 v2 (MSH) or XML (<)",
                      where="byte 1", code="E-FORMAT-UNKNOWN")
