"""Reading the HL7 v2 fields every dialect shares: timestamps, persons and their AGB
codes, addresses, phones, the patient (PID), letter text, attachments, the document's
number, and the rule that no OBX or NTE content is left out.

Tolerances (what senders do, see fixtures/README.md): an AGB code is written as
``01234567^AGB``, ``01234567^VEKTIS`` or in an XCN with assigning authority
``VEKTIS``; a PID-3 BSN under ``NLMINBIZA`` may be empty (ZorgDomein writes
``^^^NLMINBIZA^NNNLD`` when it does not know it); ZorgDomein's portal patient id is
``<id>^^^ZIS^PI``. A document without a ZD number gets a gateway number (``GW`` +
10 digits from the message's hash) and a warning.
"""

import base64
import binascii
import datetime as dt
import functools
import re

from gateway.codecs.hl7syntax import Segments
from gateway.document import (Address, Attachment, Code, Document, Patient, Sex, bsn_problem,
                              gateway_number, local_time, normalize_bsn, zd_problem)
from gateway.errors import DecodeError, DocumentError

SEX_IN = {"M": Sex.MALE, "F": Sex.FEMALE, "U": Sex.UNKNOWN, "": Sex.UNKNOWN, "O": Sex.UNKNOWN,
          "A": Sex.UNKNOWN, "N": Sex.UNKNOWN}
BSN_AUTHORITY = "NLMINBIZA"
PORTAL_AUTHORITY = ("ZIS", "PI")             # ZorgDomein's CS-Zorgportaal patient id
AGB_TYPES = {"AGB", "VEKTIS", "AGB-Z"}
TEXT_TYPES = {"TX", "FT", "ST", "TN"}
CODED_TYPES = {"CE", "CWE", "CNE", "CF"}
VALUE_TYPES = {"NM", "SN", "DT", "TM", "TS", "DTM", "ID", "IS", "MO", "CP", "NA", "CX", "XCN", "XPN",
               "XAD", "XTN", "XON"}
_TS = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})(?:([0-9]{2})([0-9]{2}))?([0-9]{2})?(?:\.[0-9]{1,4})?"
                 r"(?:([+-])([0-9]{2})([0-9]{2}))?")
AGB_CODE = re.compile(r"[0-9]{8}")


def raw(fields: list[str] | None, n: int) -> str:
    """Field ``n`` as written (still escaped); "" if absent."""
    return fields[n] if fields is not None and n < len(fields) else ""


def value(msg: Segments, fields: list[str] | None, n: int, component: int = 0) -> str:
    """Component ``component`` of field ``n`` (first repetition), unescaped and stripped."""
    if fields is None or n >= len(fields) or not fields[n]:
        return ""
    text = fields[n]
    if msg.rs in text:
        text = text[:text.index(msg.rs)]
    if component == 0 and msg.cs not in text:
        found = text
    else:
        parts = text.split(msg.cs)
        if component >= len(parts):
            return ""
        found = parts[component]
    return msg.clean(found)


def code(msg: Segments, fields: list[str] | None, n: int) -> Code | None:
    """A CE field ``code^display^system`` as a Code, or None when it has no code."""
    if fields is None or n >= len(fields) or not fields[n]:
        return None
    parts = list(map(msg.clean, fields[n].split(msg.rs, 1)[0].split(msg.cs)[:3]))
    return Code(*parts) if parts[0] else None


def required(msg: Segments, tag: str) -> list[str]:
    found = msg.first(tag)
    if found is None:
        raise DecodeError(f"required segment {tag} is missing", where=tag, code="E-HL7-MISSING")
    return found


def timestamp(text: str, where: str) -> dt.datetime:
    """An HL7 TS (YYYYMMDDHHMM[SS][.S][+ZZZZ]) as naive Dutch local time."""
    match = _TS.fullmatch(text.split("^")[0])
    try:
        if not match:
            raise ValueError
        year, month, day, hour, minute, second, sign, zone_hours, zone_minutes = match.groups("0")
        zone = _zone(sign, zone_hours, zone_minutes) if sign != "0" else None      # "0": none
        return local_time(dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                                      int(second), tzinfo=zone))
    except ValueError:
        raise DecodeError("not a real timestamp (YYYYMMDDHHMM[SS][+ZZZZ])", where=where,
                          code="E-HL7-DATE") from None


@functools.lru_cache(maxsize=64)
def _zone(sign: str, hours: str, minutes: str) -> dt.timezone:
    offset = dt.timedelta(hours=int(hours), minutes=int(minutes))
    return dt.timezone(offset if sign == "+" else -offset)


def facility(msg: Segments, msh: list[str], n: int) -> tuple[str, str]:
    """(name, AGB code) of MSH-4 or MSH-6 written as ``name^AGB^VEKTIS`` (or just a name)."""
    parts = raw(msh, n).split(msg.rs, 1)[0].split(msg.cs)
    name = msg.clean(parts[0])
    agb = parts[1].strip() if len(parts) > 1 else ""
    return name, agb if AGB_CODE.fullmatch(agb) else ""


