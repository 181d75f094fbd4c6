"""HL7 MDM^T02 (document notification and content, as Epic sends letters) -> Document.

Facts (HL7 v2.4/v2.5 chapter 9; published MDM^T02 samples): MSH, EVN, PID, PV1, TXA,
OBX…: TXA-2 the document type, TXA-4 the activity time, TXA-5 the primary activity
provider, TXA-9 the originator (author), TXA-12 the unique document number, TXA-13
the parent document number; the content is OBX TX lines (or FT, ST), or an OBX ED
with the document (a PDF).

Our conventions: the letter's sender is the originator TXA-9 (else TXA-5, else the
attending doctor PV1-7) with an AGB code, its organisation MSH-4; the recipient is
MSH-6 (``name^AGB^VEKTIS``, or the name as a mailbox for the route tables) with the
referring doctor PV1-8 as its practitioner. TXA-12 is the document's number when it
is a ZD number (a ``…_ANTW`` number makes a teleconsult answer, as in MEDVRI), TXA-13
the number it refers to; without one the letter gets a gateway number. Text OBX and
NTE are the letter lines; the first OBX ED is the letter as a document, further ones
are attachments. The control id is MSH-10.
"""

from gateway.codecs import hl7read as read
from gateway.codecs.hl7read import raw, value
from gateway.codecs.hl7syntax import Segments
from gateway.document import ANSWER_SUFFIX, Document, Kind, Letter, Recipient, Sender, zd_problem
from gateway.errors import DecodeError

FIELD_PLACES = {"zd_number": "TXA-12", "in_reply_to": "TXA-13", "sent_at": "MSH-7",
                "sender.agb": "TXA-9", "recipient.agb": "MSH-6", "patient.birth_date": "PID-7"}


def read_message(msg: Segments) -> tuple[str, Document]:
    """(MSH-10, Document) of an MDM^T02."""
    msh, txa, pv1 = msg.first("MSH"), read.required(msg, "TXA"), msg.first("PV1")
    unique, parent = value(msg, txa, 12), value(msg, txa, 13)
    answer = not zd_problem(unique, answer=True)
    number = unique if answer else read.number(msg, msg.warnings, unique)
    in_reply_to = unique.removesuffix(ANSWER_SUFFIX) if answer else (
        parent if not zd_problem(parent) else None)
    letter, attachments = None, []
    for obx in msg.all("OBX"):
        if raw(obx, 2) == "ED":
            if letter is None:
                letter = Letter(*read.encapsulated(msg, obx))
            else:
                attachments.append(read.attachment(msg, obx))
    return raw(msh, 10), read.build(
        msg, FIELD_PLACES, kind=Kind.TELECONSULT_ANSWER if answer else Kind.REFERRAL,
        zd_number=number, sent_at=read.timestamp(raw(msh, 7), "MSH-7"),
        sender=_sender(msg, txa, pv1, msh), recipient=_recipient(msg, msh, pv1),
        patient=read.patient(msg), body=read.letter(msg), in_reply_to=in_reply_to,
        attachments=tuple(attachments), letter=letter)


def _sender(msg: Segments, txa: list[str], pv1: list[str] | None, msh: list[str]) -> Sender:
    for fields, n in ((txa, 9), (txa, 5), (pv1, 7)):
        agb, name = read.xcn(msg, raw(fields, n))
        if agb:
            organisation, organisation_agb = read.facility(msg, msh, 4)
            return Sender(agb, name, "", organisation, organisation_agb)
    raise DecodeError("no author with an AGB code (TXA-9, TXA-5, PV1-7)", where="TXA-9",
                      code="E-HL7-MISSING")


def _recipient(msg: Segments, msh: list[str], pv1: list[str] | None) -> Recipient:
    name, agb = read.facility(msg, msh, 6)
    if not agb and not name:
        raise DecodeError("no recipient: MSH-6 names no receiving facility", where="MSH-6",
                          code="E-HL7-MISSING")
    practitioner_agb, practitioner = read.xcn(msg, raw(pv1, 8))
    return Recipient(agb, name, "", practitioner, practitioner_agb, mailbox="" if agb else name)
