"""HL7 v2.4 REF^I12 / RRI^I12 (the standard's referral pair) <-> Document.

Facts (formats.md): MSH-12 2.4, MSH-17 NLD, MSH-18 8859/1; BSN in PID-3 as
``<bsn>^^^NLMINBIZA^NNNLD``; PID-5.1 as full name & own prefix & own name &
partner prefix & partner name; PRD-1 roles RP referring, RT referred-to,
CP consulting, PP primary care provider.

Reading, as senders write it: the sender is the PRD with role RP (REF) or CP
(RRI), else PP (REF) or RT (RRI), else the ordering provider (ORC-12, OBR-16) with
an AGB code; the sender's AGB is PRD-7 (``<AGB>^AGB``, ``^VEKTIS``) or the XCN in
OBR-16/ORC-12. The recipient institution is MSH-6 ``name^AGB^VEKTIS``, or, without
an AGB code, MSH-6's name as a mailbox for the route tables (mailboxes.csv); its
details come from the PRD with role RT (REF) or RP (RRI), else CP/PP. A REF without
a ZD number gets a gateway number. An RRI without its own ``_ANTW`` number answers
RF1-6 with that number plus ``_ANTW``.

Our conventions:
- Referrals, requests, teleconsult requests, supplements and cancellations are
  REF^I12, answers RRI^I12. RF1-1 status: ``P`` pending, ``C`` cancellation, ``S``
  supplement (local codes), ``A`` accepted (answers); RF1-3 type ``TC`` (local)
  marks a teleconsult request, ``RQ`` (local) a diagnostic request, ``Med`` the rest;
  RF1-10 (referral reason) is ZorgDomein's product code.
- REF: RF1-6 is the document's number, RF1-11 the number it refers to. RRI: RF1-6
  is the request's number, RF1-11 the answer's own ``_ANTW`` number. A ZD number's
  assigning authority is ``ZorgDomein``, a gateway number's ``gatewayd``.
- PRD-2.1 holds the person's name whole, PRD-4 is department^^^organisation, PRD-7
  ``<AGB>^AGB`` the person's AGB. MSH-4 is the sender's organisation
  (name^AGB^VEKTIS). OBR-16 repeats the sender as XCN with VEKTIS; OBR-4 is the
  specialism when there is one, else LOINC 11488-4 (consultation note).
- PID-3 holds the BSN, the portal patient id (``^^^ZIS^PI``) and the document number
  (``^^^ZorgDomein^VN``); PID-5 is ``""`` (null) when the patient has no name, as
  PID-5 is required. PID-5.2 is the given name, PID-5.3 the initials. Addresses:
  XAD-1 street line & street & house number, XAD-2 (a house number addition,
  appended when read), XAD-3 city, XAD-5 postcode, XAD-6 country. Phones in XTN-1
  (XTN-12 read first when present).
- Letter lines are one OBX of type TX, one repetition per line (read: any text OBX
  and NTE, see hl7read). A PDF letter is an OBX ED with OBX-3 11488-4; attachments
  are OBX ED with OBX-3 ``ATT^<file name>^L``.
- MSH-7 carries the UTC offset of Dutch local time; MSH-18 is 8859/1 unless the
  content needs more, then ``UNICODE UTF-8``. MSH-10 is derived from the document, so
  encoding the same document twice gives the same message.
"""

from gateway.codecs import hl7read as read
from gateway.codecs import hl7write as write
from gateway.codecs.hl7read import raw, value
from gateway.codecs.hl7syntax import Segments, field, segment
from gateway.document import (Document, Kind, Letter, Recipient, Sender, answer_number,
                              require_agb)
from gateway.errors import DecodeError

ROLES = {"REF": (("RP", "PP"), ("RT", "CP")), "RRI": (("CP", "RT"), ("RP", "PP"))}
ZD_FIELDS = {"REF": (6, 11), "RRI": (11, 6)}                 # RF1 fields of (own ZD, in_reply_to)
ROLE_NAMES = {"RP": "Referring Provider", "RT": "Referred to Provider", "CP": "Consulting Provider"}
STATUS_KIND = {"C": Kind.CANCELLATION, "S": Kind.SUPPLEMENT}
TYPE_KIND = {"TC": Kind.TELECONSULT_REQUEST, "RQ": Kind.REQUEST}
KIND_STATUS = {Kind.CANCELLATION: ("C", "Cancelled", "L"), Kind.SUPPLEMENT: ("S", "Supplement", "L"),
               Kind.TELECONSULT_ANSWER: ("A", "Accepted", "HL70283")}
