"""HL7 v2.4 REF^I12 / RRI^I12 <-> Document, and ACKs.

Facts (formats.md): MSH-12 2.4, MSH-17 NLD, MSH-18 8859/1; BSN in PID-3 as
``<bsn>^^^NLMINBIZA^NNNLD``; PID-5.1 as full name & own prefix & own name &
partner prefix & partner name; PRD-1 roles RP referring, RT referred-to,
CP consulting; ACK MSA-2 is the acknowledged MSH-10.

Our conventions:
- Referrals, teleconsult requests, supplements and cancellations are REF^I12,
  answers RRI^I12. RF1-1 status: ``P`` pending, ``C`` cancellation, ``S``
  supplement (local codes), ``A`` accepted (answers); RF1-3 type ``TC``
  (local) marks a teleconsult request, ``Med`` anything else.
- REF: RF1-6 is the document's ZD number, RF1-11 the number it refers to.
  RRI: RF1-6 is the request's number, RF1-11 the answer's own ``_ANTW`` number.
- Sender is the PRD with role RP (REF) or CP (RRI), recipient RT (REF) or RP
  (RRI). PRD-2.1 holds the person's name whole, PRD-4 is department^^^
  organisation, PRD-7 ``<AGB>^AGB`` the person's AGB. MSH-4 is the sender's
  organisation (name^AGB^VEKTIS), MSH-6 the recipient institution (name^AGB^VEKTIS,
  the AGB used for routing). OBR-16 repeats the sender as XCN with VEKTIS.
- PID-3 repeats the ZD number as ``ZD…^^^ZorgDomein^VN`` after the BSN (PID-3 is
  required, also for a patient without BSN). PID-5 is ``""`` (null) when the
  patient has no name, as PID-5 is required too. PID-5.2 is the given name,
  PID-5.3 the initials. Addresses: XAD-1 street
  line & street & house number, XAD-2 (a house number addition, appended when
  read), XAD-3 city, XAD-5 postcode, XAD-6 country. Phones in XTN-1 (XTN-12
  read first when present).
- Letter lines are one OBX of type TX, one repetition per line. Attachments are
  OBX of type ED: OBX-3 ``ATT^<file name>^L``, OBX-5 ``^<type>^<subtype>^Base64^<data>``.
- MSH-7 carries the UTC offset of Dutch local time; MSH-18 is 8859/1 unless the
  content needs more, then ``UNICODE UTF-8``. MSH-10 is derived from the
  document, so encoding the same document twice gives the same message.
"""

import base64
import binascii
import datetime as dt
import hashlib
import re

from gateway.codecs import hl7syntax
from gateway.codecs.hl7syntax import Segments, field, segment
from gateway.document import (Address, Attachment, Document, Kind, Patient, Recipient, Sender, Sex,
                              aware, bsn_problem, fits_latin1, local_time, normalize_bsn)
from gateway.errors import DecodeError, DocumentError, GatewayError

SUPPORTED = {("REF", "I12"), ("RRI", "I12")}
ROLES = {"REF": ("RP", "RT"), "RRI": ("CP", "RP")}           # (sender, recipient) PRD-1
ZD_FIELDS = {"REF": (6, 11), "RRI": (11, 6)}                 # RF1 fields of (own ZD, in_reply_to)
ROLE_NAMES = {"RP": "Referring Provider", "RT": "Referred to Provider", "CP": "Consulting Provider"}
STATUS_KIND = {"C": Kind.CANCELLATION, "S": Kind.SUPPLEMENT}
KIND_STATUS = {Kind.CANCELLATION: ("C", "Cancelled", "L"), Kind.SUPPLEMENT: ("S", "Supplement", "L"),
               Kind.TELECONSULT_ANSWER: ("A", "Accepted", "HL70283")}
SEX_IN = {"M": Sex.MALE, "F": Sex.FEMALE, "U": Sex.UNKNOWN, "": Sex.UNKNOWN, "O": Sex.UNKNOWN,
          "A": Sex.UNKNOWN, "N": Sex.UNKNOWN}
