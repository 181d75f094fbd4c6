"""EDIFACT MEDVRI (the Dutch GP referral letter) <-> Document.

Layout (facts, formats.md): UNB UNH GGA DET PID? PAD? TXT+ GGO? UNT UNZ;
GGA/GGO: 1 person, 2 department, 3 institution, 4 address, 5 phone; address
composite street:house number:PO box:city:postcode:province:country; PID:
1 birth date, 2 sex M/V/U, 3 name, 4 the sender's and 5 the receiver's patient
reference, the BSN as ``BSN``+9 digits in element 5 (also read from element 4).

PID element 3 (facts from two published readers and writers: mmerlijn/msg-edifact's
PID segment and Zato's ``zato.edifact.nl`` PatientName, which cites the Nictiz 3i
specification): components 1:2 are the family name *in use* and its prefix
(Zato: "married name"; mmerlijn writes a man's only surname there,
``Groot:de::::J``), components 3:4 the own (birth) name and prefix when the name in
use is another (Zato: "maiden name"; mmerlijn reads them as ``own_lastname`` for a
woman), 5 the given name, 6 the initials. So we read: with components 3:4 present,
1:2 are the partner's name and 3:4 the own name; without, 1:2 are the own name
(also an older writer's ``::Groot:de`` reads as the own name). We write the own
name in 1:2, or, for a patient with a partner name, the partner's name in 1:2 and
the own name in 3:4; a partner name without an own family name cannot be written.

Our conventions:
- UNB sender is ``sender.agb``, UNB recipient is ``recipient.agb``.
- Header lines at the top of the letter carry what MEDVRI has no field for:
  ``ZD-nummer: ZD…`` (``Gatewaynummer: GW…`` for a number the gateway gave), ``AGB-organisatie: …`` (the sender's
  organisation) and ``AGB-zorgverlener: …`` (the recipient practitioner).
  Readers remove such lines wherever they stand. Without a ``ZD-nummer:``
  line the first bare ``ZD\\d{8,9}(_ANTW)?`` in any line is the number (the
  line stays in the body), an ``_ANTW`` number before a plain one, since an
  answer also names its request; with none at all the gateway gives the
  interchange a number of its own (``GW`` + 10 digits of its SHA-256).
- A ZD number ending in ``_ANTW`` makes a teleconsult answer; anything else is
  a referral. Other kinds, attachments and ``in_reply_to`` on a referral
  cannot be written (EncodeError).
- DET years 00-79 are 20xx, 80-99 are 19xx; DET carries minutes, so seconds
  are not written. A PO box without a street reads as street ``Postbus``;
  province is not kept. TXT components and elements split by unescaped
  separators are joined back with the separator.
- Letter lines longer than 70 characters are wrapped at word boundaries.
  Output is UNOA when every character is ASCII, UNOC (ISO-8859-1) otherwise.
"""

import datetime as dt
import re
from dataclasses import replace

from gateway.codecs import edisyntax
from gateway.codecs.edisyntax import Interchange, Message, Segment
from gateway.codecs.medvriout import LINE_WIDTH, encode
from gateway.document import (ANSWER_SUFFIX, Address, Document, Kind, Patient, Recipient,
                              Sender, Sex, agb_problem, bsn_problem, gateway_number,
                              normalize_bsn, zd_problem)
from gateway.errors import DocumentError

LAYOUT = (("UNH", 1, 1), ("GGA", 1, 1), ("DET", 0, 1), ("PID", 0, 1), ("PAD", 0, 1),
          ("TXT", 1, None), ("GGO", 0, 1), ("UNT", 1, 1))
HEADER_LINES = {"ZD-nummer": "zd_number", "Gatewaynummer": "zd_number",
                "AGB-organisatie": "organisation_agb", "AGB-zorgverlener": "practitioner_agb"}
_MAILBOX = re.compile(r"[A-Za-z0-9]{1,35}")
_HEADER = re.compile(r"\s*(%s):\s*(\S+)\s*" % "|".join(HEADER_LINES))
_BARE_ZD = re.compile(r"ZD[0-9]{8,9}(?:_ANTW)?(?![0-9])")
SEX_IN = {"M": Sex.MALE, "V": Sex.FEMALE, "U": Sex.UNKNOWN, "": Sex.UNKNOWN}
# Components per element of each content segment (Nictiz 3i layout, as Zato's models give
# it); 1 marks free text, whose unescaped ':' is kept. More is E-EDI-UNPLACED.
WIDTHS = {"GGA": (1, 1, 1, 7, 1), "GGO": (1, 1, 1, 7, 1), "DET": (3, 2), "PID": (3, 1, 6, 1, 1),
          "PAD": (7, 1)}


def decode(data: bytes) -> list[Document]:
    """Decode a MEDVRI interchange into one Document per message; raise DecodeError."""
    return [doc for _, doc in decode_messages(data)]


def decode_messages(data: bytes) -> list[tuple[str, Document]]:
    """Like decode, each Document with its control id ``<UNB reference>/<UNH reference>``."""
    interchange = edisyntax.read(data)
    return [(f"{m.unb.get(5)}/{m.segments[0].get(1)}", _document(interchange, m))
            for m in interchange.messages]


