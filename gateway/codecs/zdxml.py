"""ZorgDomein XML: a FHIR STU3 document Bundle in XML <-> Document.

Facts (formats.md): Bundle type ``document`` whose first entry is the
Composition; the Composition's identifier holds the ZD number; its type is
coded in ZorgDomein's document-type code system; the responsible sender is a
PractitionerRole named by the ``zd-sender`` extension; BSN and AGB identifier
systems are the Dutch naming systems.

Our conventions (every URL and code that ZorgDomein does not publish is in
the tables below, and nowhere else):
- the teleconsult answer's type code, the ZD-number identifier system and the
  recipient extension (a PractitionerRole of the receiving institution);
- the answer or follow-up relates to its request through
  ``Composition.relatesTo`` (code ``appends``, targetIdentifier = ZD number);
- the letter is the first section's narrative, one XHTML ``<p>`` per line;
- attachments are Binary entries, referenced from a section titled
  ``Bijlagen`` whose entry ``display`` carries the file name (STU3 Binary
  has no field for it);
- Dutch name parts use the core humanname-own-prefix/-own-name/-partner-prefix/
  -partner-name extensions on ``family``; initials are a ``given`` with the
  iso21090 qualifier ``IN``; street and house number use the ADXP extensions;
- person names are ``HumanName.text``; a department is the PractitionerRole's
  specialty text; ``sent_at`` is ``Composition.date`` with the Dutch offset.

Parsing uses a hardened lxml parser: no network, no DTD, no entities; any
DOCTYPE is refused before parsing. Input is capped at ``MAX_BYTES``.
"""

import base64
import binascii
import datetime as dt
import uuid

from lxml import etree

from gateway.codecs.sniff import BOM
from gateway.document import (Address, Attachment, Document, Kind, Patient, Recipient, Sender, Sex,
                              aware, local_time)
from gateway.errors import DecodeError, DocumentError

MAX_BYTES = 16 * 1024 * 1024
FHIR = "http://hl7.org/fhir"
XHTML = "http://www.w3.org/1999/xhtml"
NS = {"f": FHIR, "h": XHTML}
F = "{%s}" % FHIR
BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"
AGB_SYSTEM = "http://fhir.nl/fhir/NamingSystem/agb-z"
DOCTYPE_SYSTEM = "http://zorgdomein.nl/terminology/code-system/document-type"
ZD_SYSTEM = "http://zorgdomein.nl/fhir/NamingSystem/zd-number"          # our convention
SENDER_EXT = "http://zorgdomein.nl/fhir/StructureDefinition/zd-sender"
RECIPIENT_EXT = "https://gatewayd.nl/fhir/StructureDefinition/recipient"  # our convention
GATEWAY_TYPES = "https://gatewayd.nl/fhir/CodeSystem/document-type"     # our convention
HL7_EXT = "http://hl7.org/fhir/StructureDefinition/"
NAME_PARTS = (("family_prefix", "humanname-own-prefix"), ("family_name", "humanname-own-name"),
              ("partner_prefix", "humanname-partner-prefix"), ("partner_name", "humanname-partner-name"))
KINDS = {
    Kind.REFERRAL: (DOCTYPE_SYSTEM, "referral-letter", "Verwijsbrief"),
    Kind.TELECONSULT_REQUEST: (DOCTYPE_SYSTEM, "teleconsult-request-form", "Teleconsultaanvraag"),
    Kind.SUPPLEMENT: (DOCTYPE_SYSTEM, "supplement", "Nazending"),
    Kind.CANCELLATION: (DOCTYPE_SYSTEM, "cancellation", "Annuleringsbericht"),
    Kind.TELECONSULT_ANSWER: (GATEWAY_TYPES, "teleconsult-answer", "Antwoord teleconsult"),
}
CODE_KINDS = {(system, code): kind for kind, (system, code, _) in KINDS.items()}
GENDER_OUT = {Sex.MALE: "male", Sex.FEMALE: "female", Sex.UNKNOWN: "unknown"}
GENDER_IN = {"male": Sex.MALE, "female": Sex.FEMALE, "unknown": Sex.UNKNOWN, "other": Sex.UNKNOWN,
             "": Sex.UNKNOWN}