def id_agb(msg: Segments, text: str) -> str:
    """The AGB code among repeating identifiers ``id^type`` (PRD-7): type AGB, VEKTIS, or
    assigning authority VEKTIS in component 4 (a malformed one is returned, for the
    document's rules to refuse)."""
    for identifier in msg.repetitions(text):
        parts = identifier.split(msg.cs) + ["", "", "", ""]
        if parts[1].upper() in AGB_TYPES or parts[3].split(msg.ss)[0].upper() in AGB_TYPES:
            return msg.clean(parts[0])
    return ""


def xcn(msg: Segments, text: str) -> tuple[str, str]:
    """(AGB code, name) of a person in an XCN field: ``id^family&own prefix&own name^given
    ^further given^…^assigning authority``; the id is taken as the AGB code when it is 8
    digits (ZorgDomein writes ``01004567^&&van Brouwer^Z.Z.^^^^^^VEKTIS``)."""
    parts = msg.repetitions(text)[0].split(msg.cs) + [""] * 4
    family = list(map(msg.clean, parts[1].split(msg.ss))) + ["", "", ""]
    surname = family[0] or " ".join(p for p in family[1:3] if p)
    given = list(map(msg.clean, parts[2:4]))
    name = " ".join(p for p in (*given, surname) if p)
    identifier = msg.clean(parts[0])
    return (identifier if AGB_CODE.fullmatch(identifier) else ""), name


def person_name(msg: Segments, fields: list[str], n: int) -> str:
    """An XPN (PRD-2) as one name: given names, then the surname."""
    parts = msg.components(fields, n) + ["", "", ""]
    names = [name for name in (parts[1], parts[2], parts[0].split(msg.ss, 1)[0]) if name.strip()]
    return " ".join(map(msg.clean, names))


def address(msg: Segments, text: str) -> Address | None:
    """An XAD: street line & street & house number, addition, city, -, postcode, country."""
    if not text:
        return None
    first, ss = text.split(msg.rs, 1)[0], msg.ss
    parts = first.split(msg.cs) + [""] * 5
    found = [parts[0], "", parts[1], parts[4], parts[2], parts[5]]
    if ss in first:
        line = parts[0].split(ss) + ["", ""]
        found[:3] = line[1] if len(line) > 3 else line[0], line[2], parts[1].split(ss, 1)[0]
        found[3:] = [part.split(ss, 1)[0] for part in found[3:]]
    if msg.esc in first:
        found = list(map(msg.unescape, found))
    street, number, addition, postcode, city, country = found
    found = [street.strip(), (number + addition).strip(), postcode.strip(), city.strip(),
             country.strip()]
    return Address(*found) if any(found) else None


def phone(msg: Segments, text: str) -> str:
    """The first phone number of an XTN field (XTN-12 before XTN-1)."""
    if not text:
        return ""
    parts = text.split(msg.rs, 1)[0].split(msg.cs)
    return msg.clean(parts[11] if len(parts) > 11 and parts[11] else parts[0])


def patient(msg: Segments) -> Patient:
    """The patient from PID: BSN (may be empty) and portal id from PID-3, the Dutch name
    parts of PID-5, birth date, sex, address, phone."""
    pid = required(msg, "PID")
    bsn, portal = "", ""
    for identifier in msg.repetitions(raw(pid, 3)):
        parts = identifier.split(msg.cs)
        if len(parts) < 4:
            continue
        authority, kind = parts[3].split(msg.ss, 1)[0], parts[4] if len(parts) > 4 else ""
        if authority == BSN_AUTHORITY and parts[0].strip():
            bsn = normalize_bsn(msg.clean(parts[0]))
            if problem := bsn_problem(bsn):
                raise DecodeError(f"BSN {problem}", where="PID-3", code="E-HL7-BSN")
        elif (authority, kind) == PORTAL_AUTHORITY:
            portal = msg.clean(parts[0])
    name = raw(pid, 5).split(msg.rs, 1)[0].split(msg.cs) + ["", "", ""]
    family = list(map(msg.clean, name[0].split(msg.ss))) + [""] * 5
    sex = value(msg, pid, 8)
    if sex not in SEX_IN:
        raise DecodeError("administrative sex must be M, F, U, O, A or N", where="PID-8",
                          code="E-HL7-SEX")
    detailed = any(family[1:5])
    return Patient(
        bsn=bsn, birth_date=_birth_date(value(msg, pid, 7)), sex=SEX_IN[sex],
        family_prefix=family[1], family_name=family[2] if detailed else family[0],
        partner_prefix=family[3], partner_name=family[4],
        given_name=msg.clean(name[1]), initials=msg.clean(name[2]),
        address=address(msg, raw(pid, 11)), phone=phone(msg, raw(pid, 13)), portal_id=portal)