def _document(interchange: Interchange, message: Message) -> Document:
    unb = message.unb
    unh = message.segments[0]
    if unh.get(2) != "MEDVRI":
        raise interchange.error(f"message type {unh.get(2)[:10]!r} is not MEDVRI (we take MEDVRI "
                                "only)", unh, 2, code="E-EDI-TYPE")
    segments = _check_layout(interchange, message)
    warnings = list(interchange.warnings)
    _check_unb_date(interchange, unb)
    headers, body, bare_zd = _letter(interchange, segments["TXT"])
    zd = headers.get("zd_number") or bare_zd
    if not zd:
        zd = gateway_number(f"{unb.get(2)}/{unb.get(5)}/{unh.get(1)}/{interchange.text}"
                            .encode("latin-1"))
        warnings.append(f"no ZD number in the letter; gateway number {zd} given")
    if not segments["DET"]:
        warnings.append("no DET segment; the UNB date and time are taken as the sending time")
    sender = _party(interchange, segments["GGA"][0], unb, 2, Sender)
    sender = replace(sender, organisation_agb=headers.get("organisation_agb", ""))
    recipient = _party(interchange, (segments["GGO"] or [None])[0], unb, 3, Recipient)
    recipient = replace(recipient, practitioner_agb=headers.get("practitioner_agb", ""))
    answer = zd.endswith(ANSWER_SUFFIX)
    try:
        return Document(
            kind=Kind.TELECONSULT_ANSWER if answer else Kind.REFERRAL,
            zd_number=zd,
            sent_at=_sent_at(interchange, segments["DET"][0]) if segments["DET"] else
            _unb_time(unb),
            sender=sender,
            recipient=recipient,
            patient=_patient(interchange, segments["PID"], segments["PAD"], warnings),
            body=tuple(body),
            in_reply_to=zd.removesuffix(ANSWER_SUFFIX) if answer else None,
            warnings=tuple(warnings),
        )
    except DocumentError as exc:
        raise interchange.error(f"{exc.where} {exc.message}", unh, code=exc.code) from None


def _check_placed(interchange: Interchange, segment: Segment) -> None:
    """Refuse an element or component a MEDVRI segment has no place for (E-EDI-UNPLACED)."""
    widths = WIDTHS[segment.tag]
    for number, components in enumerate(segment.elements, 1):
        width = widths[number - 1] if number <= len(widths) else 0
        if width != 1 and any(components[width:]):
            component = next(i for i, c in enumerate(components[width:], width + 1) if c)
            raise interchange.error(f"{segment.tag} {'component' if width else 'element'} has no "
                                    "place in the document and would be lost", segment, number,
                                    component if width else 0, code="E-EDI-UNPLACED")


def _text(segment: Segment, element: int) -> str:
    """A free-text element, an unescaped ':' in it kept as written."""
    return ":".join(segment.components(element)).strip()


def _check_layout(interchange: Interchange, message: Message) -> dict[str, list[Segment]]:
    """Check MEDVRI segment order; return the segments grouped by tag."""
    segments = message.segments
    found: dict[str, list[Segment]] = {}
    index = 0
    for tag, least, most in LAYOUT:
        start = index
        while index < len(segments) and segments[index].tag == tag and (
                most is None or index - start < most):
            index += 1
        if index - start < least:
            raise interchange.error(f"missing {tag} segment", segments[index])
        found[tag] = segments[start:index]
    if index < len(segments):
        raise interchange.error(f"unexpected {segments[index].tag} segment here", segments[index])
    for segment in segments:
        if segment.tag in WIDTHS:
            _check_placed(interchange, segment)
    return found


def _check_unb_date(interchange: Interchange, unb: Segment) -> None:
    try:
        _unb_time(unb)
    except ValueError:
        raise interchange.error("UNB date/time is not a real YYMMDD:HHMM date", unb, 4,
                                code="E-EDI-DATE") from None


def _unb_time(unb: Segment) -> dt.datetime:
    """The UNB preparation date and time (YYMMDD:HHMM; years 00-79 are 20xx)."""
    stamp = unb.get(4, 0) + unb.get(4, 1)
    if len(stamp) != 10 or not (stamp.isascii() and stamp.isdigit()):
        raise ValueError(stamp)
    year = int(stamp[:2])
    return dt.datetime(year + (2000 if year < 80 else 1900), int(stamp[2:4]), int(stamp[4:6]),
                       int(stamp[6:8]), int(stamp[8:10]))


def _sent_at(interchange: Interchange, det: Segment) -> dt.datetime:
    parts = det.components(1) + [""] * 3
    time = det.components(2) + [""] * 2
    if not all(p.isascii() and p.isdigit() and len(p) == 2 for p in parts[:3] + time[:2]):
        raise interchange.error("DET date must be YY:MM:DD and time HH:MM", det, 1, code="E-EDI-DATE")
    year = int(parts[0])
    try:
        return dt.datetime(year + (2000 if year < 80 else 1900), int(parts[1]), int(parts[2]),
                           int(time[0]), int(time[1]))
    except ValueError:
        raise interchange.error("DET date/time is not a real date", det, 1, code="E-EDI-DATE") from None