LETTER_TITLE, ATTACHMENT_TITLE = "Brief", "Bijlagen"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


_PARSER = _parser()


def parse(data: bytes) -> etree._Element:
    """Parse ``data`` with the hardened parser; raise DecodeError for DOCTYPE or bad XML."""
    if len(data) > MAX_BYTES:
        raise DecodeError(f"document is larger than {MAX_BYTES} bytes", where="byte 1",
                          code="E-XML-TOO-LARGE")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DecodeError("XML with a DOCTYPE or entity declaration is refused", where="prolog",
                          code="E-XML-DOCTYPE")
    try:
        root = etree.fromstring(data.removeprefix(BOM), _PARSER)
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else 0
        raise DecodeError(f"not well-formed XML: {exc.msg}", where=f"line {line}",
                          code="E-XML-SYNTAX") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise DecodeError("XML with a DOCTYPE is refused", where="prolog", code="E-XML-DOCTYPE")
    return root


def decode(data: bytes) -> list[Document]:
    """Decode a FHIR STU3 document Bundle into one Document; raise DecodeError naming the element."""
    root = parse(data)
    if root.tag != F + "Bundle":
        raise _error("root element must be a FHIR Bundle", root)
    if _val(root, "f:type") != "document":
        raise _error("Bundle.type must be 'document'", root)
    resources = {}
    for entry in root.iterfind("f:entry", NS):
        resource = entry.find("f:resource/*", NS)
        if resource is not None:
            resources[_val(entry, "f:fullUrl")] = resource
    entries = list(resources.values())
    if not entries or entries[0].tag != F + "Composition":
        raise _error("the first Bundle entry must be a Composition", root)
    return [_document(entries[0], resources)]


def control_ids(data: bytes) -> list[str]:
    """The Bundle.id, for dedup."""
    return [_val(parse(data), "f:id")]


def _error(message: str, element, code: str = "E-XML-STRUCTURE") -> DecodeError:
    path = element.getroottree().getpath(element).replace("{%s}" % FHIR, "") if element is not None \
        else "/"
    line = getattr(element, "sourceline", None)
    return DecodeError(message, where=f"{path}" + (f", line {line}" if line else ""), code=code)


def _val(element, path: str) -> str:
    found = element.find(path, NS) if element is not None else None
    return (found.get("value") or "").strip() if found is not None else ""


def _ref(element, path: str, resources: dict):
    target = _val(element, path)
    return resources.get(target) if target else None


def _extension(element, url: str):
    if element is None:
        return None
    for ext in element.iterfind("f:extension", NS):
        if ext.get("url") == url:
            return ext
    return None


def _identifier(element, system: str) -> str:
    if element is None:
        return ""
    for identifier in element.iterfind("f:identifier", NS):
        if _val(identifier, "f:system") == system:
            return _val(identifier, "f:value")
    return ""


def _document(composition, resources: dict) -> Document:
    coding = composition.find("f:type/f:coding", NS)
    kind = CODE_KINDS.get((_val(coding, "f:system"), _val(coding, "f:code")))
    if kind is None:
        raise _error("Composition.type is not a known document type", coding if coding is not None
                     else composition, "E-XML-TYPE")
    date = _val(composition, "f:date")
    relates = composition.find("f:relatesTo/f:targetIdentifier", NS)
    try:
        return Document(
            kind=kind, zd_number=_identifier(composition, ZD_SYSTEM),
            sent_at=_datetime(date, composition),
            sender=_sender(composition, resources), recipient=_recipient(composition, resources),
            patient=_patient(_ref(composition, "f:subject/f:reference", resources)),
            body=_letter(composition), in_reply_to=_val(relates, "f:value") or None,
            attachments=_attachments(composition, resources))
    except DocumentError as exc:
        raise _error(f"{exc.where} {exc.message}", composition, exc.code) from None


def _datetime(value: str, element) -> dt.datetime:
    try:
        if len(value) < 19:
            raise ValueError
        return local_time(dt.datetime.fromisoformat(value)).replace(microsecond=0)
    except ValueError:
        raise _error("Composition.date is not a real dateTime with time", element,
                     "E-XML-DATE") from None