def _birth_date(text: str) -> dt.date | None:
    if not text:
        return None
    try:
        if len(text) < 8 or not (text[:8].isascii() and text[:8].isdigit()):
            raise ValueError
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        raise DecodeError("birth date is not a real YYYYMMDD date", where="PID-7",
                          code="E-HL7-DATE") from None


def observation_lines(msg: Segments, obx: list[str], answers: bool = False) -> list[str] | None:
    """An OBX as lines: text types as the letter text they are (``answers``: the first
    line after 'label: ', as in a request's questions and answers), other values as one
    line 'label: value units'; None for a type that cannot be shown as text (ED, RP, …)."""
    kind, text = raw(obx, 2), raw(obx, 5)
    if kind in TEXT_TYPES or (not kind and not text):
        lines = msg.text(text)
        if answers and lines and (name := value(msg, obx, 3, 1) or value(msg, obx, 3, 0)):
            lines[0] = f"{name}: {lines[0]}"
        return lines
    if kind not in CODED_TYPES | VALUE_TYPES:
        return None
    if not text:
        return []
    shown = []
    for repetition in msg.repetitions(text):
        parts = [msg.unescape(p).strip() for p in repetition.split(msg.cs)]
        if kind in CODED_TYPES:
            shown.append(parts[1] if len(parts) > 1 and parts[1] else parts[0])
        else:
            shown.append(("" if kind == "SN" else " ").join(p for p in parts if p))
    name = value(msg, obx, 3, 1) or value(msg, obx, 3, 0)
    units = value(msg, obx, 6, 0)
    line = ", ".join(shown) + (f" {units}" if units else "")
    return [f"{name}: {line}" if name else line]


def letter(msg: Segments) -> tuple[str, ...]:
    """The letter: every text observation and NTE comment in segment order; coded and
    numeric observations as 'label: value units' lines."""
    lines: list[str] = []
    for fields in msg.ordered:
        if fields[0] not in ("NTE", "OBX") or msg.is_placed(fields):
            continue
        if fields[0] == "NTE":
            lines += msg.text(raw(fields, 3), blank=True)
            msg.place(fields)
        elif fields[0] == "OBX" and (found := observation_lines(msg, fields)) is not None:
            lines += found
            msg.place(fields)
    return tuple(lines)


def encapsulated(msg: Segments, obx: list[str]) -> tuple[str, bytes]:
    """(media type, data) of an OBX of type ED: ``^type^subtype^Base64^data`` (placed)."""
    data = msg.components(obx, 5) + [""] * 5
    try:
        content = base64.b64decode(data[4], validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("attachment data is not valid Base64",
                          where=f"segment {msg.position(obx)} (OBX), OBX-5",
                          code="E-HL7-ATTACHMENT") from None
    msg.place(obx)
    return f"{msg.unescape(data[1])}/{msg.unescape(data[2])}", content


def attachment(msg: Segments, obx: list[str], name: str = "") -> Attachment:
    """An OBX ED as an attachment named ``name``, else by OBX-3 (``ATT^<file name>``)."""
    media_type, content = encapsulated(msg, obx)
    name = name or value(msg, obx, 3, 1) or value(msg, obx, 3, 0) or \
        f"bijlage-{msg.position(obx)}.{media_type.rsplit('/', 1)[-1]}"
    return Attachment(name, media_type, content)


def number(msg: Segments, warnings: list[str], *candidates: str) -> str:
    """The document's number: the first candidate that is a ZD (or gateway) number; else
    the first written like one (a malformed one is refused by the document's rules,
    E-DOC-ZD); else a gateway number derived from the whole message, with a warning."""
    for candidate in candidates:
        if not zd_problem(candidate):
            return candidate
    for candidate in candidates:
        if candidate[:2] in ("ZD", "GW"):
            return candidate
    made = gateway_number("\r".join(msg.lines).encode("utf-8"))
    warnings.append(f"no ZD number in the message; gateway number {made} given")
    return made


def build(msg: Segments, places: dict[str, str], **fields) -> Document:
    """A Document from ``fields`` with the message's warnings; a broken rule becomes a
    DecodeError naming the HL7 field (``places``: document field -> HL7 field). Any OBX or
    NTE content the dialect did not place is E-HL7-UNPLACED."""
    try:
        doc = Document(**fields, warnings=tuple(msg.warnings))
    except DocumentError as exc:
        where = f"{places.get(exc.where, 'field')} ({exc.where})"
        raise DecodeError(exc.message, where=where, code=exc.code) from None
    if (left := msg.unplaced()) is not None:
        position, tag = left
        what = f"OBX value of type {raw(msg.ordered[position - 1], 2)[:5]!r}" if tag == "OBX" \
            else "NTE comment"
        raise DecodeError(f"{what} has no place in the document and would be lost",
                          where=f"segment {position} ({tag}), {'OBX-5' if tag == 'OBX' else 'NTE-3'}",
                          code="E-HL7-UNPLACED")
    return doc