LETTER_CODE = ("11488-4", "Consultation note", "LN")
BSN_AUTHORITY = "NLMINBIZA"
_TS = re.compile(r"(\d{8})(\d{4})?(\d{2})?(?:\.\d{1,4})?(?:([+-])(\d{2})(\d{2}))?")
NULL = '""'
FIELD_PLACES = {"zd_number": "RF1-6/RF1-11", "in_reply_to": "RF1-6/RF1-11", "sent_at": "MSH-7",
                "sender.agb": "PRD-7", "recipient.agb": "MSH-6", "patient.birth_date": "PID-7"}
ERROR_CODES = {"E-HL7-TYPE": "200", "E-HL7-MISSING": "101"}


def decode(data: bytes) -> list[Document]:
    """Decode one or more REF^I12 / RRI^I12 messages; raise DecodeError naming segment and field."""
    return [doc for _, doc in decode_messages(data)]


def decode_messages(data: bytes) -> list[tuple[str, Document]]:
    """Like decode, each Document with its control id (MSH-10)."""
    return [(_raw(m.first("MSH"), 10), _document(m)) for m in hl7syntax.split_messages(data)]


def _document(msg: Segments) -> Document:
    msh = msg.first("MSH")
    msg_type = msg.components(msh, 9) + ["", ""]
    structure = msg_type[0]
    if (structure, msg_type[1]) not in SUPPORTED:
        raise DecodeError(f"message type {'^'.join(msg_type[:2])[:20]!r} is not supported "
                          "(expected REF^I12 or RRI^I12)", where="MSH-9", code="E-HL7-TYPE")
    rf1 = _required(msg, "RF1")
    own, other = ZD_FIELDS[structure]
    zd = _value(msg, rf1, own)
    in_reply_to = _value(msg, rf1, other) or None
    kind = _kind(msg, rf1, structure)
    sender_role, recipient_role = ROLES[structure]
    try:
        doc = Document(
            kind=kind, zd_number=zd, sent_at=_timestamp(_raw(msh, 7), "MSH-7"),
            sender=_party(msg, sender_role, msh, 4, Sender),
            recipient=_party(msg, recipient_role, msh, 6, Recipient),
            patient=_patient(msg), body=_letter(msg), in_reply_to=in_reply_to,
            attachments=_attachments(msg))
    except DocumentError as exc:
        where = f"{FIELD_PLACES.get(exc.where, 'field')} ({exc.where})"
        raise DecodeError(exc.message, where=where, code=exc.code) from None
    check_placed(msg)
    return doc


def check_placed(msg: Segments) -> None:
    """Raise E-HL7-UNPLACED for the first OBX or NTE content the decoder left out."""
    if (left := msg.unplaced()) is not None:
        number, tag = left
        what = f"OBX value of type {_raw(msg.ordered[number - 1], 2)[:5]!r}" if tag == "OBX" \
            else "NTE comment"
        raise DecodeError(f"{what} has no place in the document and would be lost",
                          where=f"segment {number} ({tag}), {'OBX-5' if tag == 'OBX' else 'NTE-3'}",
                          code="E-HL7-UNPLACED")


def _required(msg: Segments, tag: str) -> list[str]:
    found = msg.first(tag)
    if found is None:
        raise DecodeError(f"required segment {tag} is missing", where=tag, code="E-HL7-MISSING")
    return found


def _value(msg: Segments, fields: list[str] | None, n: int, component: int = 0) -> str:
    parts = msg.components(fields, n)
    return msg.unescape(parts[component]).strip() if component < len(parts) else ""


def _kind(msg: Segments, rf1: list[str], structure: str) -> Kind:
    if structure == "RRI":
        return Kind.TELECONSULT_ANSWER
    status = _value(msg, rf1, 1)
    if status in STATUS_KIND:
        return STATUS_KIND[status]
    return Kind.TELECONSULT_REQUEST if _value(msg, rf1, 3) == "TC" else Kind.REFERRAL