def _role(composition, url: str, resources: dict):
    ext = _extension(composition, url)
    role = _ref(ext, "f:valueReference/f:reference", resources) if ext is not None else None
    if role is None:
        raise _error(f"Composition has no extension {url} naming a PractitionerRole", composition,
                     "E-XML-MISSING")
    return (role, _ref(role, "f:practitioner/f:reference", resources),
            _ref(role, "f:organization/f:reference", resources))


def _sender(composition, resources: dict) -> Sender:
    role, person, org = _role(composition, SENDER_EXT, resources)
    return Sender(agb=_identifier(person, AGB_SYSTEM), name=_val(person, "f:name/f:text"),
                  department=_val(role, "f:specialty/f:text"), organisation=_val(org, "f:name"),
                  organisation_agb=_identifier(org, AGB_SYSTEM), address=_address(org),
                  phone=_val(org, "f:telecom/f:value"))


def _recipient(composition, resources: dict) -> Recipient:
    role, person, org = _role(composition, RECIPIENT_EXT, resources)
    return Recipient(agb=_identifier(org, AGB_SYSTEM), name=_val(org, "f:name"),
                     department=_val(role, "f:specialty/f:text"),
                     practitioner=_val(person, "f:name/f:text"),
                     practitioner_agb=_identifier(person, AGB_SYSTEM), address=_address(org),
                     phone=_val(org, "f:telecom/f:value"))


def _address(element) -> Address | None:
    address = element.find("f:address", NS) if element is not None else None
    if address is None:
        return None
    line = address.find("f:line", NS)
    street = _extension(line, HL7_EXT + "iso21090-ADXP-streetName")
    number = _extension(line, HL7_EXT + "iso21090-ADXP-houseNumber")
    parts = street is not None or number is not None
    found = Address(street=_val(street, "f:valueString") if parts else _val(address, "f:line"),
                    house_number=_val(number, "f:valueString"), postcode=_val(address, "f:postalCode"),
                    city=_val(address, "f:city"), country=_val(address, "f:country"))
    return found if any(vars(found).values()) else None


def _patient(patient) -> Patient:
    if patient is None or patient.tag != F + "Patient":
        raise _error("Composition.subject must reference a Patient in the Bundle", patient,
                     "E-XML-MISSING")
    name = patient.find("f:name", NS)
    family = name.find("f:family", NS) if name is not None else None
    parts = {key: _val(_extension(family, HL7_EXT + url), "f:valueString") for key, url in NAME_PARTS}
    if not any(_extension(family, HL7_EXT + url) is not None for _, url in NAME_PARTS):
        parts["family_name"] = _val(name, "f:family")
    given, initials = "", ""
    for element in (name.iterfind("f:given", NS) if name is not None else ()):
        qualifier = _extension(element, HL7_EXT + "iso21090-EN-qualifier")
        if _val(qualifier, "f:valueCode") == "IN":
            initials = initials or (element.get("value") or "").strip()
        else:
            given = given or (element.get("value") or "").strip()
    gender = _val(patient, "f:gender")
    if gender not in GENDER_IN:
        raise _error("Patient.gender must be male, female, other or unknown", patient, "E-XML-SEX")
    birth = _val(patient, "f:birthDate")
    try:
        birth_date = dt.date.fromisoformat(birth) if birth else None
    except ValueError:
        raise _error("Patient.birthDate is not a real date", patient, "E-XML-DATE") from None
    return Patient(bsn=_identifier(patient, BSN_SYSTEM), birth_date=birth_date, sex=GENDER_IN[gender],
                   given_name=given, initials=initials, address=_address(patient),
                   phone=_val(patient, "f:telecom/f:value"), **parts)


def _letter(composition) -> tuple[str, ...]:
    for section in composition.iterfind("f:section", NS):
        if _val(section, "f:title") == LETTER_TITLE:
            div = section.find("f:text/h:div", NS)
            return tuple("".join(p.itertext()) for p in div.iterfind("h:p", NS)) if div is not None \
                else ()
    return ()