def _letter(interchange: Interchange, txts: list[Segment]):
    """Return (header values, body lines, first bare ZD number) from the TXT segments."""
    headers: dict[str, str] = {}
    body: list[str] = []
    bare_zd = ""
    for txt in txts:
        if any(not (q.isascii() and q.isdigit()) for q in txt.qualifier):
            raise interchange.error("TXT line number must be digits", txt, 0)
        line = "+".join(":".join(components) for components in txt.elements)
        header = _HEADER.fullmatch(line)
        if header and HEADER_LINES[header[1]] not in headers:
            headers[HEADER_LINES[header[1]]] = _header_value(interchange, txt, header)
            continue
        body.append(line)
        for found in _BARE_ZD.finditer(line):
            answer, kept_answer = found[0].endswith(ANSWER_SUFFIX), bare_zd.endswith(ANSWER_SUFFIX)
            if not bare_zd or (answer and not kept_answer):
                bare_zd = found[0]
    return headers, body, bare_zd


def _header_value(interchange: Interchange, txt: Segment, header: re.Match) -> str:
    value = header[2]
    name = HEADER_LINES[header[1]]
    ok = not zd_problem(value.removesuffix(ANSWER_SUFFIX)) if name == "zd_number" \
        else not agb_problem(value)
    if not ok:
        raise interchange.error(f"{header[1]} line holds no valid value", txt, 1,
                                code="E-EDI-ZD" if name == "zd_number" else "E-EDI-AGB")
    return value


def _party(interchange: Interchange, segment: Segment | None, unb: Segment, unb_element: int, cls):
    """Build a Sender (from GGA) or Recipient (from GGO) addressed by the UNB: an AGB code
    (8 digits) or a network mailbox (letters and digits, up to 35)."""
    address = unb.get(unb_element)
    agb, mailbox = (address, "") if not agb_problem(address) else ("", address)
    if mailbox and not _MAILBOX.fullmatch(mailbox):
        raise interchange.error(f"UNB {'sender' if unb_element == 2 else 'recipient'} "
                                f"{address[:35]!r} is neither an AGB code (8 digits) nor a mailbox "
                                "(letters and digits)", unb, unb_element, code="E-EDI-AGB")
    if segment is None:
        return cls(agb=agb, mailbox=mailbox)
    person, department, institution = (_text(segment, i) for i in (1, 2, 3))
    place, phone = _address(segment.components(4)), _text(segment, 5)
    if cls is Sender:
        return Sender(agb, person, department, institution, "", place, phone, mailbox)
    return Recipient(agb, institution, department, person, "", place, phone, mailbox)


def _address(components: list[str]) -> Address | None:
    street, number, po_box, city, postcode, _province, country = (
        c.strip() for c in (components + [""] * 7)[:7])
    if po_box and not street:
        street, number = "Postbus", po_box
    address = Address(street, number, postcode, city, country)
    return address if any((street, number, postcode, city, country)) else None


def _patient(interchange: Interchange, pids: list[Segment], pads: list[Segment],
             warnings: list[str]) -> Patient:
    if not pids:
        return Patient()
    pid = pids[0]
    bsn, portal_id = "", ""
    for element in (5, 4):
        value = _text(pid, element)
        if value.upper().startswith("BSN"):
            bsn = normalize_bsn(value[3:])
            if problem := bsn_problem(bsn):
                raise interchange.error(f"BSN {problem}", pid, element, code="E-EDI-BSN")
        elif value and element == 5:
            portal_id = value          # the receiver's own patient number
        elif value:
            warnings.append("PID element 4 (the sender's own patient number) is not kept")
    sex = pid.get(2).strip().upper()
    if sex not in SEX_IN:
        raise interchange.error("sex must be M, V or U", pid, 2, code="E-EDI-SEX")
    name = [c.strip() for c in (pid.components(3) + [""] * 6)[:6]]
    in_use, own = name[0:2], name[2:4]
    partner = in_use if any(own) else ["", ""]
    own = own if any(own) else in_use
    pad = pads[0] if pads else None
    return Patient(
        bsn=bsn, birth_date=_birth_date(interchange, pid), sex=SEX_IN[sex],
        partner_name=partner[0], partner_prefix=partner[1], family_name=own[0],
        family_prefix=own[1], given_name=name[4], initials=name[5],
        address=_address(pad.components(1)) if pad else None,
        phone=_text(pad, 2) if pad else "", portal_id=portal_id,
    )


def _birth_date(interchange: Interchange, pid: Segment) -> dt.date | None:
    parts = pid.components(1)
    if not any(parts):
        return None
    try:
        if len(parts) != 3 or len(parts[0]) != 4 or not all(
                p.isascii() and p.isdigit() and len(p) <= 4 for p in parts):
            raise ValueError
        return dt.date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        raise interchange.error("birth date is not a real YYYY:MM:DD date", pid, 1,
                                code="E-EDI-DATE") from None


__all__ = ["decode", "decode_messages", "encode", "LINE_WIDTH"]