KIND_TYPE = {Kind.TELECONSULT_REQUEST: ("TC", "Teleconsult", "L"), Kind.REQUEST: ("RQ", "Request", "L")}
FIELD_PLACES = {"zd_number": "RF1-6/RF1-11", "in_reply_to": "RF1-6/RF1-11", "sent_at": "MSH-7",
                "sender.agb": "PRD-7", "recipient.agb": "MSH-6", "patient.birth_date": "PID-7"}


def read_message(msg: Segments) -> tuple[str, Document]:
    """(MSH-10, Document) of a REF^I12 or RRI^I12."""
    msh = msg.first("MSH")
    structure = value(msg, msh, 9)
    rf1 = read.required(msg, "RF1")
    own, other = (value(msg, rf1, n) for n in ZD_FIELDS[structure])
    warnings = msg.warnings
    if structure == "RRI":
        in_reply_to = read.number(msg, warnings, other)
        if not own:
            own = answer_number(in_reply_to)
            warnings.append(f"RF1-11 holds no answer number; {own} used")
    else:
        own = read.number(msg, warnings, own)
        in_reply_to = other if other[:2] in ("ZD", "GW") else None
        if other and in_reply_to is None:
            warnings.append("RF1-11 holds no ZD number; the reference is not kept")
    letter, attachments = _documents(msg)
    obr = msg.first("OBR")
    service = None if raw(obr, 4).startswith(write.LETTER_CODE[0] + msg.cs) else \
        read.code(msg, obr, 4)
    providers = _providers(msg)
    return raw(msh, 10), read.build(
        msg, FIELD_PLACES, kind=_kind(msg, rf1, structure), zd_number=own,
        sent_at=read.timestamp(raw(msh, 7), "MSH-7"), sender=_sender(msg, structure, msh, providers),
        recipient=_recipient(msg, structure, msh, providers), patient=read.patient(msg),
        body=read.letter(msg), in_reply_to=in_reply_to, attachments=attachments, letter=letter,
        specialism=service if service and service.code != write.LETTER_CODE[0] else None,
        product=read.code(msg, rf1, 10))


def _kind(msg: Segments, rf1: list[str], structure: str) -> Kind:
    if structure == "RRI":
        return Kind.TELECONSULT_ANSWER
    status = value(msg, rf1, 1)
    if status in STATUS_KIND:
        return STATUS_KIND[status]
    return TYPE_KIND.get(value(msg, rf1, 3), Kind.REFERRAL)


def _provider(providers: dict[str, list[str]], roles: tuple[str, ...]) -> list[str] | None:
    """The PRD with the first of ``roles`` any PRD has (``providers``: PRD by role)."""
    return next((providers[role] for role in roles if role in providers), None)


def _providers(msg: Segments) -> dict[str, list[str]]:
    """The first PRD of each role (PRD-1)."""
    found: dict[str, list[str]] = {}
    for prd in msg.all("PRD"):
        found.setdefault(value(msg, prd, 1), prd)
    return found


def _ordering_provider(msg: Segments) -> tuple[str, str]:
    """(AGB, name) of the ordering provider in ORC-12 or OBR-16."""
    for tag, n in (("ORC", 12), ("OBR", 16)):
        agb, name = read.xcn(msg, raw(msg.first(tag), n))
        if agb:
            return agb, name
    return "", ""


def _sender(msg: Segments, structure: str, msh: list[str], providers: dict) -> Sender:
    organisation, organisation_agb = read.facility(msg, msh, 4)
    prd = _provider(providers, ROLES[structure][0])
    if prd is None:
        ordering_agb, ordering_name = _ordering_provider(msg)
        if not ordering_agb:
            raise DecodeError(f"no sender: no PRD with role {' or '.join(ROLES[structure][0])} and "
                              "no ordering provider with an AGB code", where="PRD-1",
                              code="E-HL7-MISSING")
        return Sender(ordering_agb, ordering_name, "", organisation, organisation_agb)
    location = msg.components(prd, 4) + [""] * 4
    return Sender(read.id_agb(msg, raw(prd, 7)) or _ordering_provider(msg)[0],
                  read.person_name(msg, prd, 2),
                  msg.clean(location[0]),
                  msg.clean(location[3].split(msg.ss)[0]) or organisation,
                  organisation_agb, read.address(msg, raw(prd, 3)), read.phone(msg, raw(prd, 5)))


