"""The ``hl7`` codec: HL7 v2 messages <-> Document, and ACKs.

Reading picks the dialect module by MSH-9 (message type and trigger event) from
``DIALECTS``; each reads one message family into a Document and returns its control
id. Writing is REF^I12 / RRI^I12 (``hl7ref``); ZorgDomein's ORU^R01 is the separate
output format ``zd-hl7`` (``zdhl7``). Syntax, character sets and escapes are
``hl7syntax``; the fields all dialects share are ``hl7read``/``hl7write``.

| MSH-9 | dialect | read as |
|---|---|---|
| REF^I12, RRI^I12 | ``hl7ref`` | referral, request, teleconsult request, supplement, cancellation; answer |
| ORU^R01 | ``hl7zd`` | ZorgDomein's referral letter or request form (PDF), attachments (v2) |
| ORM^O01 | ``hl7orm`` | ZorgDomein's diagnostic request (v2.4 and the v2.5.1 "V3" layout) |
| MDM^T02 | ``hl7mdm`` | a letter as Epic sends it (TXA + OBX TX or a PDF) |

ACKs: MSA-2 is the acknowledged MSH-10; an error adds MSA-3 and an ERR segment.
"""

import datetime as dt
import hashlib
import re

from gateway.codecs import hl7mdm, hl7orm, hl7ref, hl7syntax, hl7zd
from gateway.codecs.hl7read import raw
from gateway.codecs.hl7syntax import Segments, field, segment
from gateway.codecs.hl7write import ts
from gateway.document import Document, local_time
from gateway.errors import DecodeError, GatewayError

DIALECTS = {("REF", "I12"): hl7ref, ("RRI", "I12"): hl7ref, ("ORU", "R01"): hl7zd,
            ("ORM", "O01"): hl7orm, ("MDM", "T02"): hl7mdm}
ERROR_CODES = {"E-HL7-TYPE": "200", "E-HL7-MISSING": "101"}
encode = hl7ref.encode


def decode(data: bytes) -> list[Document]:
    """Decode one or more HL7 v2 messages; raise DecodeError naming segment and field."""
    return [doc for _, doc in decode_messages(data)]


def decode_messages(data: bytes) -> list[tuple[str, Document]]:
    """Like decode, each Document with its control id (MSH-10; see each dialect)."""
    return [_dialect(msg).read_message(msg) for msg in hl7syntax.split_messages(data)]


def _dialect(msg: Segments):
    parts = list(map(msg.clean, raw(msg.first("MSH"), 9).split(msg.cs)[:2]))
    key = (parts[0], parts[1] if len(parts) > 1 else "")
    if key not in DIALECTS:
        taken = ", ".join(f"{kind}^{event}" for kind, event in DIALECTS)
        raise DecodeError(f"message type {'^'.join(key)[:20]!r} is not taken (we take {taken})",
                          where="MSH-9", code="E-HL7-TYPE")
    return DIALECTS[key]


def ack(message: bytes, code: str, error: GatewayError | str | None = None,
        now: dt.datetime | None = None) -> bytes:
    """An ACK for ``message`` with MSA-1 ``code`` (AA, AE or AR) and MSA-2 = its MSH-10.

    With ``error``, MSA-3 and an ERR segment say what was wrong. A message too
    broken to read still gets an ACK, with an empty MSA-2.
    """
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"ACK code must be AA, AE or AR, not {code!r}")
    msh = _lenient_msh(message)
    get = lambda n: _echoed(msh[n]) if n < len(msh) else ""  # noqa: E731
    control_id = get(10)
    event = get(9).split("^")[1] if "^" in get(9) else ""
    stamp = ts(local_time(now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0))
    own_id = "A" + hashlib.sha256(message + code.encode()).hexdigest()[:19]
    lines = [segment("MSH", "^~\\&", get(5) or "gatewayd", get(6), get(3), get(4), stamp, "",
                     field("ACK", event, "ACK"), own_id, "P", "2.4", "", "", "", "", "NLD",
                     "8859/1"),
             segment("MSA", code, control_id, field(_error_text(error)[:80]) if error else "")]
    if error:
        err_code = ERROR_CODES.get(getattr(error, "code", ""), "207")
        lines.append(segment("ERR", field("", "", "", (err_code, _error_text(error), "HL70357"))))
    return ("\r".join(lines) + "\r").encode("latin-1", errors="replace")


ECHO_LENGTH = 199      # MSH-10's length from HL7 v2.5 on; the cap for every field we echo


def _echoed(value: str) -> str:
    """A sender's MSH field as the ACK repeats it: control characters dropped, capped."""
    value = value[:ECHO_LENGTH]
    return value if value.isprintable() else "".join(c for c in value if c.isprintable())


def _error_text(error: GatewayError | str) -> str:
    return str(error).replace("\r", " ").replace("\n", " ")


def _lenient_msh(message: bytes) -> list[str]:
    """MSH fields of ``message``, rewritten to the standard separators; empty when
    there is no MSH to read."""
    start = message.find(b"MSH")
    line = re.split(rb"[\r\n]", message[start:], maxsplit=1)[0].decode("latin-1")
    if start < 0 or len(line) < 8:
        return []
    theirs = line[3:8]
    if theirs != "|^~\\&":
        line = "".join(hl7syntax.SEPARATORS[theirs.index(c)] if c in theirs else hl7syntax.escape(c)
                       for c in line[8:])
        line = "MSH|^~\\&" + line
    fields = line.split("|")
    fields.insert(1, "|")
    return fields
