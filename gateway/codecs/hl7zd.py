"""ZorgDomein's own HL7 v2.4 ORU^R01 <-> Document: the referral letter or request form as a
PDF, and attachments (v2); also the ``zd-hl7`` output format for institutions whose
hospital system takes ZorgDomein's HL7.

Facts (integrator.zorgdomein.com "HL7v2 specs": ORU (PDF), ORU (attachment v2), and
their sample messages): MSH-2 ``^_\\&`` (``_`` repeats) or ``^~\\&``; MSH-3
``ZorgDomein``; MSH-5/MSH-6 the receiver's application and facility *names*; MSH-10
the ZD number; PID-3 the BSN ``^^^NLMINBIZA^NNNLD`` (empty when unknown) or the
portal patient id ``^^^ZIS^PI``; PID-5 ``full&prefix&own^given^initials^^^^L``;
PV1 ``1|O``; ORC-1 ``NW`` (new) or ``XO`` (attachments to it); ORC-2 and OBR-2 the ZD
number; ORC-10 the acting and ORC-12/OBR-16 the responsible referrer
``AGB^&&name^initials^^^^^^VEKTIS``; ORC-14 the callback phone; OBR-4 the specialism
(``CIS^Cardiologie^ZORGDOMEIN``; in an attachments message the product); OBX NM with
OBX-3 ``VB`` (referral letter) or ``AF`` (request form) and no value; OBX ED
``^application^pdf^Base64^…`` the PDF; OBX FT without value, OBX-3 the product code.
Attachments: OBX ED ``BLOB^Bijlage^ZORGDOMEIN`` per file, its file name in the NTE
after it; OBR-13 and OBR-46 (with ``\\.br\\``) hold the referrer's notes on them.

Read as: ``VB`` a referral, ``AF`` a request, ORC-1 ``XO`` a supplement (the
attachments of the referral with that ZD number; OBR-4 is then its product when
ZorgDomein sent it), ``CA`` a cancellation; the sender is
ORC-12 (else OBR-16), its organisation ORC-21 (``name^^AGB^^^VEKTIS``, as ZorgDomein's
v2.5.1 messages write it) or ORC-17; the recipient MSH-6 ``name^AGB^VEKTIS``, or its
name (else MSH-5's) as a mailbox for the route tables. The control id is MSH-10 plus
the message kind (``ZD200046119/VB``), since ZorgDomein sends the letter, the request
form and the attachments of one referral under the same MSH-10.

Our conventions for writing (``zd-hl7``): MSH-3 ``gatewayd``, MSH-6 the recipient as
``name^AGB^VEKTIS`` (so the AGB code travels), MSH-10 derived from the document;
ORC-8 the number a supplement or cancellation refers to; ORC-13 the sender's
department; ORC-21/22 the sender's organisation and address; PV1-3 the recipient's
department and PV1-9 its practitioner; OBR-4 the specialism (else LOINC 11488-4) and
the product an OBX FT, also in a supplement; body lines as one OBX TX. Not written: the
receiving institution's own address and phone (ORU^R01 has no field for them; they
describe the receiver to itself). Teleconsult requests and answers are not
ZorgDomein ORU messages: EncodeError (the message waits in fallback).
"""

from gateway.codecs import hl7read as read
from gateway.codecs import hl7write as write
from gateway.codecs.hl7read import raw, value
from gateway.codecs.hl7syntax import Segments, field, segment
from gateway.document import (Code, Document, Kind, Letter, Recipient, Sender, require_agb)
from gateway.errors import DecodeError, EncodeError

MARKERS = {"VB": Kind.REFERRAL, "AF": Kind.REQUEST}
ORDER_KINDS = {"XO": Kind.SUPPLEMENT, "CA": Kind.CANCELLATION}
KIND_ORDER = {Kind.REFERRAL: "NW", Kind.REQUEST: "NW", Kind.SUPPLEMENT: "XO",
              Kind.CANCELLATION: "CA"}
KIND_MARKER = {Kind.REFERRAL: "VB", Kind.REQUEST: "AF"}
BLOB = ("BLOB", "Bijlage", "ZORGDOMEIN")
FIELD_PLACES = {"zd_number": "OBR-2/ORC-2/MSH-10", "sent_at": "MSH-7", "sender.agb": "ORC-12",
                "recipient.agb": "MSH-6", "patient.birth_date": "PID-7"}


