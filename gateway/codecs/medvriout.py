"""The MEDVRI writer: a Document as an EDIFACT interchange (layout and conventions in
``edifact``'s docstring); EncodeError for whatever MEDVRI cannot carry.
"""

import textwrap

from gateway.codecs import edisyntax
from gateway.codecs.edisyntax import OutSegment
from gateway.document import (Address, Document, Kind, Patient, Sex, all_text, fits_latin1,
                              is_gateway_number, text_fields)
from gateway.errors import EncodeError

LINE_WIDTH = 70
SEX_OUT = {Sex.MALE: "M", Sex.FEMALE: "V", Sex.UNKNOWN: "U"}
# What MEDVRI has no field for: document field -> how EncodeError names it.
NO_FIELD = {"letter": "a PDF letter", "specialism": "the specialism", "product": "the product code"}


def encode(doc: Document) -> bytes:
    """Write ``doc`` as a MEDVRI interchange; raise EncodeError for what MEDVRI cannot carry."""
    _check_encodable(doc)
    charset = "UNOA" if "".join(all_text(doc)).isascii() else "UNOC"
    reference = doc.fingerprint(14).upper()
    at = doc.sent_at
    message = [
        OutSegment("UNH", ["1", ["MEDVRI", "1"]]),
        OutSegment("GGA", _party_elements(doc.sender.name, doc.sender.department,
                                          doc.sender.organisation, doc.sender.address, doc.sender.phone)),
        OutSegment("DET", [[f"{at:%y}", f"{at:%m}", f"{at:%d}"], [f"{at:%H}", f"{at:%M}"]]),
        *_patient_segments(doc.patient),
        *(OutSegment(f"TXT:{n}", [line]) for n, line in enumerate(_letter_lines(doc), 1)),
    ]
    recipient = doc.recipient
    if any((recipient.practitioner, recipient.department, recipient.name, recipient.address,
            recipient.phone)):
        message.append(OutSegment("GGO", _party_elements(
            recipient.practitioner, recipient.department, recipient.name, recipient.address,
            recipient.phone)))
    message.append(OutSegment("UNT", [str(len(message) + 1), "1"]))
    segments = [OutSegment("UNB", [[charset, "1"], doc.sender.agb or doc.sender.mailbox,
                                   doc.recipient.agb or doc.recipient.mailbox,
                                   [f"{at:%y%m%d}", f"{at:%H%M}"], reference]),
                *message, OutSegment("UNZ", ["1", reference])]
    return edisyntax.write(segments).encode("ascii" if charset == "UNOA" else "latin-1")


def _check_encodable(doc: Document) -> None:
    if doc.kind not in (Kind.REFERRAL, Kind.TELECONSULT_ANSWER):
        raise EncodeError(f"MEDVRI cannot carry a {doc.kind} document", where="field kind",
                          code="E-ENCODE-KIND")
    if doc.attachments:
        raise EncodeError(f"MEDVRI cannot carry attachments ({len(doc.attachments)} present)",
                          where="field attachments", code="E-ENCODE-ATTACHMENT")
    if doc.kind is Kind.REFERRAL and doc.in_reply_to:
        raise EncodeError("MEDVRI cannot carry in_reply_to on a referral", where="field in_reply_to",
                          code="E-ENCODE-FIELD")
    for name, what in NO_FIELD.items():
        if getattr(doc, name) is not None:
            raise EncodeError(f"MEDVRI cannot carry {what}", where=f"field {name}",
                              code="E-ENCODE-ATTACHMENT" if name == "letter" else "E-ENCODE-FIELD")
    if doc.patient.portal_id:
        raise EncodeError("MEDVRI has no field for the patient's number in the receiving hospital "
                          "besides the BSN's", where="field patient.portal_id", code="E-ENCODE-FIELD")
    patient = doc.patient
    if (patient.partner_name or patient.partner_prefix) and not (
            patient.family_name or patient.family_prefix):
        raise EncodeError("MEDVRI cannot carry a partner name without the patient's own family "
                          "name", where="field patient.family_name", code="E-ENCODE-FIELD")
    if fits_latin1(doc):
        return
    for name, value in text_fields(doc):
        try:
            value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise EncodeError(f"character U+{ord(value[exc.start]):04X} is outside ISO-8859-1 "
                              "(UNOC)", where=f"field {name}", code="E-ENCODE-CHARSET") from None


def _party_elements(person, department, institution, address, phone) -> list:
    return [person, department, institution, _address_components(address), phone]


def _address_components(address: Address | None) -> list[str]:
    if address is None:
        return []
    return [address.street, address.house_number, "", address.city, address.postcode, "",
            address.country]


def _patient_segments(patient: Patient) -> list[OutSegment]:
    birth = patient.birth_date
    pid = OutSegment("PID", [
        [f"{birth.year:04d}", f"{birth:%m}", f"{birth:%d}"] if birth else "",
        SEX_OUT[patient.sex],
        _name_components(patient),
        "",
        f"BSN{patient.bsn}" if patient.bsn else "",
    ])
    if patient.address is None and not patient.phone:
        return [pid]
    return [pid, OutSegment("PAD", [_address_components(patient.address), patient.phone])]


def _name_components(patient: Patient) -> list[str]:
    """PID element 3: the name in use first, the own name after it when they differ."""
    own = [patient.family_name, patient.family_prefix]
    if patient.partner_name or patient.partner_prefix:
        return [patient.partner_name, patient.partner_prefix, *own, patient.given_name,
                patient.initials]
    return [*own, "", "", patient.given_name, patient.initials]


def _letter_lines(doc: Document) -> list[str]:
    label = "Gatewaynummer" if is_gateway_number(doc.zd_number) else "ZD-nummer"
    lines = [f"{label}: {doc.zd_number}"]
    if doc.sender.organisation_agb:
        lines.append(f"AGB-organisatie: {doc.sender.organisation_agb}")
    if doc.recipient.practitioner_agb:
        lines.append(f"AGB-zorgverlener: {doc.recipient.practitioner_agb}")
    for line in doc.body:
        if len(line) <= LINE_WIDTH:
            lines.append(line)
        else:
            lines.extend(textwrap.wrap(line, LINE_WIDTH, expand_tabs=False,
                                       replace_whitespace=False, break_on_hyphens=False) or [""])
    return lines