def _attachments(composition, resources: dict) -> tuple[Attachment, ...]:
    found = []
    for section in composition.iterfind("f:section", NS):
        if _val(section, "f:title") != ATTACHMENT_TITLE:
            continue
        for entry in section.iterfind("f:entry", NS):
            binary = _ref(entry, "f:reference", resources)
            if binary is None or binary.tag != F + "Binary":
                raise _error("attachment entry does not reference a Binary in the Bundle", entry,
                             "E-XML-ATTACHMENT")
            try:
                data = base64.b64decode(_val(binary, "f:content"), validate=True)
            except binascii.Error:
                raise _error("Binary.content is not valid Base64", binary, "E-XML-ATTACHMENT") from None
            found.append(Attachment(_val(entry, "f:display"), _val(binary, "f:contentType"), data))
    return tuple(found)


def encode(doc: Document) -> bytes:
    """Write ``doc`` as a FHIR STU3 document Bundle (UTF-8 XML)."""
    bundle_id = doc.fingerprint(32)
    urls = _Urls(bundle_id)
    bundle = etree.Element(F + "Bundle", nsmap={None: FHIR})
    _add(bundle, "id", bundle_id)
    _identify(bundle, "urn:ietf:rfc:3986", urls("bundle"))
    _add(bundle, "type", "document")
    entries = [("composition", _composition(doc, urls))]
    entries += _party_resources(urls, "sender", doc.sender.name, doc.sender.agb,
                                doc.sender.organisation, doc.sender.organisation_agb,
                                doc.sender.department, doc.sender.address, doc.sender.phone, True)
    entries += _party_resources(urls, "recipient", doc.recipient.practitioner,
                                doc.recipient.practitioner_agb, doc.recipient.name,
                                doc.recipient.agb, doc.recipient.department,
                                doc.recipient.address, doc.recipient.phone, False)
    entries.append(("patient", _patient_resource(doc.patient)))
    for index, attachment in enumerate(doc.attachments, 1):
        binary = etree.Element(F + "Binary")
        _add(binary, "contentType", attachment.media_type)
        _add(binary, "content", base64.b64encode(attachment.data).decode("ascii"))
        entries.append((f"attachment-{index}", binary))
    for key, resource in entries:
        entry = _add(bundle, "entry")
        _add(entry, "fullUrl", urls(key))
        _add(entry, "resource").append(resource)
    return etree.tostring(bundle, xml_declaration=True, encoding="UTF-8")


class _Urls:
    """Stable ``urn:uuid:`` full URLs for the resources of one Bundle."""

    def __init__(self, bundle_id: str):
        self.namespace = uuid.UUID(bundle_id)

    def __call__(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(self.namespace, key)}"


def _add(parent, name: str, value: str | None = None):
    element = etree.SubElement(parent, F + name)
    if value is not None:
        element.set("value", value)
    return element


def _opt(parent, name: str, value: str):
    if value:
        _add(parent, name, value)


def _reference(parent, name: str, url: str, display: str = ""):
    element = _add(parent, name)
    _add(element, "reference", url)
    _opt(element, "display", display)
    return element


def _composition(doc: Document, urls: _Urls):
    comp = etree.Element(F + "Composition")
    for url, key in ((SENDER_EXT, "sender-role"), (RECIPIENT_EXT, "recipient-role")):
        ext = _add(comp, "extension")
        ext.set("url", url)
        _reference(ext, "valueReference", urls(key))
    identifier = _add(comp, "identifier")
    _add(identifier, "system", ZD_SYSTEM)
    _add(identifier, "value", doc.zd_number)
    _add(comp, "status", "final")
    system, code, title = KINDS[doc.kind]
    coding = _add(_add(comp, "type"), "coding")
    _add(coding, "system", system)
    _add(coding, "code", code)
    _add(coding, "display", title)
    _reference(comp, "subject", urls("patient"))
    _add(comp, "date", aware(doc.sent_at).isoformat())
    _reference(comp, "author", urls("sender-person"))
    _add(comp, "title", title)
    if doc.in_reply_to:
        relates = _add(comp, "relatesTo")
        _add(relates, "code", "appends")
        target = _add(relates, "targetIdentifier")
        _add(target, "system", ZD_SYSTEM)
        _add(target, "value", doc.in_reply_to)
    if doc.body:
        section = _add(comp, "section")
        _add(section, "title", LETTER_TITLE)
        text = _add(section, "text")
        _add(text, "status", "additional")
        div = etree.SubElement(text, "{%s}div" % XHTML, nsmap={None: XHTML})
        for line in doc.body:
            etree.SubElement(div, "{%s}p" % XHTML).text = line
    if doc.attachments:
        section = _add(comp, "section")
        _add(section, "title", ATTACHMENT_TITLE)
        for index, attachment in enumerate(doc.attachments, 1):
            _reference(section, "entry", urls(f"attachment-{index}"), attachment.file_name)
    return comp


