"""The ZorgDomein XML writer: a Document as a FHIR STU3 document Bundle (UTF-8 XML).

Resources are written in FHIR's element order as XML text; the URLs, codes and
conventions are the tables and docstring of ``zdxml``. Full URLs, the Bundle id and
every other identifier derive from the document, so the same document gives the
same bytes.

Each resource is one f-string that reads like the XML it writes: the writer runs for
every message taken in, and a helper call per element was most of its cost. Every
text from the document goes through ``escape``; table constants are escaped once
below; only values made here (the hex Bundle id, ``urn:uuid:`` URLs, dates, base64)
go in as they are, as they cannot hold a character XML needs escaped.
"""

import base64

from gateway.codecs.fhirxml import FHIR, XHTML, escape, optional
from gateway.codecs.zdxml import (AGB_SYSTEM, ATTACHMENT_TITLE, BSN_SYSTEM, GENDER_OUT, HL7_EXT,
                                  KINDS, LETTER_TITLE, NAME_PARTS, PORTAL_SYSTEM, PRODUCT_EXT,
                                  RECIPIENT_EXT, SENDER_EXT, coding_system, number_system)
from gateway.document import Address, Code, Document, Patient, aware, require_agb

_HEAD = f"<?xml version='1.0' encoding='UTF-8'?>\n<Bundle xmlns=\"{escape(FHIR)}\">"
_AGB, _BSN, _PORTAL = escape(AGB_SYSTEM), escape(BSN_SYSTEM), escape(PORTAL_SYSTEM)
_SENDER_EXT, _RECIPIENT_EXT = escape(SENDER_EXT), escape(RECIPIENT_EXT)
_PRODUCT_EXT = escape(PRODUCT_EXT)
_GENDER = {sex: escape(name) for sex, name in GENDER_OUT.items()}
_KIND = {kind: (f'<type><coding><system value="{escape(system)}"/><code value="{escape(code)}"/>'
                f'<display value="{escape(title)}"/></coding></type>', escape(title))
         for kind, (system, code, title) in KINDS.items()}
_LETTER_SECTION = f'<section><title value="{escape(LETTER_TITLE)}"/>'
_ATTACHMENT_SECTION = f'<section><title value="{escape(ATTACHMENT_TITLE)}"/>'
_NARRATIVE = f'<text><status value="additional"/><div xmlns="{escape(XHTML)}">'


def _string_extension(url: str, value_type: str = "valueString") -> str:
    """The opening of an HL7 core extension up to its value, made once at import."""
    return f'<extension url="{escape(HL7_EXT + url)}"><{value_type} value="'


_STREET = _string_extension("iso21090-ADXP-streetName")
_HOUSE_NUMBER = _string_extension("iso21090-ADXP-houseNumber")
_NAME_PARTS = tuple((key, _string_extension(url)) for key, url in NAME_PARTS)
_INITIALS = _string_extension("iso21090-EN-qualifier", "valueCode") + 'IN"/></extension>'
_EXTENSION_END = '"/></extension>'

# The last 8 hex digits of each resource's full URL (attachments: 1000 + their number)
_NUMBERS = {key: f"{number:08x}" for key, number in (
    ("bundle", 0), ("composition", 1), ("patient", 2), ("sender-role", 3), ("sender-person", 4),
    ("sender-organisation", 5), ("recipient-role", 6), ("recipient-person", 7),
    ("recipient-organisation", 8), ("letter", 9))}