def read_message(msg: Segments) -> tuple[str, Document]:
    """(control id, Document) of a ZorgDomein ORU^R01 (PDF or attachments)."""
    msh, orc, obr = msg.first("MSH"), msg.first("ORC"), read.required(msg, "OBR")
    attachments = _attachments(msg)
    marker = _marker(msg)
    kind = ORDER_KINDS.get(value(msg, orc, 1)) or MARKERS.get(marker, Kind.REFERRAL)
    number = read.number(msg, msg.warnings, value(msg, obr, 2), value(msg, orc, 2), raw(msh, 10))
    letter, product = _letter_and_product(msg)
    service = read.code(msg, obr, 4)
    if service is not None and service.code == write.LETTER_CODE[0]:
        service = None
    zd_product = kind is Kind.SUPPLEMENT and value(msg, msh, 3) == "ZorgDomein"
    notes = msg.text(raw(obr, 13)) + [line for rep in msg.repetitions(raw(obr, 46))
                                      for line in msg.text(rep.split(msg.cs)[1] if msg.cs in rep
                                                           else rep)]
    doc = read.build(
        msg, FIELD_PLACES, kind=kind, zd_number=number,
        sent_at=read.timestamp(raw(msh, 7), "MSH-7"), sender=sender(msg, orc, obr, msh),
        recipient=recipient(msg, msh), patient=read.patient(msg),
        body=tuple(notes) + read.letter(msg), in_reply_to=value(msg, orc, 8) or None,
        attachments=attachments, letter=letter, specialism=None if zd_product else service,
        product=service if zd_product else product)
    return f"{raw(msh, 10)}/{marker or value(msg, orc, 1) or 'ORU'}", doc


def sender(msg: Segments, orc: list[str] | None, obr: list[str] | None,
           msh: list[str]) -> Sender:
    """The responsible referrer (ORC-12, else OBR-16) and the organisation (ORC-21, ORC-17,
    else MSH-4)."""
    agb, name = read.xcn(msg, raw(orc, 12))
    if not agb:
        agb, name = read.xcn(msg, raw(obr, 16))
    if not agb:
        raise DecodeError("no ordering provider with an AGB code (ORC-12, OBR-16)",
                          where="ORC-12", code="E-HL7-MISSING")
    organisation, organisation_agb = value(msg, orc, 21, 0), value(msg, orc, 21, 2)
    if not organisation:
        organisation, organisation_agb = value(msg, orc, 17, 1), value(msg, orc, 17, 0)
    if not organisation:
        organisation, organisation_agb = read.facility(msg, msh, 4)
    department = value(msg, orc, 13, 0) or value(msg, orc, 13, 8)
    return Sender(agb, name, department, organisation,
                  organisation_agb if read.AGB_CODE.fullmatch(organisation_agb) else "",
                  read.address(msg, raw(orc, 22)), read.phone(msg, raw(orc, 14)))


def recipient(msg: Segments, msh: list[str]) -> Recipient:
    """The receiving facility: MSH-6 with an AGB code, or its name (else MSH-5's) as the
    mailbox the route tables map; PV1-3 the department, PV1-9 the practitioner."""
    name, agb = read.facility(msg, msh, 6)
    mailbox = "" if agb else (name or value(msg, msh, 5))
    if not agb and not mailbox:
        raise DecodeError("no recipient: MSH-6 and MSH-5 name no receiving facility",
                          where="MSH-6", code="E-HL7-MISSING")
    pv1 = msg.first("PV1")
    practitioner_agb, practitioner = read.xcn(msg, raw(pv1, 9))
    return Recipient(agb, name, value(msg, pv1, 3, 0), practitioner, practitioner_agb,
                     mailbox=mailbox)


def _marker(msg: Segments) -> str:
    """The letter/request-form marker: OBX-3 of the OBX NM without a value (placed)."""
    for obx in msg.all("OBX"):
        if raw(obx, 2) == "NM" and not raw(obx, 5) and value(msg, obx, 3) in MARKERS:
            msg.place(obx)
            return value(msg, obx, 3)
    return ""


