"""ZorgDomein XML: a FHIR STU3 document Bundle in XML <-> Document (reading here, the
writer in ``zdbundle``; every URL and code in the tables below, and nowhere else).

Facts (formats.md, ZorgDomein's integrator pages, the open-GUPZ referral API page):
Bundle type ``document`` whose first entry is the Composition; the Composition's
identifier holds the ZD number in ZorgDomein's system ``http://zorgdomein.nl/zdnumber/``;
its type is coded in ZorgDomein's document-type code system (``referral-letter``,
``request-form``, ``teleconsult-request-form``, ``supplement``, ``cancellation``); the
responsible sender is a PractitionerRole named by the ``zd-sender`` extension; BSN
and AGB identifier systems are the Dutch naming systems.

Our conventions:
- the teleconsult answer's type code; the gateway-number identifier system (a
  gateway number is never written in ZorgDomein's system); the recipient extension
  (a PractitionerRole of the receiving institution) — without it, the recipient is
  the Composition's ``custodian``, an Organization with an AGB identifier;
- the answer or follow-up relates to its request through ``Composition.relatesTo``
  (code ``appends``, targetIdentifier = ZD number);
- the letter is the narrative of the section titled ``Brief``, one XHTML ``<p>``
  per line; read from any XHTML (see ``fhirxml.narrative_lines``), and the narrative
  of every other section follows, after a line with its title, so no section text is
  lost. A letter sent as a document (a PDF) is a Binary entry of that section;
- attachments are Binary entries, referenced from a section titled ``Bijlagen``
  whose entry ``display`` carries the file name (STU3 Binary has no field for it);
  a Binary referenced from another section is the letter (the first) or an
  attachment; any other section entry is refused (E-XML-UNPLACED);
- the specialism is a coding of the recipient PractitionerRole's ``specialty`` (its
  text the department), ZorgDomein's product an extension of the Composition; an HL7
  v2 coding system name ``X`` becomes the system ``https://gatewayd.nl/fhir/CodeSystem/hl7v2/X``;
- the portal patient id is a Patient identifier in our system ``zis-patient-id``;
- Dutch name parts use the core humanname-own-prefix/-own-name/-partner-prefix/
  -partner-name extensions on ``family``; initials are a ``given`` with the
  iso21090 qualifier ``IN``; street and house number use the ADXP extensions;
- person names are ``HumanName.text``; a department is the PractitionerRole's
  specialty text; ``sent_at`` is ``Composition.date`` with the Dutch offset.

Parsing is in ``fhirxml`` (a hardened parser, no DOCTYPE, no entities, no network
or file access).
"""

import base64
import binascii
import datetime as dt

from gateway.codecs import fhirxml
from gateway.codecs.fhirxml import Node, extension, get, val
from gateway.document import (Address, Attachment, Code, Document, Kind, Letter, Patient, Recipient,
                              Sender, Sex, is_gateway_number, local_time)
from gateway.errors import DecodeError, DocumentError

BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"
AGB_SYSTEM = "http://fhir.nl/fhir/NamingSystem/agb-z"
DOCTYPE_SYSTEM = "http://zorgdomein.nl/terminology/code-system/document-type"
ZD_SYSTEM = "http://zorgdomein.nl/zdnumber/"
OLD_ZD_SYSTEM = "http://zorgdomein.nl/fhir/NamingSystem/zd-number"      # ours before; still read
GATEWAY_SYSTEM = "https://gatewayd.nl/fhir/NamingSystem/gateway-number"  # our convention
PORTAL_SYSTEM = "https://gatewayd.nl/fhir/NamingSystem/zis-patient-id"   # our convention
SENDER_EXT = "http://zorgdomein.nl/fhir/StructureDefinition/zd-sender"
RECIPIENT_EXT = "https://gatewayd.nl/fhir/StructureDefinition/recipient"  # our convention
PRODUCT_EXT = "https://gatewayd.nl/fhir/StructureDefinition/product"      # our convention
GATEWAY_TYPES = "https://gatewayd.nl/fhir/CodeSystem/document-type"     # our convention
HL7V2_SYSTEMS = "https://gatewayd.nl/fhir/CodeSystem/hl7v2/"              # our convention
HL7_EXT = "http://hl7.org/fhir/StructureDefinition/"
NAME_PARTS = (("family_prefix", "humanname-own-prefix"), ("family_name", "humanname-own-name"),
              ("partner_prefix", "humanname-partner-prefix"), ("partner_name", "humanname-partner-name"))