def encode(doc: Document) -> bytes:
    """Write ``doc`` as a FHIR STU3 document Bundle (UTF-8 XML); a party without an AGB
    code (only a mailbox) cannot be written."""
    require_agb(doc, "ZorgDomein XML")
    bundle_id = doc.fingerprint(32)
    # stable urn:uuid: full URLs: the bundle id's first 24 hex digits, then the number
    prefix = f"urn:uuid:{bundle_id[:8]}-{bundle_id[8:12]}-{bundle_id[12:16]}-" \
             f"{bundle_id[16:20]}-{bundle_id[20:24]}"
    urls = {key: prefix + number for key, number in _NUMBERS.items()}
    attachment_urls = [f"{prefix}{1000 + index:08x}"
                       for index in range(1, len(doc.attachments) + 1)]
    s, r = doc.sender, doc.recipient
    entries = [(urls["composition"], _composition(doc, urls, attachment_urls))]
    entries += _party(urls, "sender", s.name, s.agb, s.organisation, s.organisation_agb,
                      s.department, s.address, s.phone, True)
    entries += _party(urls, "recipient", r.practitioner, r.practitioner_agb, r.name, r.agb,
                      r.department, r.address, r.phone, False, doc.specialism)
    entries.append((urls["patient"], _patient_resource(doc.patient)))
    if doc.letter is not None:
        entries.append((urls["letter"], _binary(doc.letter.media_type, doc.letter.data)))
    entries += [(url, _binary(attachment.media_type, attachment.data))
                for url, attachment in zip(attachment_urls, doc.attachments)]
    body = "".join([f'<entry><fullUrl value="{url}"/><resource>{resource}</resource></entry>'
                    for url, resource in entries])
    return (f'{_HEAD}<id value="{bundle_id}"/><identifier><system value="urn:ietf:rfc:3986"/>'
            f'<value value="{urls["bundle"]}"/></identifier><type value="document"/>{body}'
            "</Bundle>").encode("utf-8")


def _reference(name: str, url: str, display: str = "") -> str:
    return f'<{name}><reference value="{url}"/>{optional("display", display)}</{name}>'


def _identifier(system: str, value: str) -> str:
    """An identifier in ``system`` (already escaped), or nothing without a value."""
    if not value:
        return ""
    return f'<identifier><system value="{system}"/><value value="{escape(value)}"/></identifier>'


def _binary(media_type: str, data: bytes) -> str:
    return f'<Binary><contentType value="{escape(media_type)}"/>' \
           f'<content value="{base64.b64encode(data).decode("ascii")}"/></Binary>'


def _coding(code: Code, name: str = "coding") -> str:
    return f'<{name}>{optional("system", coding_system(code.system))}' \
           f'<code value="{escape(code.code)}"/>{optional("display", code.display)}</{name}>'


def _composition(doc: Document, urls: dict[str, str], attachment_urls: list[str]) -> str:
    kind_type, title = _KIND[doc.kind]
    product = f'<extension url="{_PRODUCT_EXT}">{_coding(doc.product, "valueCoding")}</extension>' \
        if doc.product is not None else ""
    parts = [
        f'<Composition><extension url="{_SENDER_EXT}"><valueReference><reference value="'
        f'{urls["sender-role"]}"/></valueReference></extension><extension url="{_RECIPIENT_EXT}">'
        f'<valueReference><reference value="{urls["recipient-role"]}"/></valueReference>'
        f'</extension>{product}',
        _identifier(escape(number_system(doc.zd_number)), doc.zd_number),
        f'<status value="final"/>{kind_type}<subject><reference value="{urls["patient"]}"/>'
        f'</subject><date value="{aware(doc.sent_at).isoformat()}"/><author><reference value="'
        f'{urls["sender-person"]}"/></author><title value="{title}"/>']
    if doc.in_reply_to:
        parts.append(f'<relatesTo><code value="appends"/><targetIdentifier><system value="'
                     f'{escape(number_system(doc.in_reply_to))}"/><value value="'
                     f'{escape(doc.in_reply_to)}"/></targetIdentifier></relatesTo>')
    if doc.body or doc.letter is not None:
        narrative = "".join([_NARRATIVE] + [f"<p>{escape(line)}</p>" for line in doc.body]
                            + ["</div></text>"]) if doc.body else ""
        letter = _reference("entry", urls["letter"]) if doc.letter is not None else ""
        parts.append(f"{_LETTER_SECTION}{narrative}{letter}</section>")
    if doc.attachments:
        parts.append("".join([_ATTACHMENT_SECTION] + [
            _reference("entry", url, attachment.file_name)
            for url, attachment in zip(attachment_urls, doc.attachments)] + ["</section>"]))
    parts.append("</Composition>")
    return "".join(parts)


