"""Reading an input: the CPU-bound first stage of the intake, with no store in reach.

``read(raw, envelope, tables, limits)`` checks the size cap, sniffs the format,
counts segments, refuses an HL7 file cut mid-segment (when no frame vouches for
it), decodes, resolves mailboxes through the route tables, and checks control ids
and the identity's mandates. It touches no store: the intake then places what was
read against what is stored (new documents are routed and written in their
destination's format by ``route``), and commits.

The errors a sender can cause live here too: REFUSALS refuse an input whole
(nothing stored, an audit record notes it); a DecodeError keeps it as rejected.
"""

import hashlib
from dataclasses import dataclass, field, replace

from gateway import codecs, routes
from gateway.document import Document
from gateway.errors import DecodeError, EncodeError, GatewayError

MAX_CONTROL_ID = 199      # HL7 v2.5's MSH-10 length: longer than any format's control id
SEGMENT_ENDS = {"hl7": (b"\r", b"\n"), "xml": (b"<",)}   # upper bounds of segments, elements


class NotMandated(GatewayError):
    """The sending identity may not send for this AGB code (HL7 AR, HTTP 403)."""

    code = "E-NOT-MANDATED"


class DuplicateConflict(GatewayError):
    """A control id already used by this identity arrives with different content."""

    code = "E-DUPLICATE-CONFLICT"


class TooLarge(GatewayError):
    """Input over ``limits.max_message_bytes``: refused unread and not stored (HTTP 413)."""

    code = "E-TOO-LARGE"


REFUSALS = (NotMandated, DuplicateConflict, TooLarge)   # refused whole: nothing stored


@dataclass(frozen=True)
class Envelope:
    """Who sent the bytes, and for which AGB codes they may send (None: any, the local admin)."""

    identity: str
    channel: str
    mandates: frozenset[str] | None = None
    who: str = ""           # for the audit log, when not ``channel:identity`` (cli:<user>)
    framed: bool = True     # the transport vouches the input is whole (MLLP frame, HTTP
                            # length); False for files (SFTP): a cut-off HL7 file is refused


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_segments: int = 10_000


@dataclass(eq=False)
class Read:
    """What reading found: an input refused whole (``refusal``), unreadable (``error``),
    or its documents keyed by (identity, control id)."""

    envelope: Envelope
    content: str = ""                                  # SHA-256 of the raw input
    refusal: GatewayError | None = None
    error: DecodeError | None = None
    decoded: list = field(default_factory=list)        # ((identity, control id), Document)


def read(raw: bytes, envelope: Envelope, tables: routes.Tables, limits: Limits) -> Read:
    """Read ``raw`` as far as it can be without the store (see the module's docstring)."""
    found = Read(envelope)
    if len(raw) > limits.max_bytes:
        found.refusal = TooLarge(f"message is larger than {limits.max_bytes} bytes",
                                 where="byte 1")
        return found
    found.content = hashlib.sha256(raw).hexdigest()
    try:
        name = codecs.sniff(raw)
        _count_segments(name, raw, limits.max_segments)
        if not envelope.framed and name == "hl7":
            _check_whole_hl7(raw)
        decoded = [(control_id, routes.resolve(doc, tables))
                   for control_id, doc in _decode(name, raw)]
        for control_id, doc in decoded:
            _check_control_id(control_id)
            _check_letter(doc, limits)
        for _, doc in decoded:
            _authorise(doc, envelope)
    except DecodeError as exc:
        found.error = exc
        return found
    except REFUSALS as exc:
        found.refusal = exc
        return found
    found.decoded = [((envelope.identity, control_id or f"sha256:{found.content}/{part}"), doc)
                     for part, (control_id, doc) in enumerate(decoded)]  # without ids: content
    return found