def _timestamp(value: str, where: str) -> dt.datetime:
    match = _TS.fullmatch(value.split("^")[0])
    try:
        if not match:
            raise ValueError
        day, minute, second = match[1], match[2] or "0000", match[3] or "00"
        stamp = dt.datetime(int(day[:4]), int(day[4:6]), int(day[6:]), int(minute[:2]),
                            int(minute[2:]), int(second))
        if match[4]:
            offset = dt.timedelta(hours=int(match[5]), minutes=int(match[6]))
            stamp = stamp.replace(tzinfo=dt.timezone(offset if match[4] == "+" else -offset))
        return local_time(stamp)
    except ValueError:
        raise DecodeError("not a real timestamp (YYYYMMDDHHMM[SS][+ZZZZ])", where=where,
                          code="E-HL7-DATE") from None


def _provider(msg: Segments, role: str) -> list[str] | None:
    for prd in msg.all("PRD"):
        if _value(msg, prd, 1) == role:
            return prd
    return None


def _party(msg: Segments, role: str, msh: list[str], msh_field: int, cls):
    prd = _provider(msg, role)
    if prd is None:
        raise DecodeError(f"no PRD segment with role {role}", where="PRD-1", code="E-HL7-MISSING")
    facility_name, facility_agb = _value(msg, msh, msh_field, 0), _value(msg, msh, msh_field, 1)
    person_agb = next((msg.unescape(pi.split(msg.cs)[0]) for pi in msg.repetitions(_raw(prd, 7))
                       if pi.split(msg.cs)[1:2] == ["AGB"]), "")
    location = msg.components(prd, 4) + [""] * 4
    department = msg.unescape(location[0]).strip()
    organisation = msg.unescape(location[3].split(msg.ss)[0]).strip() or facility_name
    name, address, phone = _person_name(msg, prd, 2), _address(msg, _raw(prd, 3)), _phone(msg, _raw(prd, 5))
    if cls is Sender:
        return Sender(person_agb, name, department, organisation, facility_agb, address, phone)
    return Recipient(facility_agb, organisation, department, name, person_agb, address, phone)


def _raw(fields: list[str] | None, n: int) -> str:
    return fields[n] if fields is not None and n < len(fields) else ""


def _person_name(msg: Segments, fields: list[str], n: int) -> str:
    parts = msg.components(fields, n) + ["", "", ""]
    surname = parts[0].split(msg.ss)[0]
    return " ".join(msg.unescape(p).strip() for p in (parts[1], parts[2], surname) if p.strip())


def _address(msg: Segments, value: str) -> Address | None:
    first = value.split(msg.rs)[0]
    parts = [p.split(msg.ss) for p in first.split(msg.cs)] + [[""]] * 6
    line = parts[0] + ["", "", ""]
    street = msg.unescape(line[1] if len(parts[0]) > 1 else line[0]).strip()
    number = (msg.unescape(line[2]) + msg.unescape(parts[1][0])).strip()
    address = Address(street, number, msg.unescape(parts[4][0]).strip(),
                      msg.unescape(parts[2][0]).strip(), msg.unescape(parts[5][0]).strip())
    return address if any(vars(address).values()) else None


def _phone(msg: Segments, value: str) -> str:
    parts = value.split(msg.rs)[0].split(msg.cs)
    return msg.unescape(parts[11] if len(parts) > 11 and parts[11] else parts[0]).strip()


def _patient(msg: Segments) -> Patient:
    pid = _required(msg, "PID")
    bsn = ""
    for identifier in msg.repetitions(_raw(pid, 3)):
        parts = identifier.split(msg.cs)
        if len(parts) > 3 and parts[3].split(msg.ss)[0] == BSN_AUTHORITY:
            bsn = normalize_bsn(msg.unescape(parts[0]).strip())
            if problem := bsn_problem(bsn):
                raise DecodeError(f"BSN {problem}", where="PID-3", code="E-HL7-BSN")
    name = (_raw(pid, 5).split(msg.rs)[0].split(msg.cs) + ["", "", ""])
    family = [msg.unescape(s).strip() for s in name[0].split(msg.ss)] + [""] * 5
    sex = _value(msg, pid, 8)
    if sex not in SEX_IN:
        raise DecodeError("administrative sex must be M, F, U, O, A or N", where="PID-8",
                          code="E-HL7-SEX")
    detailed = any(family[1:5])
    return Patient(
        bsn=bsn, birth_date=_birth_date(_value(msg, pid, 7)), sex=SEX_IN[sex],
        family_prefix=family[1], family_name=family[2] if detailed else family[0],
        partner_prefix=family[3], partner_name=family[4],
        given_name=msg.unescape(name[1]).strip(), initials=msg.unescape(name[2]).strip(),
        address=_address(msg, _raw(pid, 11)), phone=_phone(msg, _raw(pid, 13)))


