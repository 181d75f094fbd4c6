"""Writing the HL7 v2 fields the REF/RRI and ORU writers share: timestamps, facilities,
addresses, the patient (PID), letter text and encapsulated data, and the message's
character set.

A document number is written with assigning authority ``ZorgDomein`` only when it is a
ZD number; a gateway number (``GW`` + 10 digits) gets ``gatewayd``, so it is never
taken for one of ZorgDomein's.
"""

import base64
import datetime as dt

from gateway.codecs import hl7syntax
from gateway.codecs.hl7read import BSN_AUTHORITY, PORTAL_AUTHORITY
from gateway.codecs.hl7syntax import field, segment
from gateway.document import Address, Code, Document, Patient, aware, fits_latin1, is_gateway_number

NULL = '""'
LETTER_CODE = ("11488-4", "Consultation note", "LN")


def charset(doc: Document) -> tuple[str, str]:
    """(MSH-18, Python codec): 8859/1 unless the content needs more, then UTF-8."""
    return ("8859/1", "latin-1") if fits_latin1(doc) else ("UNICODE UTF-8", "utf-8")


def authority(number: str) -> str:
    """The assigning authority for a document number: ZorgDomein's only for a ZD number."""
    return "gatewayd" if is_gateway_number(number) else "ZorgDomein"


def ts(local: dt.datetime) -> str:
    """An HL7 TS with the UTC offset of Dutch local time."""
    return aware(local).strftime("%Y%m%d%H%M%S%z")


def hd(name: str, agb: str) -> str:
    """MSH-4/MSH-6: ``name^AGB^VEKTIS``, or the name alone."""
    return field(name, agb, "VEKTIS") if agb else field(name)


def code(value: Code | None, default: tuple[str, str, str] = ("", "", "")) -> str:
    """A CE field ``code^display^system``."""
    return field(value.code, value.display, value.system) if value else field(*default)


def xad(address: Address | None) -> str:
    if address is None:
        return ""
    line = " ".join(p for p in (address.street, address.house_number) if p)
    return field((line, address.street, address.house_number), "", address.city, "",
                 address.postcode, address.country)


def pid(patient: Patient, number: str, empty_bsn: bool = False) -> str:
    """PID: BSN, portal id and the document number in PID-3 (``empty_bsn``: an unknown BSN
    as ``^^^NLMINBIZA^NNNLD``, as ZorgDomein writes it), Dutch name parts in PID-5."""
    full = " ".join(p for p in (patient.family_prefix, patient.family_name) if p)
    if patient.partner_name:
        partner = " ".join(p for p in (patient.partner_prefix, patient.partner_name) if p)
        full = f"{partner} - {full}" if full else partner
    name = field((full, patient.family_prefix, patient.family_name, patient.partner_prefix,
                  patient.partner_name), patient.given_name, patient.initials) or NULL
    ids = [field(patient.bsn, "", "", BSN_AUTHORITY, "NNNLD")] if patient.bsn or empty_bsn else []
    if patient.portal_id:
        ids.append(field(patient.portal_id, "", "", *PORTAL_AUTHORITY))
    ids.append(field(number, "", "", authority(number), "VN"))
    birth = f"{patient.birth_date.year:04d}{patient.birth_date:%m%d}" if patient.birth_date else ""
    return segment("PID", "1", "", "~".join(ids), "", name, "", birth, patient.sex.value, "", "",
                   xad(patient.address), "", field(patient.phone))


def tx_value(body: tuple[str, ...]) -> str:
    """Letter lines as a TX value, one repetition per line. A letter of one blank line is
    written as ``\\\\N\\\\`` (normal text, no characters), since an empty OBX-5 holds no line."""
    return "~".join(hl7syntax.escape(line) for line in body) or "\\N\\"


def ed_value(media_type: str, data: bytes) -> str:
    """An ED value ``^type^subtype^Base64^data``."""
    kind, subtype = media_type.split("/", 1)
    return field("", kind, subtype, "Base64", base64.b64encode(data).decode("ascii"))


def message(lines: list[str], codec: str) -> bytes:
    """Segments joined with CR, as bytes in the message's character set. ISO-8859-1 bytes
    that happen to be valid UTF-8 would be read back as UTF-8 (see hl7syntax), so such a
    message declares and is written in UTF-8 instead (MSH-18 is the MSH's last field)."""
    data = ("\r".join(lines) + "\r").encode(codec)
    if codec != "utf-8" and not data.isascii() and hl7syntax.is_utf8(data):
        head = lines[0].rsplit("|", 1)[0] + "|UNICODE UTF-8"
        data = ("\r".join([head, *lines[1:]]) + "\r").encode("utf-8")
    return data