KINDS = {
    Kind.REFERRAL: (DOCTYPE_SYSTEM, "referral-letter", "Verwijsbrief"),
    Kind.REQUEST: (DOCTYPE_SYSTEM, "request-form", "Aanvraagformulier"),
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


def number_system(number: str) -> str:
    """The identifier system a document number is written in: ZorgDomein's for a ZD
    number, ours for a gateway number."""
    return GATEWAY_SYSTEM if is_gateway_number(number) else ZD_SYSTEM


def coding_system(hl7_system: str) -> str:
    """The FHIR coding system URI for an HL7 v2 coding system name (kept when it is a URI)."""
    if not hl7_system or ":" in hl7_system:
        return hl7_system
    return HL7V2_SYSTEMS + hl7_system


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


def _identifier(node: Node | None, *systems: str) -> str:
    for identifier in node.all("identifier") if node is not None else ():
        if val(identifier, "system") in systems:
            return val(identifier, "value")
    return ""


def _document(composition: Node, resources: dict) -> Document:
    coding = get(composition, "type/coding")
    kind = CODE_KINDS.get((val(coding, "system"), val(coding, "code")))
    if kind is None:
        raise _error("not a known document type", "Composition.type", "E-XML-TYPE")
    body, letter, attachments = _content(composition, resources)
    recipient, specialism = _recipient(composition, resources)
    try:
        return Document(
            kind=kind,
            zd_number=_identifier(composition, ZD_SYSTEM, OLD_ZD_SYSTEM, GATEWAY_SYSTEM),
            sent_at=_datetime(val(composition, "date")),
            sender=_sender(composition, resources), recipient=recipient,
            patient=_patient(_ref(composition, "subject/reference", resources)),
            body=body, in_reply_to=val(composition, "relatesTo/targetIdentifier/value") or None,
            attachments=attachments, letter=letter, specialism=specialism,
            product=_code(get(extension(composition, PRODUCT_EXT), "valueCoding")))
    except DocumentError as exc:
        raise _error(exc.message, _FHIR_PATHS.get(exc.where, exc.where), exc.code) from None


def _code(coding: Node | None) -> Code | None:
    if coding is None or not val(coding, "code"):
        return None
    system = val(coding, "system")
    return Code(val(coding, "code"), val(coding, "display"), system.removeprefix(HL7V2_SYSTEMS))


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
        return None
    return (role, _ref(role, "practitioner/reference", resources),
            _ref(role, "organization/reference", resources))


def _missing(url: str) -> DecodeError:
    return _error(f"no extension {url} naming a PractitionerRole in the Bundle",
                  "Composition.extension", "E-XML-MISSING")


def _sender(composition: Node, resources: dict) -> Sender:
    found = _role(composition, SENDER_EXT, resources)
    if found is None:
        raise _missing(SENDER_EXT)
    role, person, org = found
    return Sender(agb=_identifier(person, AGB_SYSTEM), name=val(person, "name/text"),
                  department=val(role, "specialty/text"), organisation=val(org, "name"),
                  organisation_agb=_identifier(org, AGB_SYSTEM), address=_address(org),
                  phone=val(org, "telecom/value"))


def _recipient(composition: Node, resources: dict) -> tuple[Recipient, Code | None]:
    """The recipient from our extension, else from the custodian Organization; and the
    specialism coded on the recipient's role."""
    found = _role(composition, RECIPIENT_EXT, resources)
    if found is None:
        org = _ref(composition, "custodian/reference", resources)
        if org is None or not _identifier(org, AGB_SYSTEM):
            raise _error(f"no extension {RECIPIENT_EXT} and no custodian Organization with an "
                         "AGB code", "Composition.custodian", "E-XML-MISSING")
        found = (None, None, org)
    role, person, org = found
    recipient = Recipient(
        agb=_identifier(org, AGB_SYSTEM), name=val(org, "name"),
        department=val(role, "specialty/text"), practitioner=val(person, "name/text"),
        practitioner_agb=_identifier(person, AGB_SYSTEM), address=_address(org),
        phone=val(org, "telecom/value"))
    return recipient, _code(get(role, "specialty/coding"))


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
                   address=_address(patient), phone=val(patient, "telecom/value"),
                   portal_id=_identifier(patient, PORTAL_SYSTEM), **parts)


def _sections(node: Node, path: str = "Composition"):
    """Yield (FHIR path, section) for every section, nested ones after their parent."""
    for index, section in enumerate(node.all("section"), 1):
        where = f"{path}.section[{index}]"
        yield where, section
        yield from _sections(section, where)


def _content(composition: Node, resources: dict):
    """(letter lines, letter document, attachments) from every section in document order:
    the letter section's lines as they are, any other section's after a line with its
    title; Binary entries of the attachment section are attachments, of any other the
    letter (the first) or attachments; other entries: E-XML-UNPLACED."""
    lines: list[str] = []
    letter, attachments = None, []
    for where, section in _sections(composition):
        title = val(section, "title")
        div = get(section, "text/h:div")
        narrative = div.lines if div is not None else []
        if title != LETTER_TITLE and narrative and title:
            lines.append(title)
        lines += narrative
        for index, entry in enumerate(section.all("entry"), 1):
            binary = _ref(entry, "reference", resources)
            place = f"{where}.entry[{index}]"
            if binary is None or binary.name != "Binary":
                raise _error("section entries other than Binary documents have no place in the "
                             "document", place, "E-XML-UNPLACED")
            data = _binary_data(binary)
            if title != ATTACHMENT_TITLE and letter is None:
                letter = Letter(val(binary, "contentType"), data)
            else:
                name = val(entry, "display") or f"bijlage-{len(attachments) + 1}"
                attachments.append(Attachment(name, val(binary, "contentType"), data))
    return tuple(lines), letter, tuple(attachments)


def _binary_data(binary: Node) -> bytes:
    try:
        return base64.b64decode(val(binary, "content"), validate=True)
    except (binascii.Error, ValueError):
        raise _error("not valid Base64", "Binary.content", "E-XML-ATTACHMENT") from None


from gateway.codecs.zdbundle import encode  # noqa: E402  (the writer uses the tables above)

__all__ = ["decode", "decode_messages", "encode"]