def _birth_date(value: str) -> dt.date | None:
    if not value:
        return None
    try:
        if len(value) < 8 or not value[:8].isdigit():
            raise ValueError
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        raise DecodeError("birth date is not a real YYYYMMDD date", where="PID-7",
                          code="E-HL7-DATE") from None


def _letter(msg: Segments) -> tuple[str, ...]:
    """The letter: every text observation and NTE comment in segment order; coded and
    numeric observations as 'label: value units' lines (see observation_lines)."""
    lines: list[str] = []
    for fields in msg.ordered:
        if fields[0] == "NTE":
            lines += msg.text(_raw(fields, 3), blank=True)
            msg.place(fields)
        elif fields[0] == "OBX" and (found := observation_lines(msg, fields)) is not None:
            lines += found
            msg.place(fields)
    return tuple(lines)


TEXT_TYPES = {"TX", "FT", "ST", "TN"}
CODED_TYPES = {"CE", "CWE", "CNE", "CF"}
VALUE_TYPES = {"NM", "SN", "DT", "TM", "TS", "DTM", "ID", "IS", "MO", "CP", "NA", "CX", "XCN", "XPN",
               "XAD", "XTN", "XON"}


def observation_lines(msg: Segments, obx: list[str]) -> list[str] | None:
    """An OBX as letter lines: text types as their lines, other values as one line
    'label: value units'; None for a value type that cannot be shown as text (ED, RP, …)."""
    kind, value = _raw(obx, 2), _raw(obx, 5)
    if kind in TEXT_TYPES or (not kind and not value):
        return msg.text(value)
    if kind not in CODED_TYPES | VALUE_TYPES:
        return None
    if not value:
        return []
    shown = []
    for repetition in msg.repetitions(value):
        parts = [msg.unescape(p).strip() for p in repetition.split(msg.cs)]
        if kind in CODED_TYPES:
            shown.append(parts[1] if len(parts) > 1 and parts[1] else parts[0])
        else:
            shown.append(("" if kind == "SN" else " ").join(p for p in parts if p))
    label = _value(msg, obx, 3, 1) or _value(msg, obx, 3, 0)
    units = _value(msg, obx, 6, 0)
    text = ", ".join(shown) + (f" {units}" if units else "")
    return [f"{label}: {text}" if label else text]


