"""The HL7 v2.4 codec: REF^I12/RRI^I12 round trips, escapes, line ends, ACKs; every
message we emit is checked by hl7apy, an independent implementation."""

import dataclasses
import datetime as dt
from pathlib import Path

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given, settings

from gateway.codecs import hl7v2
from gateway.document import Kind
from gateway.errors import DecodeError
from tests.strategies import UNICODE, documents

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7"
REFERRAL = (FIXTURES / "referral-lf.hl7").read_bytes()


def validate_with_hl7apy(data: bytes) -> str:
    """Parse ``data`` with hl7apy and validate its structure; return the message structure name."""
    declared = data.split(b"\r", 1)[0].split(b"|")[17]      # MSH-18
    text = data.decode("utf-8" if declared == b"UNICODE UTF-8" else "latin-1")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert message.validate()
    return message.name


@given(documents())
@settings(max_examples=100, deadline=None)
def test_round_trip_and_hl7apy_accepts(doc):
    """decode(encode(doc)) == doc for every kind, and hl7apy validates the emitted structure."""
    data = hl7v2.encode(doc)
    assert hl7v2.decode(data) == [doc]
    assert validate_with_hl7apy(data) == ("RRI_I12" if doc.kind is Kind.TELECONSULT_ANSWER
                                          else "REF_I12")


@given(documents(alphabet=UNICODE, attachments=False))
@settings(max_examples=30, deadline=None)
def test_unicode_content_is_written_as_utf8(doc):
    """Content outside ISO-8859-1 is written as UTF-8 (MSH-18 UNICODE UTF-8) and survives."""
    assert hl7v2.decode(hl7v2.encode(doc)) == [doc]


def test_fixture_escapes_and_line_ends():
    """LF-ended input with escape sequences decodes; the referral's letter keeps | ^ & \\ literally."""
    doc = hl7v2.decode(REFERRAL)[0]
    assert doc.body[2] == "Knie re \\ li: hydrops| flexie 90^ graden & pijn."
    assert doc.patient.address.house_number == "118b"
    assert doc.sender.phone == "033-4567890"
    crlf = hl7v2.decode(REFERRAL.replace(b"\n", b"\r\n"))
    cr = hl7v2.decode(REFERRAL.replace(b"\n", b"\r"))
    assert crlf == cr == [doc]


def test_output_uses_cr_only():
    """Segments are written with CR and never LF."""
    data = hl7v2.encode(hl7v2.decode(REFERRAL)[0])
    assert b"\n" not in data and data.count(b"\r") >= 6


def test_python_hl7_reads_our_output():
    """python-hl7, another parser, finds our ZD number and BSN where the conventions put them."""
    data = hl7v2.encode(hl7v2.decode(REFERRAL)[0]).decode("latin-1")
    message = hl7.parse(data)
    assert str(message.segment("RF1")[6][0][0]) == "ZD100200300"
    assert str(message.segment("PID")[3][0][0]) == "123456782"
    assert str(message.segment("PID")[3][0][3]) == "NLMINBIZA"


def test_kinds_from_fixtures():
    """Status C makes a cancellation, type TC a teleconsult request, RRI an answer with its attachment."""
    cancel = hl7v2.decode((FIXTURES / "cancellation.hl7").read_bytes())[0]
    assert (cancel.kind, cancel.in_reply_to) == (Kind.CANCELLATION, "ZD100200300")
    assert "patiënt" in cancel.body[0]
    request = hl7v2.decode((FIXTURES / "teleconsult-request.hl7").read_bytes())[0]
    assert request.kind is Kind.TELECONSULT_REQUEST
    assert request.attachments[0].data.startswith(b"\x89PNG")
    answer = hl7v2.decode((FIXTURES / "teleconsult-answer-crlf.hl7").read_bytes())[0]
    assert (answer.zd_number, answer.in_reply_to) == ("ZD100200301_ANTW", "ZD100200301")


def test_several_messages_in_one_input():
    """Two messages back to back decode into two documents."""
    assert len(hl7v2.decode(REFERRAL + (FIXTURES / "cancellation.hl7").read_bytes())) == 2


@pytest.mark.parametrize("data, code", [
    (b"PID|1||123\r", "E-HL7-NO-MSH"),
    (b"", "E-HL7-NO-MSH"),
    (REFERRAL.replace(b"REF^I12^REF_I12", b"ADT^A01^ADT_A01"), "E-HL7-TYPE"),
    (REFERRAL.replace(b"123456782^^^NLMINBIZA", b"123456789^^^NLMINBIZA"), "E-HL7-BSN"),
    (REFERRAL.replace(b"|19571130|", b"|19571131|"), "E-HL7-DATE"),
    (REFERRAL.replace(b"20260302101200+0100||REF", b"20260230101200+0100||REF"), "E-HL7-DATE"),
    (REFERRAL.replace(b"01234567^AGB", b"0123456^AGB"), "E-DOC-AGB"),
    (REFERRAL.replace(b"8859/1", b"EBCDIC"), "E-HL7-CHARSET"),
    (REFERRAL.replace(b"ZD100200300^ZorgDomein", b"ZD1^ZorgDomein"), "E-DOC-ZD"),
    (b"MSH|^~\\&|" + b"x" * 10_000_000, "E-HL7-TYPE"),
    (b"MSH|^~\\&|" + b"x" * 17_000_000, "E-HL7-TOO-LARGE"),
])
def test_bad_input(data, code):
    """Bad messages raise DecodeError with a stable code and a location (a bad BSN's
    error does not quote it)."""
    with pytest.raises(DecodeError) as caught:
        hl7v2.decode(data)
    assert caught.value.code == code and caught.value.where
    assert "12345678" not in str(caught.value)


