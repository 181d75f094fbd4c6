"""The ZorgDomein XML codec: FHIR STU3 Bundles checked by fhir.resources, round trips,
and a parser that refuses DOCTYPEs and never reads files or the network."""

import socket
import threading
from pathlib import Path

import pytest
from fhir.resources.STU3.bundle import Bundle
from hypothesis import given, settings

from lxml import etree

from gateway.codecs import fhirxml, zdxml
from gateway.document import Kind
from gateway.errors import DecodeError
from tests.strategies import UNICODE, documents

FIXTURES = Path(__file__).parent.parent / "fixtures" / "xml"
REFERRAL = (FIXTURES / "referral.xml").read_bytes()


def check_fhir(data: bytes) -> Bundle:
    """Validate ``data`` with fhir.resources' STU3 models and return the Bundle."""
    bundle = Bundle.model_validate_xml(data)
    assert bundle.type == "document"
    assert bundle.entry[0].resource.get_resource_type() == "Composition"
    return bundle


@given(documents())
@settings(max_examples=100, deadline=None)
def test_round_trip_and_valid_fhir(doc):
    """decode(encode(doc)) == doc, and fhir.resources accepts the Bundle as STU3."""
    data = zdxml.encode(doc)
    assert zdxml.decode(data) == [doc]
    bundle = check_fhir(data)
    composition = bundle.entry[0].resource
    assert composition.identifier.value == doc.zd_number
    referenced = {entry.fullUrl for entry in bundle.entry}
    assert composition.subject.reference in referenced


@given(documents(alphabet=UNICODE))
@settings(max_examples=30, deadline=None)
def test_unicode_round_trip(doc):
    """Any Unicode text the Document allows survives the XML codec."""
    assert zdxml.decode(zdxml.encode(doc)) == [doc]


def test_fixture_fields():
    """The pretty-printed fixture (entries reordered, a comment) decodes with Dutch name parts."""
    doc = zdxml.decode(REFERRAL)[0]
    assert doc.kind is Kind.REFERRAL and doc.zd_number == "ZD100200300"
    assert (doc.patient.family_prefix, doc.patient.family_name) == ("van", "Dijk")
    assert doc.recipient.agb == "06005678"
    check_fhir(REFERRAL)


def test_attachment_fixture():
    """An attachment is a Binary entry named from the Bijlagen section."""
    doc = zdxml.decode((FIXTURES / "teleconsult-request-attachment.xml").read_bytes())[0]
    (attachment,) = doc.attachments
    assert (attachment.file_name, attachment.media_type) == ("knie-rontgen.png", "image/png")


def test_document_type_codes():
    """Kinds use ZorgDomein's document-type codes."""
    doc = zdxml.decode(REFERRAL)[0]
    assert b'<code value="referral-letter"/>' in zdxml.encode(doc)


def test_doctype_refused():
    """Any DOCTYPE is refused, even a harmless one."""
    with pytest.raises(DecodeError) as caught:
        zdxml.decode(b'<?xml version="1.0"?><!DOCTYPE Bundle><Bundle xmlns="http://hl7.org/fhir"/>')
    assert caught.value.code == "E-XML-DOCTYPE"


def test_billion_laughs_refused():
    """Nested entity definitions are refused before any expansion."""
    lol = b'<!DOCTYPE lolz [<!ENTITY lol "lol">' + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
        for i in range(1, 10)) + b']><Bundle xmlns="http://hl7.org/fhir">&lol9;</Bundle>'
    with pytest.raises(DecodeError) as caught:
        zdxml.decode(lol)
    assert caught.value.code == "E-XML-DOCTYPE"


def test_external_entities_read_no_file_and_no_network(tmp_path):
    """An external entity (file or http) is refused: the file's text never shows, no connection is made."""
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-7f3a")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    connections = []
    thread = threading.Thread(target=lambda: _accept(server, connections))
    thread.start()
    for system in (secret.as_uri(), f"http://127.0.0.1:{port}/x"):
        doc = (f'<?xml version="1.0"?><!DOCTYPE b [<!ENTITY e SYSTEM "{system}">]>'
               '<Bundle xmlns="http://hl7.org/fhir"><x>&e;</x></Bundle>').encode()
        with pytest.raises(DecodeError) as caught:
            zdxml.decode(doc)
        assert "MARKER" not in str(caught.value)
        # Even the parser on its own (past our DOCTYPE check) neither reads nor connects.
        try:
            assert b"MARKER" not in etree.tostring(etree.fromstring(doc, fhirxml.hardened_parser()))
        except etree.XMLSyntaxError as exc:
            assert "MARKER" not in str(exc)
    thread.join()
    server.close()
    assert connections == []


def _accept(server, connections):
    try:
        connections.append(server.accept())
    except OSError:
        pass