def _attachments(msg: Segments) -> tuple[Attachment, ...]:
    found = []
    for index, obx in enumerate(msg.all("OBX"), 1):
        if _raw(obx, 2) != "ED":
            continue
        msg.place(obx)
        data = msg.components(obx, 5) + [""] * 5
        try:
            content = base64.b64decode(data[4], validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("attachment data is not valid Base64", where=f"OBX {index}, OBX-5",
                              code="E-HL7-ATTACHMENT") from None
        media_type = f"{msg.unescape(data[1])}/{msg.unescape(data[2])}"
        found.append(Attachment(_value(msg, obx, 3, 1), media_type, content))
    return tuple(found)


def encode(doc: Document) -> bytes:
    """Write ``doc`` as REF^I12 (RRI^I12 for an answer) with CR segment ends."""
    charset, codec = ("8859/1", "latin-1") if fits_latin1(doc) else ("UNICODE UTF-8", "utf-8")
    answer = doc.kind is Kind.TELECONSULT_ANSWER
    structure = "RRI" if answer else "REF"
    stamp = _ts(doc.sent_at)
    own, other = ZD_FIELDS[structure]
    rf1_ids = {own: doc.zd_number, other: doc.in_reply_to or ""}
    status = KIND_STATUS.get(doc.kind, ("P", "Pending", "HL70283"))
    kind_type = ("TC", "Teleconsult", "L") if doc.kind is Kind.TELECONSULT_REQUEST else \
        ("Med", "Medical", "HL70281")
    sender_role, recipient_role = ROLES[structure]
    sender, recipient = doc.sender, doc.recipient
    lines = [
        segment("MSH", "^~\\&", "gatewayd", _hd(sender.organisation, sender.organisation_agb),
                "gatewayd", _hd(recipient.name, recipient.agb), stamp, "",
                field(structure, "I12", f"{structure}_I12"), doc.fingerprint(20), "P", "2.4", "",
                "", "AL", "NE", "NLD", charset),
        segment("RF1", field(*status), field("R", "Routine", "HL70280"), field(*kind_type), "",
                field("O", "Outpatient", "HL70284"), field(rf1_ids[6], "ZorgDomein"), "", "", "", "",
                field(rf1_ids[11], "ZorgDomein") if rf1_ids[11] else ""),
        _prd(sender_role, sender.name, sender.address, sender.department, sender.organisation,
             sender.phone, sender.agb),
        _prd(recipient_role, recipient.practitioner, recipient.address, recipient.department,
             recipient.name, recipient.phone, recipient.practitioner_agb),
        _pid(doc.patient, doc.zd_number),
        segment("OBR", "1", field(rf1_ids[6]), field(rf1_ids[11]), field(*LETTER_CODE), "", "", stamp,
                *[""] * 8, field(sender.agb, sender.name, "", "", "", "", "", "", "VEKTIS"),
                *[""] * 5, stamp, "", "", "F"),
    ]
    if doc.body:
        lines.append(segment("OBX", "1", "TX", field(*LETTER_CODE), "1", tx_value(doc.body),
                             *[""] * 5, "F"))
    for index, attachment in enumerate(doc.attachments, 2 if doc.body else 1):
        kind, subtype = attachment.media_type.split("/", 1)
        lines.append(segment("OBX", str(index), "ED", field("ATT", attachment.file_name, "L"),
                             str(index), field("", kind, subtype, "Base64", base64.b64encode(
                                 attachment.data).decode("ascii")), *[""] * 5, "F"))
    return ("\r".join(lines) + "\r").encode(codec)


def tx_value(body: tuple[str, ...]) -> str:
    """Letter lines as a TX value, one repetition per line. A letter of one blank line is
    written as ``\\N\\`` (normal text, no characters), since an empty OBX-5 holds no line."""
    return "~".join(hl7syntax.escape(line) for line in body) or "\\N\\"


def _ts(local: dt.datetime) -> str:
    return aware(local).strftime("%Y%m%d%H%M%S%z")


def _hd(name: str, agb: str) -> str:
    return field(name, agb, "VEKTIS") if agb else field(name)


def _prd(role, name, address, department, organisation, phone, agb) -> str:
    return segment("PRD", field(role, ROLE_NAMES[role], "HL70286"), field(name), _xad(address),
                   field(department, "", "", organisation), field(phone), "",
                   field(agb, "AGB") if agb else "")


def _xad(address: Address | None) -> str:
    if address is None:
        return ""
    line = " ".join(p for p in (address.street, address.house_number) if p)
    return field((line, address.street, address.house_number), "", address.city, "",
                 address.postcode, address.country)


def _pid(patient: Patient, zd_number: str) -> str:
    full = " ".join(p for p in (patient.family_prefix, patient.family_name) if p)
    if patient.partner_name:
        partner = " ".join(p for p in (patient.partner_prefix, patient.partner_name) if p)
        full = f"{partner} - {full}" if full else partner
    name = field((full, patient.family_prefix, patient.family_name, patient.partner_prefix,
                  patient.partner_name), patient.given_name, patient.initials) or NULL
    ids = [field(patient.bsn, "", "", BSN_AUTHORITY, "NNNLD")] if patient.bsn else []
    ids.append(field(zd_number, "", "", "ZorgDomein", "VN"))
    birth = f"{patient.birth_date.year:04d}{patient.birth_date:%m%d}" if patient.birth_date else ""
    return segment("PID", "1", "", "~".join(ids), "", name, "", birth, patient.sex.value, "", "",
                   _xad(patient.address), "", field(patient.phone))


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
    stamp = _ts(local_time(now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0))
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
    return "".join(c for c in value[:ECHO_LENGTH] if c.isprintable())


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