def test_ack_accept_echoes_control_id():
    """An AA ACK's MSA-2 is the message's MSH-10 and hl7apy accepts it as an ACK."""
    data = hl7v2.ack(REFERRAL, "AA", now=dt.datetime(2026, 3, 2, 9, 12, tzinfo=dt.timezone.utc))
    fields = data.split(b"\r")[1].split(b"|")
    assert fields[:3] == [b"MSA", b"AA", b"HISX-000042"]
    assert b"|20260302101200+0100|" in data
    assert validate_with_hl7apy(data) == "ACK"


def test_ack_error_has_err_segment():
    """An AE ACK carries the error's code and text in MSA-3 and an ERR segment."""
    error = DecodeError("BSN fails the BSN 11-proef", where="PID-3", code="E-HL7-BSN")
    data = hl7v2.ack(REFERRAL, "AE", error)
    msa, err = data.split(b"\r")[1:3]
    assert msa.startswith(b"MSA|AE|HISX-000042|E-HL7-BSN: BSN fails")
    assert err.startswith(b"ERR|^^^207&E-HL7-BSN")
    assert validate_with_hl7apy(data) == "ACK"


def test_ack_for_unreadable_message():
    """Garbage still gets an AR ACK, with an empty MSA-2."""
    data = hl7v2.ack(b"\x00garbage", "AR", "not HL7")
    assert data.split(b"\r")[1].startswith(b"MSA|AR||not HL7")


def test_ack_with_other_separators():
    """A message using other separators gets an ACK in standard separators with its MSH-10."""
    message = REFERRAL.replace(b"MSH|^~\\&|", b"MSH#!~\\&#").split(b"\n")[0].replace(b"|", b"#")
    data = hl7v2.ack(message, "AA")
    assert data.split(b"\r")[1] == b"MSA|AA|HISX-000042"


def test_control_ids():
    """The control id of each message is its MSH-10."""
    assert [cid for cid, _ in hl7v2.decode_messages(REFERRAL)] == ["HISX-000042"]


def test_encoding_is_deterministic():
    """The same document encodes to the same bytes, so a resend has the same MSH-10."""
    doc = hl7v2.decode(REFERRAL)[0]
    assert hl7v2.encode(doc) == hl7v2.encode(dataclasses.replace(doc))


def test_tolerant_ref_reading():
    """A REF with PRD roles PP/CP, the AGB as ^VEKTIS, an FT letter with NTEs, MSH-18
    8859/15 and no ZD number is read, and gets a gateway number with a warning."""
    doc = hl7v2.decode((FIXTURES / "ref-ft-nte-no-zd.hl7").read_bytes())[0]
    assert (doc.sender.agb, doc.sender.organisation_agb) == ("01765432", "01700002")
    assert (doc.recipient.agb, doc.recipient.department) == ("06009876", "Neurologie")
    assert doc.body[0] == "Graag beoordeling op korte termijn." and doc.body[-1] == "Bloeddruk 150/95."
    assert "Eigen bijdrage 12 €." in doc.body[4]
    assert doc.zd_number.startswith("GW") and doc.warnings == (
        f"no ZD number in the message; gateway number {doc.zd_number} given",)


def test_recipient_by_facility_name_when_there_is_no_prd_rt():
    """Without a PRD RT and without an AGB in MSH-6, the facility name is the mailbox."""
    data = REFERRAL.replace(b"Ziekenhuis Eemland^06005678^VEKTIS", b"Ziekenhuis Eemland")
    data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"PRD|RT"))
    doc = hl7v2.decode(data)[0]
    assert (doc.recipient.agb, doc.recipient.mailbox) == ("", "Ziekenhuis Eemland")


def test_gateway_numbers_are_never_written_as_zorgdomein_numbers():
    """A gateway number goes out with assigning authority gatewayd and our own identifier
    system, never ZorgDomein's."""
    doc = hl7v2.decode((FIXTURES / "ref-ft-nte-no-zd.hl7").read_bytes())[0]
    out = hl7v2.encode(doc)
    assert f"|{doc.zd_number}^gatewayd\r".encode() in out
    assert f"{doc.zd_number}^^^gatewayd^VN".encode() in out and b"ZorgDomein" not in out
    from gateway.codecs import zdxml
    xml = zdxml.encode(doc)
    assert b"https://gatewayd.nl/fhir/NamingSystem/gateway-number" in xml
    assert b"zorgdomein.nl/zdnumber" not in xml


def test_mdm_t02_letter_as_epic_sends_it():
    """MDM^T02: TXA-9 is the author, TXA-12 a ZD…_ANTW number makes an answer, OBX TX and
    FT (with an indent) and the NTE are the letter."""
    doc = hl7v2.decode((FIXTURES / "mdm-t02-letter.hl7").read_bytes())[0]
    assert (doc.kind, doc.in_reply_to) == (Kind.TELECONSULT_ANSWER, "ZD200300500")
    assert (doc.sender.agb, doc.recipient.practitioner_agb) == ("03056789", "01234567")
    assert doc.body[3:] == ("  Conclusie: gonartrose re.", "  Beleid: fysiotherapie, controle 6 weken.",
                            "Met collegiale groet, K. de Boer, orthopeed")


def test_charset_8859_15_and_unknown():
    """MSH-18 8859/15 is read as ISO-8859-15; an unknown set names the ones known."""
    with pytest.raises(DecodeError) as caught:
        hl7v2.decode(REFERRAL.replace(b"8859/1", b"8859/7"))
    assert "8859/15" in caught.value.message and caught.value.code == "E-HL7-CHARSET"