def _party_resources(urls: _Urls, prefix: str, person: str, person_agb: str, organisation: str,
                     organisation_agb: str, department: str, address: Address | None, phone: str,
                     always_person: bool) -> list:
    """PractitionerRole, Practitioner and Organization entries for one party."""
    role = etree.Element(F + "PractitionerRole")
    resources = [(f"{prefix}-role", role)]
    if always_person or person or person_agb:
        _reference(role, "practitioner", urls(f"{prefix}-person"))
        practitioner = etree.Element(F + "Practitioner")
        _identify(practitioner, AGB_SYSTEM, person_agb)
        if person:
            _add(_add(practitioner, "name"), "text", person)
        resources.append((f"{prefix}-person", practitioner))
    if organisation or organisation_agb or address or phone:
        _reference(role, "organization", urls(f"{prefix}-organisation"))
        org = etree.Element(F + "Organization")
        _identify(org, AGB_SYSTEM, organisation_agb)
        _opt(org, "name", organisation)
        _telecom(org, phone)
        _address_element(org, address)
        resources.append((f"{prefix}-organisation", org))
    if department:
        _add(_add(role, "specialty"), "text", department)
    return resources


def _identify(resource, system: str, value: str):
    if value:
        identifier = _add(resource, "identifier")
        _add(identifier, "system", system)
        _add(identifier, "value", value)


def _telecom(resource, phone: str):
    if phone:
        telecom = _add(resource, "telecom")
        _add(telecom, "system", "phone")
        _add(telecom, "value", phone)


def _address_element(resource, address: Address | None):
    if address is None:
        return
    element = _add(resource, "address")
    line_text = " ".join(p for p in (address.street, address.house_number) if p)
    if line_text:
        line = _add(element, "line", line_text)
        for url, value in (("iso21090-ADXP-streetName", address.street),
                           ("iso21090-ADXP-houseNumber", address.house_number)):
            _string_extension(line, url, value)
    _opt(element, "city", address.city)
    _opt(element, "postalCode", address.postcode)
    _opt(element, "country", address.country)


def _string_extension(parent, url: str, value: str, value_type: str = "valueString"):
    if value:
        ext = etree.SubElement(parent, F + "extension", url=HL7_EXT + url)
        _add(ext, value_type, value)


def _patient_resource(patient: Patient):
    resource = etree.Element(F + "Patient")
    _identify(resource, BSN_SYSTEM, patient.bsn)
    full = " ".join(p for p in (patient.family_prefix, patient.family_name) if p)
    if patient.partner_name or patient.partner_prefix:
        partner = " ".join(p for p in (patient.partner_prefix, patient.partner_name) if p)
        full = f"{partner}-{full}" if full else partner
    detailed = patient.family_prefix or patient.partner_name or patient.partner_prefix
    if full or patient.given_name or patient.initials:
        name = _add(resource, "name")
        _add(name, "use", "official")
        if full:
            family = _add(name, "family", full)
            for key, url in NAME_PARTS if detailed else ():
                _string_extension(family, url, getattr(patient, key))
        if patient.given_name:
            _add(name, "given", patient.given_name)
        if patient.initials:
            given = _add(name, "given", patient.initials)
            _string_extension(given, "iso21090-EN-qualifier", "IN", "valueCode")
    _telecom(resource, patient.phone)
    _add(resource, "gender", GENDER_OUT[patient.sex])
    if patient.birth_date:
        _add(resource, "birthDate", f"{patient.birth_date.year:04d}-{patient.birth_date:%m-%d}")
    _address_element(resource, patient.address)
    return resource
