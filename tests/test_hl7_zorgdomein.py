"""ZorgDomein's own HL7 v2 (ORU^R01 with a PDF, attachments v2, ORM^O01 requests) and the
zd-hl7 output format: read as documents, every ORU we write checked by hl7apy, and a
ZorgDomein PDF referral converted to XML valid FHIR STU3 with the PDF as a Binary."""

import dataclasses
from pathlib import Path

import pytest
from fhir.resources.STU3.bundle import Bundle
from hypothesis import given, settings

from gateway import codecs
from gateway.codecs import hl7v2, hl7zd, zdhl7, zdxml
from gateway.document import Kind
from gateway.errors import DecodeError, EncodeError
from tests.strategies import UNICODE, documents
from tests.test_hl7v2 import validate_with_hl7apy

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
PDF_REFERRAL = (FIXTURES / "zd-oru-pdf-referral.hl7").read_bytes()
ZD_KINDS = tuple(hl7zd.KIND_ORDER)


def one(data: bytes):
    (doc,) = hl7v2.decode(data)
    return doc


def test_pdf_referral_is_read_as_a_document():
    """ZorgDomein's ORU^R01 (MSH-2 ^_\\&, no BSN) gives the referrer from ORC-12, the
    facility name as mailbox, the specialism, the product and the PDF as the letter."""
    doc = one(PDF_REFERRAL)
    assert (doc.kind, doc.zd_number) == (Kind.REFERRAL, "ZD200300500")
    assert (doc.sender.agb, doc.sender.name) == ("01234567", "M. Visser")
    assert (doc.recipient.agb, doc.recipient.mailbox) == ("", "Ziekenhuis Eemland")
    assert (doc.specialism.code, doc.specialism.display) == ("ORT", "Orthopedie")
    assert doc.product.code == "ORTKNI001"
    assert doc.letter.media_type == "application/pdf" and doc.letter.data.startswith(b"%PDF-1.4")
    assert doc.patient.bsn == "" and doc.patient.phone == "033-4561234"


def test_both_msh2_variants_read_alike():
    """The same message with ^~\\& instead of ^_\\& (and ~ repeating) reads the same."""
    standard = PDF_REFERRAL.replace(b"^_\\&", b"^~\\&").replace(b"033-4561234_^NET",
                                                               b"033-4561234~^NET")
    assert one(standard) == one(PDF_REFERRAL)


def test_request_form_marker_portal_id_and_utf8_under_8859_1():
    """AF makes a request; the portal patient id is kept; UTF-8 bytes under a declared
    8859/1 are read as UTF-8 (no mojibake) with a warning."""
    doc = one((FIXTURES / "zd-oru-request-form-utf8.hl7").read_bytes())
    assert doc.kind is Kind.REQUEST and doc.patient.portal_id == "ZIS-4711"
    assert doc.patient.family_name == "Dijkë" and doc.sender.name == "A. Özdemir"
    assert doc.warnings == ("MSH-18 declares 8859/1 but the message is UTF-8; read as UTF-8",)


def test_attachments_v2_are_a_supplement_with_named_files():
    """ORC XO with BLOB attachments: each file named by the NTE after it (\\R\\ is the
    repetition separator _), the referrer's notes and overview as letter lines."""
    doc = one((FIXTURES / "zd-oru-attachments.hl7").read_bytes())
    assert doc.kind is Kind.SUPPLEMENT and doc.zd_number == "ZD200300500"
    assert [a.file_name for a in doc.attachments] == ["verslag_fysio.txt", "knie_foto.png"]
    assert doc.body[0] == "Foto en verslag fysiotherapie bijgevoegd."
    assert doc.product.code == "ORTKNI001" and doc.specialism is None


def test_control_ids_tell_the_letter_form_and_attachments_apart():
    """ZorgDomein sends letter and attachments under one MSH-10: the control ids differ."""
    ids = [hl7v2.decode_messages((FIXTURES / name).read_bytes())[0][0]
           for name in ("zd-oru-pdf-referral.hl7", "zd-oru-attachments.hl7")]
    assert ids == ["ZD200300500/VB", "ZD200300500/XO"]