def _party(urls: dict[str, str], prefix: str, person: str, person_agb: str, organisation: str,
           organisation_agb: str, department: str, address: Address | None, phone: str,
           always_person: bool, specialism: Code | None = None) -> list[tuple[str, str]]:
    """PractitionerRole, Practitioner and Organization entries (full URL, resource) for one
    party."""
    role, resources = "", []
    if always_person or person or person_agb:
        url = urls[prefix + "-person"]
        role = f'<practitioner><reference value="{url}"/></practitioner>'
        name = f'<name><text value="{escape(person)}"/></name>' if person else ""
        resources.append((url, f"<Practitioner>{_identifier(_AGB, person_agb)}{name}"
                               "</Practitioner>"))
    if organisation or organisation_agb or address or phone:
        url = urls[prefix + "-organisation"]
        role += f'<organization><reference value="{url}"/></organization>'
        resources.append((url, f"<Organization>{_identifier(_AGB, organisation_agb)}"
                               f"{optional('name', organisation)}{_telecom(phone)}"
                               f"{_address_element(address)}</Organization>"))
    if department or specialism:
        role += f'<specialty>{_coding(specialism) if specialism else ""}' \
                f'{optional("text", department)}</specialty>'
    return [(urls[prefix + "-role"], f"<PractitionerRole>{role}</PractitionerRole>")] + resources


def _telecom(phone: str) -> str:
    if not phone:
        return ""
    return f'<telecom><system value="phone"/><value value="{escape(phone)}"/></telecom>'


def _extension(opening: str, value: str) -> str:
    """A string extension (``opening`` from ``_string_extension``) when ``value`` is not empty."""
    return f"{opening}{escape(value)}{_EXTENSION_END}" if value else ""


def _address_element(address: Address | None) -> str:
    if address is None:
        return ""
    street, number = address.street, address.house_number
    line_text = _joined(street, number)
    line = f'<line value="{escape(line_text)}">{_extension(_STREET, street)}' \
           f'{_extension(_HOUSE_NUMBER, number)}</line>' if line_text else ""
    return f'<address>{line}{optional("city", address.city)}' \
           f'{optional("postalCode", address.postcode)}{optional("country", address.country)}' \
           "</address>"


def _patient_resource(patient: Patient) -> str:
    birth = patient.birth_date
    birth_date = f'<birthDate value="{birth.isoformat()}"/>' if birth else ""  # YYYY-MM-DD
    return f"<Patient>{_identifier(_BSN, patient.bsn)}{_identifier(_PORTAL, patient.portal_id)}" \
           f"{_human_name(patient)}{_telecom(patient.phone)}" \
           f'<gender value="{_GENDER[patient.sex]}"/>{birth_date}' \
           f"{_address_element(patient.address)}</Patient>"


def _joined(first: str, second: str) -> str:
    """The two parts joined by a blank, or the one that is not empty."""
    return f"{first} {second}" if first and second else first or second


def _human_name(patient: Patient) -> str:
    full = _joined(patient.family_prefix, patient.family_name)
    if patient.partner_name or patient.partner_prefix:
        partner = _joined(patient.partner_prefix, patient.partner_name)
        full = f"{partner}-{full}" if full else partner
    if not (full or patient.given_name or patient.initials):
        return ""
    if patient.family_prefix or patient.partner_name or patient.partner_prefix:
        parts = "".join([_extension(opening, getattr(patient, key))
                         for key, opening in _NAME_PARTS])
        family = f'<family value="{escape(full)}">{parts}</family>'
    else:
        family = optional("family", full)
    initials = f'<given value="{escape(patient.initials)}">{_INITIALS}</given>' \
        if patient.initials else ""
    return f'<name><use value="official"/>{family}{optional("given", patient.given_name)}' \
           f"{initials}</name>"
