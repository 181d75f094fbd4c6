"""The ZorgDomein XML writer: a Document as a FHIR STU3 document Bundle (UTF-8 XML).

Resources are written in FHIR's element order as XML text (``fhirxml``); the URLs,
codes and conventions are the tables and docstring of ``zdxml``. Full URLs, the
Bundle id and every other identifier derive from the document, so the same document
gives the same bytes.
"""

import base64

from gateway.codecs import fhirxml
from gateway.codecs.fhirxml import element, optional, primitive
from gateway.codecs.zdxml import (AGB_SYSTEM, ATTACHMENT_TITLE, BSN_SYSTEM, GENDER_OUT, HL7_EXT,
                                  KINDS, LETTER_TITLE, NAME_PARTS, PORTAL_SYSTEM, PRODUCT_EXT,
                                  RECIPIENT_EXT, SENDER_EXT, coding_system, number_system)
from gateway.document import Address, Code, Document, Patient, aware, require_agb

def encode(doc: Document) -> bytes:
    """Write ``doc`` as a FHIR STU3 document Bundle (UTF-8 XML); a party without an AGB
    code (only a mailbox) cannot be written."""
    require_agb(doc, "ZorgDomein XML")
    bundle_id = doc.fingerprint(32)
    urls = _Urls(bundle_id)
    s, r = doc.sender, doc.recipient
    entries = [("composition", _composition(doc, urls))]
    entries += _party(urls, "sender", s.name, s.agb, s.organisation, s.organisation_agb,
                      s.department, s.address, s.phone, True)
    entries += _party(urls, "recipient", r.practitioner, r.practitioner_agb, r.name, r.agb,
                      r.department, r.address, r.phone, False, doc.specialism)
    entries.append(("patient", _patient_resource(doc.patient)))
    if doc.letter is not None:
        entries.append(("letter", _binary(doc.letter.media_type, doc.letter.data)))
    for index, attachment in enumerate(doc.attachments, 1):
        entries.append((f"attachment-{index}", _binary(attachment.media_type, attachment.data)))
    bundle = element(
        "Bundle", primitive("id", bundle_id), _identifier_element("urn:ietf:rfc:3986", urls("bundle")),
        primitive("type", "document"),
        *(element("entry", primitive("fullUrl", urls(key)), element("resource", resource))
          for key, resource in entries),
        attrs=f' xmlns="{fhirxml.FHIR}"')
    return ("<?xml version='1.0' encoding='UTF-8'?>\n" + bundle).encode("utf-8")


class _Urls:
    """Stable ``urn:uuid:`` full URLs for the resources of one Bundle: the bundle id's
    first 24 hex digits, then 8 numbering the resource."""

    KEYS = {"bundle": 0, "composition": 1, "patient": 2, "sender-role": 3, "sender-person": 4,
            "sender-organisation": 5, "recipient-role": 6, "recipient-person": 7,
            "recipient-organisation": 8, "letter": 9}

    def __init__(self, bundle_id: str):
        self.prefix = f"urn:uuid:{bundle_id[:8]}-{bundle_id[8:12]}-{bundle_id[12:16]}-" \
                      f"{bundle_id[16:20]}-{bundle_id[20:24]}"
        self.made: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        found = self.made.get(key)
        if found is None:
            number = self.KEYS[key] if key in self.KEYS else 1000 + int(key.rsplit("-", 1)[1])
            found = self.made[key] = f"{self.prefix}{number:08x}"
        return found


def _reference(name: str, url: str, display: str = "") -> str:
    return element(name, primitive("reference", url), optional("display", display))


def _identifier_element(system: str, value: str) -> str:
    if not value:
        return ""
    return element("identifier", primitive("system", system), primitive("value", value))


def _binary(media_type: str, data: bytes) -> str:
    return element("Binary", primitive("contentType", media_type),
                   primitive("content", base64.b64encode(data).decode("ascii")))


def _coding(code: Code, name: str = "coding") -> str:
    return element(name, optional("system", coding_system(code.system)),
                   primitive("code", code.code), optional("display", code.display))