@pytest.mark.parametrize("name, lines", [
    ("zd-orm-v3.hl7", ("ZorgDomein clusternaam: KC en MMB", "Aanvraag: Anemie-onderzoek (KC_ANEMIE)",
                       "Aangevraagde onderzoeken: Ferritine", "Nuchter afnemen",
                       "Verzekeraar: Zorgverzekeraar Test (UZOVI 0102), polisnummer 953513")),
    ("zd-orm-v24.hl7", ("Aanvraag: Calcium (CA01)", "Nuchter?: Ja")),
])
def test_orm_requests_keep_every_question_and_answer(name, lines):
    """ORM^O01 (v2.5.1 V3 and v2.4) is a request whose tests, answers, notes and insurance
    are letter lines; the ZD number comes from the placer group number."""
    doc = one((FIXTURES / name).read_bytes())
    assert doc.kind is Kind.REQUEST and doc.zd_number.startswith("ZD2003005")
    assert set(lines) <= set(doc.body)


def test_other_message_types_are_refused_naming_what_we_take():
    """An OML^O21 (ZorgDomein's lab order) is refused with E-HL7-TYPE listing the types taken."""
    oml = PDF_REFERRAL.replace(b"ORU^R01", b"OML^O21^OML_O21")
    with pytest.raises(DecodeError) as caught:
        hl7v2.decode(oml)
    assert caught.value.code == "E-HL7-TYPE"
    assert "REF^I12, RRI^I12, ORU^R01, ORM^O01, MDM^T02" in caught.value.message


def test_oru_pdf_to_xml_is_valid_fhir_with_the_pdf_as_binary():
    """A ZorgDomein PDF referral as ZorgDomein XML validates as FHIR STU3; the PDF is a
    Binary the letter section references, and the XML reads back to the same document."""
    doc = dataclasses.replace(one(PDF_REFERRAL), recipient=dataclasses.replace(
        one(PDF_REFERRAL).recipient, agb="06005678", mailbox=""))
    data = zdxml.encode(doc)
    bundle = Bundle.model_validate_xml(data)
    binaries = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "Binary"]
    assert [b.contentType for b in binaries] == ["application/pdf"]
    assert binaries[0].content == doc.letter.data          # fhir.resources decodes Base64
    letter_section = bundle.entry[0].resource.section[0]
    assert letter_section.entry[0].reference == next(
        e.fullUrl for e in bundle.entry if e.resource.get_resource_type() == "Binary")
    assert zdxml.decode(data) == [doc]
    again = zdhl7.encode(zdxml.decode(data)[0])
    assert validate_with_hl7apy(again) == "ORU_R01"
    assert hl7v2.decode(again) == [doc]


@given(documents(kinds=ZD_KINDS))
@settings(max_examples=80, deadline=None)
def test_zd_hl7_round_trip_and_hl7apy_accepts(doc):
    """Every document zd-hl7 can carry reads back the same (but for the receiving
    institution's own address and phone), and hl7apy validates the ORU^R01 we write."""
    data = zdhl7.encode(doc)
    expected = dataclasses.replace(doc, recipient=dataclasses.replace(
        doc.recipient, address=None, phone=""))
    assert zdhl7.decode(data) == [expected]
    assert validate_with_hl7apy(data) == "ORU_R01"


@given(documents(alphabet=UNICODE, kinds=ZD_KINDS, attachments=False))
@settings(max_examples=25, deadline=None)
def test_zd_hl7_unicode_is_written_as_utf8(doc):
    """Text outside ISO-8859-1 survives zd-hl7 (MSH-18 UNICODE UTF-8)."""
    expected = dataclasses.replace(doc, recipient=dataclasses.replace(
        doc.recipient, address=None, phone=""))
    assert zdhl7.decode(zdhl7.encode(doc)) == [expected]


def test_teleconsults_are_not_zorgdomein_oru_messages():
    """A teleconsult request cannot be written as ZorgDomein's ORU: EncodeError names the kind."""
    doc = dataclasses.replace(one(PDF_REFERRAL), kind=Kind.TELECONSULT_REQUEST,
                              recipient=dataclasses.replace(one(PDF_REFERRAL).recipient,
                                                            agb="06005678", mailbox=""))
    with pytest.raises(EncodeError) as caught:
        zdhl7.encode(doc)
    assert (caught.value.code, caught.value.where) == ("E-ENCODE-KIND", "field kind")


def test_pdf_cannot_go_into_medvri():
    """A PDF letter has no place in MEDVRI: EncodeError (the message waits in fallback)."""
    doc = dataclasses.replace(one(PDF_REFERRAL), recipient=dataclasses.replace(
        one(PDF_REFERRAL).recipient, agb="06005678", mailbox=""))
    with pytest.raises(EncodeError) as caught:
        codecs.get("edifact").encode(doc)
    assert caught.value.where == "field letter"