def route(doc: Document, tables: routes.Tables, request: routes.Request | None = None
          ) -> tuple[routes.Route, bytes | None]:
    """The route for ``doc`` and its payload in the destination's format (None in
    fallback; a document the format cannot carry goes to fallback with the reason)."""
    found = routes.match(doc, tables, request)
    if found.fallback:
        return found, None
    try:
        return found, codecs.get(found.format).encode(doc)
    except EncodeError as exc:
        return replace(found, fallback=f"cannot be written as {found.format}: "
                                                   f"{exc}"), None


def _decode(name: str, raw: bytes) -> list:
    """The codec's documents; an error a codec did not foresee (a bug, not the sender's
    fault alone) is a DecodeError too, so the input is kept as rejected and no other
    input of its batch is held up — its text, which may quote the input, is not kept."""
    try:
        return codecs.get(name).decode_messages(raw)
    except (DecodeError, GatewayError):
        raise
    except Exception as exc:
        raise DecodeError(f"the {name} reader failed on this input ({type(exc).__name__})",
                          where="input", code="E-READ") from None


def _check_letter(doc: Document, limits: Limits) -> None:
    """A letter may not outgrow the limits its input had to keep (formatting commands and
    repetitions make lines)."""
    if len(doc.body) > limits.max_segments or \
            sum(map(len, doc.body)) > limits.max_bytes:
        raise TooLarge(f"the letter has more than {limits.max_segments} lines or "
                       f"{limits.max_bytes} characters", where="letter",
                       code="E-TOO-MANY-SEGMENTS")


def _count_segments(name: str, raw: bytes, limit: int) -> None:
    """Refuse (unread, unstored) an input with more segments (HL7, with its repetitions
    and escapes, which make letter lines; EDIFACT, with the terminator its UNA declares)
    or elements (XML, counted as '<') than ``limits.max_segments``: decoding millions of
    them would hold up every sender."""
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n\x0b")
    if name == "edifact":
        ends = (head[8:9],) if head.startswith(b"UNA") and len(head) > 8 else (b"'",)
    else:
        ends = SEGMENT_ENDS.get(name, ())
    count = max((raw.count(end) for end in ends), default=0)
    if name == "hl7" and head.startswith(b"MSH") and len(head) > 7:
        count += raw.count(head[5:6]) + raw.count(head[6:7]) // 2   # repetitions, escapes
    if count > limit:
        raise TooLarge(f"more than {limit} segments ({count})", where="limits.max_segments",
                       code="E-TOO-MANY-SEGMENTS")


def _authorise(doc: Document, envelope: Envelope) -> None:
    mandates = envelope.mandates
    if mandates is not None and not doc.sender.agb:
        raise NotMandated(f"identity {envelope.identity!r} sent for mailbox "
                          f"{routes.shown(doc.sender.mailbox)!r}, which mailboxes.csv does not map to "
                          "an AGB code", where="sender mailbox")
    if mandates is not None and doc.sender.agb not in mandates:
        raise NotMandated(f"identity {envelope.identity!r} may not send for AGB "
                          f"{doc.sender.agb}", where="sender AGB")


def _check_control_id(control_id: str | None) -> None:
    """Refuse a control id (MSH-10, UNB/UNH reference, Bundle.id) that is over-long or holds
    control characters: it is stored, logged and echoed."""
    if control_id and (len(control_id) > MAX_CONTROL_ID or not control_id.isprintable()):
        raise DecodeError(f"control id longer than {MAX_CONTROL_ID} characters or with control "
                          "characters", where="control id (MSH-10, UNB/UNH reference, Bundle.id)",
                          code="E-CONTROL-ID")


def _check_whole_hl7(raw: bytes) -> None:
    """An HL7 file must end with its last segment's terminator: a file cut off mid-segment
    (an interrupted upload that the client closed) decodes to a shorter message, so it is
    refused (kept as rejected). A cut exactly between segments cannot be seen: senders
    should upload as .part and rename (README)."""
    if not raw.rstrip(b" \t\x1a").endswith((b"\r", b"\n", b"\x1c")):
        raise DecodeError("the file does not end with a segment terminator (CR or LF): cut "
                          "off? upload as NAME.part and rename when complete",
                          where="end of file", code="E-HL7-TRUNCATED")