def _letter_and_product(msg: Segments) -> tuple[Letter | None, Code | None]:
    """The PDF (the first OBX ED that is not a BLOB attachment) and the product (OBX-3 of
    the OBX FT without a value)."""
    letter, product = None, None
    for obx in msg.all("OBX"):
        if raw(obx, 2) == "ED" and value(msg, obx, 3) != BLOB[0] and letter is None:
            letter = Letter(*read.encapsulated(msg, obx))
        elif raw(obx, 2) == "FT" and not raw(obx, 5) and product is None:
            product = read.code(msg, obx, 3)
    return letter, product


def _attachments(msg: Segments) -> tuple:
    """Every OBX ED ``BLOB``, named by the NTE right after it (both placed)."""
    found = []
    ordered = msg.ordered
    for position, obx in enumerate(ordered):
        if obx[0] != "OBX" or raw(obx, 2) != "ED" or value(msg, obx, 3) != BLOB[0]:
            continue
        after = ordered[position + 1] if position + 1 < len(ordered) else None
        name = ""
        if after is not None and after[0] == "NTE":
            name = value(msg, after, 3)
            msg.place(after)
        found.append(read.attachment(msg, obx, name))
    return tuple(found)


def encode(doc: Document) -> bytes:
    """Write ``doc`` as ZorgDomein's ORU^R01 (see the module docstring)."""
    if doc.kind not in KIND_ORDER:
        raise EncodeError(f"ZorgDomein's ORU^R01 carries referrals, requests, supplements and "
                          f"cancellations, not a {doc.kind}", where="field kind",
                          code="E-ENCODE-KIND")
    require_agb(doc, "ZorgDomein HL7 ORU^R01")
    charset, codec = write.charset(doc)
    stamp = write.ts(doc.sent_at)
    s, r = doc.sender, doc.recipient
    referrer = field(s.agb, s.name, "", "", "", "", "", "", "VEKTIS")
    lines = [
        segment("MSH", "^~\\&", "gatewayd", write.hd(s.organisation, s.organisation_agb),
                field(r.name), write.hd(r.name, r.agb), stamp, "", field("ORU", "R01", "ORU_R01"),
                doc.fingerprint(20), "P", "2.4", "", "", "AL", "NE", "NLD", charset),
        write.pid(doc.patient, doc.zd_number, empty_bsn=True),
        segment("PV1", "1", "O", field(r.department), *[""] * 5,
                field(r.practitioner_agb, r.practitioner, "", "", "", "", "", "", "VEKTIS")
                if r.practitioner or r.practitioner_agb else ""),
        segment("ORC", KIND_ORDER[doc.kind], field(doc.zd_number), "", "", "", "", "",
                field(doc.in_reply_to or ""), stamp, "", "", referrer, field(s.department), field(s.phone),
                *[""] * 6, field(s.organisation, "", s.organisation_agb, "", "", "VEKTIS" if
                                 s.organisation_agb else ""), write.xad(s.address)),
        segment("OBR", "1", field(doc.zd_number), "", write.code(doc.specialism, write.LETTER_CODE),
                "", "", stamp, *[""] * 8, referrer),
    ]
    lines += _observations(doc)
    return write.message(lines, codec)


def _observations(doc: Document) -> list[str]:
    """OBX (and NTE) segments: marker, PDF, letter lines, product, attachments."""
    found = []
    if doc.kind in KIND_MARKER:
        found.append(("NM", field(KIND_MARKER[doc.kind], "", "123"), "", None))
    if doc.letter is not None:
        found.append(("ED", write.code(doc.product, write.LETTER_CODE),
                      write.ed_value(doc.letter.media_type, doc.letter.data), None))
    if doc.body:
        found.append(("TX", field(*write.LETTER_CODE), write.tx_value(doc.body), None))
    if doc.product is not None:
        found.append(("FT", write.code(doc.product), "", None))
    found += [("ED", field(*BLOB), write.ed_value(a.media_type, a.data), a.file_name)
              for a in doc.attachments]
    if not found:       # ORU^R01 needs an observation: an empty letter (it reads as no lines)
        found.append(("TX", field(*write.LETTER_CODE), "", None))
    lines = []
    for number, (kind, identifier, content, name) in enumerate(found, 1):
        lines.append(segment("OBX", str(number), kind, identifier, str(number) if name else "",
                             content, *[""] * 5, "F"))
        if name is not None:
            lines.append(segment("NTE", str(number), "P", field(name), "RE"))
    return lines