@pytest.mark.parametrize("data, code", [
    (b"<Bundle", "E-XML-SYNTAX"),
    (b'<Patient xmlns="http://hl7.org/fhir"/>', "E-XML-STRUCTURE"),
    (b'<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/></Bundle>', "E-XML-STRUCTURE"),
    (REFERRAL.replace(b'value="referral-letter"', b'value="lab-result"'), "E-XML-TYPE"),
    (REFERRAL.replace(b'<value value="123456782"/>', b'<value value="123456789"/>'), "E-DOC-BSN"),
    (REFERRAL.replace(b'<birthDate value="1957-11-30"/>', b'<birthDate value="1957-02-30"/>'),
     "E-XML-DATE"),
    (REFERRAL.replace(b'<value value="06005678"/>', b'<value value="6005678"/>'), "E-DOC-AGB"),
    (b"<" + b"a" * 10_000_000, "E-XML-SYNTAX"),
    (b"<a>" * 100_000, "E-XML-SYNTAX"),
    ('<?xml version="1.0" encoding="UTF-16"?><Bundle/>'.encode("utf-16"), "E-XML-ENCODING"),
    (b'<?xml version="1.0" encoding="ISO-8859-1"?><Bundle/>', "E-XML-ENCODING"),
])
def test_bad_input(data, code):
    """Bad XML and bad content raise DecodeError with a stable code and where it is."""
    with pytest.raises(DecodeError) as caught:
        zdxml.decode(data)
    assert caught.value.code == code and caught.value.where


def _with_sections(sections: bytes) -> bytes:
    start = REFERRAL.index(b"<section>")
    end = REFERRAL.index(b"</section>") + len(b"</section>")
    return REFERRAL[:start] + sections + REFERRAL[end:]


def test_any_xhtml_narrative_and_every_section_is_read():
    """Narrative text outside <p> (lists, tables, line breaks) and the text of every
    section are kept: other sections follow after a line with their title."""
    data = _with_sections(
        b'<section><title value="Brief"/><text><status value="generated"/>'
        b'<div xmlns="http://www.w3.org/1999/xhtml">Geachte collega,<br/>zie hieronder.'
        b'<ul><li>knie re</li><li>hydrops</li></ul></div></text></section>'
        b'<section><title value="Medicatie"/><text><status value="generated"/>'
        b'<div xmlns="http://www.w3.org/1999/xhtml"><table><tr><td>metformine</td>'
        b'<td>500 mg</td></tr></table></div></text></section>')
    (doc,) = zdxml.decode(data)
    assert doc.body == ("Geachte collega,", "zie hieronder.", "knie re", "hydrops", "Medicatie",
                        "metformine | 500 mg")


def test_section_entry_without_a_place_is_refused():
    """A section that references a resource the document has no place for is refused."""
    data = _with_sections(b'<section><title value="Uitslagen"/><entry><reference '
                          b'value="urn:uuid:70ce05fa-0c32-5e9f-bd63-7270ffe8e107"/></entry></section>')
    with pytest.raises(DecodeError) as caught:
        zdxml.decode(data)
    assert (caught.value.code, caught.value.where) == ("E-XML-UNPLACED",
                                                       "Composition.section[1].entry[1]")


def test_zorgdomein_number_system_custodian_recipient_and_pdf_letter():
    """ZorgDomein's identifier system http://zorgdomein.nl/zdnumber/ is read, the recipient
    comes from the custodian Organization's AGB code when our extension is absent, and a
    Binary in the letter section is the PDF letter."""
    doc = zdxml.decode((FIXTURES / "zd-custodian-zdnumber.xml").read_bytes())[0]
    assert doc.zd_number == "ZD200300505"
    assert (doc.recipient.agb, doc.recipient.name) == ("06005678", "Ziekenhuis Eemland")
    assert doc.letter.media_type == "application/pdf"
    assert doc.body[-3:] == ("Medicatie", "middel | dosering", "metformine | 500 mg 2dd")


def test_our_former_zd_system_is_still_read_and_zorgdomeins_is_written():
    """Bundles with the system we wrote before still read; we now write ZorgDomein's own."""
    doc = zdxml.decode(REFERRAL)[0]                 # written with the former system
    assert doc.zd_number == "ZD100200300"
    out = zdxml.encode(doc)
    assert b'<system value="http://zorgdomein.nl/zdnumber/"/><value value="ZD100200300"/>' in out


def test_no_recipient_at_all_is_missing():
    """Without our extension and without a custodian with an AGB code there is no recipient."""
    data = REFERRAL.replace(b"https://gatewayd.nl/fhir/StructureDefinition/recipient",
                            b"https://example.org/other")
    with pytest.raises(DecodeError) as caught:
        zdxml.decode(data)
    assert (caught.value.code, caught.value.where) == ("E-XML-MISSING", "Composition.custodian")
