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
- the letter is the narrative of the section titled ``Brief``, one XHTML ``<p>``
  per line; read from any XHTML (see ``fhirxml.narrative_lines``), and the
  narrative of every other section follows, after a line with its title, so no
  section text is lost; a section entry that is not an attachment is refused
  (E-XML-UNPLACED);
- attachments are Binary entries, referenced from a section titled
  ``Bijlagen`` whose entry ``display`` carries the file name (STU3 Binary
  has no field for it);
- Dutch name parts use the core humanname-own-prefix/-own-name/-partner-prefix/
  -partner-name extensions on ``family``; initials are a ``given`` with the
  iso21090 qualifier ``IN``; street and house number use the ADXP extensions;
- person names are ``HumanName.text``; a department is the PractitionerRole's
  specialty text; ``sent_at`` is ``Composition.date`` with the Dutch offset.

Parsing and writing are in ``fhirxml`` (a hardened parser, no DOCTYPE, no
entities, no network or file access).
"""

import base64
import binascii
import datetime as dt

from gateway.codecs import fhirxml
from gateway.codecs.fhirxml import Node, element, extension, get, optional, primitive, val
from gateway.document import (Address, Attachment, Document, Kind, Patient, Recipient, Sender, Sex,
                              aware, local_time)
from gateway.errors import DecodeError, DocumentError

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
_FHIR_PATHS = {"zd_number": "Composition.identifier", "in_reply_to": "Composition.relatesTo",
               "sender.agb": "Practitioner.identifier (sender)",
               "recipient.agb": "Organization.identifier (recipient)",
               "patient.bsn": "Patient.identifier", "patient.birth_date": "Patient.birthDate"}
CODE_KINDS = {(system, code): kind for kind, (system, code, _) in KINDS.items()}
GENDER_OUT = {Sex.MALE: "male", Sex.FEMALE: "female", Sex.UNKNOWN: "unknown"}
GENDER_IN = {"male": Sex.MALE, "female": Sex.FEMALE, "unknown": Sex.UNKNOWN, "other": Sex.UNKNOWN,
             "": Sex.UNKNOWN}
LETTER_TITLE, ATTACHMENT_TITLE = "Brief", "Bijlagen"


def decode(data: bytes) -> list[Document]:
    """Decode a FHIR STU3 document Bundle into one Document; raise DecodeError naming the element."""
    return [doc for _, doc in decode_messages(data)]


def decode_messages(data: bytes) -> list[tuple[str, Document]]:
    """Like decode, the Document with its control id (Bundle.id)."""
    root = fhirxml.read(data)
    if root.name != "Bundle":
        raise _error("root element must be a FHIR Bundle", root.name)
    if val(root, "type") != "document":
        raise _error("Bundle.type must be 'document'", "Bundle.type")
    resources: dict[str, Node] = {}
    for entry in root.all("entry"):
        resource = get(entry, "resource")
        if resource is not None and resource.children:
            resources[val(entry, "fullUrl")] = next(iter(resource.children.values()))[0]
    entries = list(resources.values())
    if not entries or entries[0].name != "Composition":
        raise _error("the first Bundle entry must be a Composition", "Bundle.entry[1]")
    return [(val(root, "id"), _document(entries[0], resources))]


def _error(message: str, where: str, code: str = "E-XML-STRUCTURE") -> DecodeError:
    """A DecodeError whose ``where`` is a FHIR path such as ``Patient.birthDate``."""
    return DecodeError(message, where=where, code=code)


def _ref(node: Node | None, path: str, resources: dict) -> Node | None:
    """The Bundle resource that the reference at ``path`` points to, or None."""
    target = val(node, path) if node is not None else ""
    return resources.get(target) if target else None


def _identifier(node: Node | None, system: str) -> str:
    for identifier in node.all("identifier") if node is not None else ():
        if val(identifier, "system") == system:
            return val(identifier, "value")
    return ""


def _document(composition: Node, resources: dict) -> Document:
    coding = get(composition, "type/coding")
    kind = CODE_KINDS.get((val(coding, "system"), val(coding, "code")))
    if kind is None:
        raise _error("not a known document type", "Composition.type", "E-XML-TYPE")
    try:
        return Document(
            kind=kind, zd_number=_identifier(composition, ZD_SYSTEM),
            sent_at=_datetime(val(composition, "date")),
            sender=_sender(composition, resources), recipient=_recipient(composition, resources),
            patient=_patient(_ref(composition, "subject/reference", resources)),
            body=_letter(composition),
            in_reply_to=val(composition, "relatesTo/targetIdentifier/value") or None,
            attachments=_attachments(composition, resources))
    except DocumentError as exc:
        raise _error(exc.message, _FHIR_PATHS.get(exc.where, exc.where), exc.code) from None


def _datetime(value: str) -> dt.datetime:
    try:
        if len(value) < 19:
            raise ValueError
        return local_time(dt.datetime.fromisoformat(value)).replace(microsecond=0)
    except ValueError:
        raise _error("not a real dateTime with time", "Composition.date", "E-XML-DATE") from None


def _role(composition: Node, url: str, resources: dict):
    role = _ref(extension(composition, url), "valueReference/reference", resources)
    if role is None:
        raise _error(f"no extension {url} naming a PractitionerRole in the Bundle",
                     "Composition.extension", "E-XML-MISSING")
    return (role, _ref(role, "practitioner/reference", resources),
            _ref(role, "organization/reference", resources))


def _sender(composition: Node, resources: dict) -> Sender:
    role, person, org = _role(composition, SENDER_EXT, resources)
    return Sender(agb=_identifier(person, AGB_SYSTEM), name=val(person, "name/text"),
                  department=val(role, "specialty/text"), organisation=val(org, "name"),
                  organisation_agb=_identifier(org, AGB_SYSTEM), address=_address(org),
                  phone=val(org, "telecom/value"))


def _recipient(composition: Node, resources: dict) -> Recipient:
    role, person, org = _role(composition, RECIPIENT_EXT, resources)
    return Recipient(agb=_identifier(org, AGB_SYSTEM), name=val(org, "name"),
                     department=val(role, "specialty/text"), practitioner=val(person, "name/text"),
                     practitioner_agb=_identifier(person, AGB_SYSTEM), address=_address(org),
                     phone=val(org, "telecom/value"))


def _address(node: Node | None) -> Address | None:
    address = get(node, "address")
    if address is None:
        return None
    line = get(address, "line")
    street = extension(line, HL7_EXT + "iso21090-ADXP-streetName")
    number = extension(line, HL7_EXT + "iso21090-ADXP-houseNumber")
    parts = street is not None or number is not None
    found = Address(street=val(street, "valueString") if parts else val(line),
                    house_number=val(number, "valueString"), postcode=val(address, "postalCode"),
                    city=val(address, "city"), country=val(address, "country"))
    return found if any(vars(found).values()) else None


def _patient(patient: Node | None) -> Patient:
    if patient is None or patient.name != "Patient":
        raise _error("must reference a Patient in the Bundle", "Composition.subject",
                     "E-XML-MISSING")
    name = get(patient, "name")
    family = get(name, "family")
    extensions = {key: extension(family, HL7_EXT + url) for key, url in NAME_PARTS}
    parts = {key: val(ext, "valueString") for key, ext in extensions.items()}
    if all(ext is None for ext in extensions.values()):
        parts["family_name"] = val(family)
    given, initials = "", ""
    for part in name.all("given") if name is not None else ():
        if val(extension(part, HL7_EXT + "iso21090-EN-qualifier"), "valueCode") == "IN":
            initials = initials or val(part)
        else:
            given = given or val(part)
    gender = val(patient, "gender")
    if gender not in GENDER_IN:
        raise _error("must be male, female, other or unknown", "Patient.gender", "E-XML-SEX")
    birth = val(patient, "birthDate")
    try:
        birth_date = dt.date.fromisoformat(birth) if birth else None
    except ValueError:
        raise _error("not a real date", "Patient.birthDate", "E-XML-DATE") from None
    return Patient(bsn=_identifier(patient, BSN_SYSTEM), birth_date=birth_date,
                   sex=GENDER_IN[gender], given_name=given, initials=initials,
                   address=_address(patient), phone=val(patient, "telecom/value"), **parts)


def _sections(node: Node, path: str = "Composition"):
    """Yield (FHIR path, section) for every section, nested ones after their parent."""
    for index, section in enumerate(node.all("section"), 1):
        where = f"{path}.section[{index}]"
        yield where, section
        yield from _sections(section, where)


def _letter(composition: Node) -> tuple[str, ...]:
    """Every section's narrative in document order: the letter section's lines as they
    are, any other section's after a line with its title. A section entry that is not an
    attachment has no place in the document: E-XML-UNPLACED."""
    lines: list[str] = []
    for where, section in _sections(composition):
        title = val(section, "title")
        div = get(section, "text/h:div")
        narrative = div.lines if div is not None else []
        if title != LETTER_TITLE and narrative:
            lines += [title] if title else []
        lines += narrative
        if title != ATTACHMENT_TITLE and section.all("entry"):
            raise _error("section entries other than attachments have no place in the document",
                         f"{where}.entry", "E-XML-UNPLACED")
    return tuple(lines)


def _attachments(composition: Node, resources: dict) -> tuple[Attachment, ...]:
    found = []
    for _, section in _sections(composition):
        if val(section, "title") != ATTACHMENT_TITLE:
            continue
        for entry in section.all("entry"):
            binary = _ref(entry, "reference", resources)
            if binary is None or binary.name != "Binary":
                raise _error("does not reference a Binary in the Bundle",
                             "Composition.section.entry", "E-XML-ATTACHMENT")
            try:
                data = base64.b64decode(val(binary, "content"), validate=True)
            except (binascii.Error, ValueError):
                raise _error("not valid Base64", "Binary.content", "E-XML-ATTACHMENT") from None
            found.append(Attachment(val(entry, "display"), val(binary, "contentType"), data))
    return tuple(found)


def encode(doc: Document) -> bytes:
    """Write ``doc`` as a FHIR STU3 document Bundle (UTF-8 XML)."""
    bundle_id = doc.fingerprint(32)
    urls = _Urls(bundle_id)
    s, r = doc.sender, doc.recipient
    entries = [("composition", _composition(doc, urls))]
    entries += _party(urls, "sender", s.name, s.agb, s.organisation, s.organisation_agb,
                      s.department, s.address, s.phone, True)
    entries += _party(urls, "recipient", r.practitioner, r.practitioner_agb, r.name, r.agb,
                      r.department, r.address, r.phone, False)
    entries.append(("patient", _patient_resource(doc.patient)))
    for index, attachment in enumerate(doc.attachments, 1):
        entries.append((f"attachment-{index}", element(
            "Binary", primitive("contentType", attachment.media_type),
            primitive("content", base64.b64encode(attachment.data).decode("ascii")))))
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
            "recipient-organisation": 8}

    def __init__(self, bundle_id: str):
        self.prefix = f"urn:uuid:{bundle_id[:8]}-{bundle_id[8:12]}-{bundle_id[12:16]}-" \
                      f"{bundle_id[16:20]}-{bundle_id[20:24]}"

    def __call__(self, key: str) -> str:
        number = self.KEYS[key] if key in self.KEYS else 1000 + int(key.rsplit("-", 1)[1])
        return f"{self.prefix}{number:08x}"


def _reference(name: str, url: str, display: str = "") -> str:
    return element(name, primitive("reference", url), optional("display", display))


def _identifier_element(system: str, value: str) -> str:
    if not value:
        return ""
    return element("identifier", primitive("system", system), primitive("value", value))


def _composition(doc: Document, urls: _Urls) -> str:
    system, code, title = KINDS[doc.kind]
    parts = [element("extension", _reference("valueReference", urls(key)), attrs=f' url="{url}"')
             for url, key in ((SENDER_EXT, "sender-role"), (RECIPIENT_EXT, "recipient-role"))]
    parts += [
        _identifier_element(ZD_SYSTEM, doc.zd_number),
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
            "targetIdentifier", primitive("system", ZD_SYSTEM), primitive("value", doc.in_reply_to))))
    if doc.body:
        paragraphs = "".join(f"<p>{fhirxml.escape(line)}</p>" for line in doc.body)
        parts.append(element("section", primitive("title", LETTER_TITLE), element(
            "text", primitive("status", "additional"),
            element("div", paragraphs, attrs=f' xmlns="{fhirxml.XHTML}"'))))
    if doc.attachments:
        parts.append(element("section", primitive("title", ATTACHMENT_TITLE), *(
            _reference("entry", urls(f"attachment-{index}"), attachment.file_name)
            for index, attachment in enumerate(doc.attachments, 1))))
    return element("Composition", *parts)


def _party(urls: _Urls, prefix: str, person: str, person_agb: str, organisation: str,
           organisation_agb: str, department: str, address: Address | None, phone: str,
           always_person: bool) -> list[tuple[str, str]]:
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
    if department:
        role.append(element("specialty", primitive("text", department)))
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
        "Patient", _identifier_element(BSN_SYSTEM, patient.bsn), name, _telecom(patient.phone),
        primitive("gender", GENDER_OUT[patient.sex]),
        optional("birthDate", f"{birth.year:04d}-{birth:%m-%d}" if birth else ""),
        _address_element(patient.address))