def _recipient(msg: Segments, structure: str, msh: list[str], providers: dict) -> Recipient:
    name, agb = read.facility(msg, msh, 6)
    if not agb and not name:
        raise DecodeError("no recipient: MSH-6 names no receiving facility", where="MSH-6",
                          code="E-HL7-MISSING")
    prd = _provider(providers, ROLES[structure][1])
    if prd is None:
        return Recipient(agb, name, mailbox="" if agb else name)
    location = msg.components(prd, 4) + [""] * 4
    return Recipient(agb, msg.clean(location[3].split(msg.ss)[0]) or name,
                     msg.clean(location[0]), read.person_name(msg, prd, 2),
                     read.id_agb(msg, raw(prd, 7)), read.address(msg, raw(prd, 3)),
                     read.phone(msg, raw(prd, 5)), "" if agb else name)


def _documents(msg: Segments):
    """(PDF letter, attachments) from the OBX of type ED."""
    letter, attachments = None, []
    for obx in msg.all("OBX"):
        if raw(obx, 2) != "ED":
            continue
        if value(msg, obx, 3) == write.LETTER_CODE[0] and letter is None:
            letter = Letter(*read.encapsulated(msg, obx))
        else:
            attachments.append(read.attachment(msg, obx))
    return letter, tuple(attachments)


def encode(doc: Document) -> bytes:
    """Write ``doc`` as REF^I12 (RRI^I12 for an answer) with CR segment ends."""
    require_agb(doc, "HL7 REF^I12")
    charset, codec = write.charset(doc)
    structure = "RRI" if doc.kind is Kind.TELECONSULT_ANSWER else "REF"
    stamp = write.ts(doc.sent_at)
    own, other = ZD_FIELDS[structure]
    ids = {own: doc.zd_number, other: doc.in_reply_to or ""}
    sender_role, recipient_role = (roles[0] for roles in ROLES[structure])
    sender, recipient = doc.sender, doc.recipient
    lines = [
        segment("MSH", "^~\\&", "gatewayd", write.hd(sender.organisation, sender.organisation_agb),
                "gatewayd", write.hd(recipient.name, recipient.agb), stamp, "",
                field(structure, "I12", f"{structure}_I12"), doc.fingerprint(20), "P", "2.4", "",
                "", "AL", "NE", "NLD", charset),
        segment("RF1", field(*KIND_STATUS.get(doc.kind, ("P", "Pending", "HL70283"))),
                field("R", "Routine", "HL70280"),
                field(*KIND_TYPE.get(doc.kind, ("Med", "Medical", "HL70281"))), "",
                field("O", "Outpatient", "HL70284"), _number(ids[6]), "", "", "",
                write.code(doc.product), _number(ids[11])),
        _prd(sender_role, sender.name, sender.address, sender.department, sender.organisation,
             sender.phone, sender.agb),
        _prd(recipient_role, recipient.practitioner, recipient.address, recipient.department,
             recipient.name, recipient.phone, recipient.practitioner_agb),
        write.pid(doc.patient, doc.zd_number),
        segment("OBR", "1", field(ids[6]), field(ids[11]),
                write.code(doc.specialism, write.LETTER_CODE), "", "", stamp, *[""] * 8,
                field(sender.agb, sender.name, "", "", "", "", "", "", "VEKTIS"),
                *[""] * 5, stamp, "", "", "F"),
    ]
    observations = []
    if doc.body:
        observations.append(("TX", field(*write.LETTER_CODE), write.tx_value(doc.body)))
    if doc.letter is not None:
        observations.append(("ED", field(*write.LETTER_CODE),
                             write.ed_value(doc.letter.media_type, doc.letter.data)))
    observations += [("ED", field("ATT", a.file_name, "L"), write.ed_value(a.media_type, a.data))
                     for a in doc.attachments]
    lines += [segment("OBX", str(n), kind, identifier, str(n), content, *[""] * 5, "F")
              for n, (kind, identifier, content) in enumerate(observations, 1)]
    return write.message(lines, codec)


def _number(number: str) -> str:
    return field(number, write.authority(number)) if number else ""


def _prd(role, name, address, department, organisation, phone, agb) -> str:
    return segment("PRD", field(role, ROLE_NAMES[role], "HL70286"), field(name), write.xad(address),
                   field(department, "", "", organisation), field(phone), "",
                   field(agb, "AGB") if agb else "")