def _composition(doc: Document, urls: _Urls) -> str:
    system, code, title = KINDS[doc.kind]
    parts = [element("extension", _reference("valueReference", urls(key)), attrs=f' url="{url}"')
             for url, key in ((SENDER_EXT, "sender-role"), (RECIPIENT_EXT, "recipient-role"))]
    if doc.product is not None:
        parts.append(element("extension", _coding(doc.product, "valueCoding"),
                             attrs=f' url="{PRODUCT_EXT}"'))
    parts += [
        _identifier_element(number_system(doc.zd_number), doc.zd_number),
        primitive("status", "final"),
        element("type", element("coding", primitive("system", system), primitive("code", code),
                                primitive("display", title))),
        _reference("subject", urls("patient")),
        primitive("date", aware(doc.sent_at).isoformat()),
        _reference("author", urls("sender-person")),
        primitive("title", title),
    ]
    if doc.in_reply_to:
        parts.append(element("relatesTo", primitive("code", "appends"), element(
            "targetIdentifier", primitive("system", number_system(doc.in_reply_to)),
            primitive("value", doc.in_reply_to))))
    if doc.body or doc.letter is not None:
        paragraphs = "".join(f"<p>{fhirxml.escape(line)}</p>" for line in doc.body)
        parts.append(element("section", primitive("title", LETTER_TITLE), element(
            "text", primitive("status", "additional"),
            element("div", paragraphs, attrs=f' xmlns="{fhirxml.XHTML}"')) if doc.body else "",
            _reference("entry", urls("letter")) if doc.letter is not None else ""))
    if doc.attachments:
        parts.append(element("section", primitive("title", ATTACHMENT_TITLE), *(
            _reference("entry", urls(f"attachment-{index}"), attachment.file_name)
            for index, attachment in enumerate(doc.attachments, 1))))
    return element("Composition", *parts)


def _party(urls: _Urls, prefix: str, person: str, person_agb: str, organisation: str,
           organisation_agb: str, department: str, address: Address | None, phone: str,
           always_person: bool, specialism: Code | None = None) -> list[tuple[str, str]]:
    """PractitionerRole, Practitioner and Organization entries for one party."""
    role, resources = [], []
    if always_person or person or person_agb:
        role.append(_reference("practitioner", urls(f"{prefix}-person")))
        resources.append((f"{prefix}-person", element(
            "Practitioner", _identifier_element(AGB_SYSTEM, person_agb),
            element("name", primitive("text", person)) if person else "")))
    if organisation or organisation_agb or address or phone:
        role.append(_reference("organization", urls(f"{prefix}-organisation")))
        resources.append((f"{prefix}-organisation", element(
            "Organization", _identifier_element(AGB_SYSTEM, organisation_agb),
            optional("name", organisation), _telecom(phone), _address_element(address))))
    if department or specialism:
        role.append(element("specialty", _coding(specialism) if specialism else "",
                            optional("text", department)))
    return [(f"{prefix}-role", element("PractitionerRole", *role))] + resources


def _telecom(phone: str) -> str:
    if not phone:
        return ""
    return element("telecom", primitive("system", "phone"), primitive("value", phone))


def _string_extension(url: str, value: str, value_type: str = "valueString") -> str:
    if not value:
        return ""
    return element("extension", primitive(value_type, value), attrs=f' url="{HL7_EXT}{url}"')


def _address_element(address: Address | None) -> str:
    if address is None:
        return ""
    line_text = " ".join(p for p in (address.street, address.house_number) if p)
    line = primitive("line", line_text,
                     _string_extension("iso21090-ADXP-streetName", address.street),
                     _string_extension("iso21090-ADXP-houseNumber", address.house_number)) \
        if line_text else ""
    return element("address", line, optional("city", address.city),
                   optional("postalCode", address.postcode), optional("country", address.country))


def _patient_resource(patient: Patient) -> str:
    full = " ".join(p for p in (patient.family_prefix, patient.family_name) if p)
    if patient.partner_name or patient.partner_prefix:
        partner = " ".join(p for p in (patient.partner_prefix, patient.partner_name) if p)
        full = f"{partner}-{full}" if full else partner
    detailed = patient.family_prefix or patient.partner_name or patient.partner_prefix
    name = ""
    if full or patient.given_name or patient.initials:
        family = primitive("family", full, *(
            _string_extension(url, getattr(patient, key)) for key, url in NAME_PARTS)) \
            if detailed else optional("family", full)
        initials = primitive("given", patient.initials,
                             _string_extension("iso21090-EN-qualifier", "IN", "valueCode")) \
            if patient.initials else ""
        name = element("name", primitive("use", "official"), family,
                       optional("given", patient.given_name), initials)
    birth = patient.birth_date
    return element(
        "Patient", _identifier_element(BSN_SYSTEM, patient.bsn),
        _identifier_element(PORTAL_SYSTEM, patient.portal_id), name, _telecom(patient.phone),
        primitive("gender", GENDER_OUT[patient.sex]),
        optional("birthDate", f"{birth.year:04d}-{birth:%m-%d}" if birth else ""),
        _address_element(patient.address))
