"""The MEDVRI codec: envelope and structure checks, charsets, wrapping, round trips."""

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings

from gateway.codecs import edifact, edisyntax
from gateway.document import Kind
from gateway.errors import DecodeError, EncodeError
from tests.strategies import medvri_documents

FIXTURES = Path(__file__).parent.parent / "fixtures" / "medvri"
REFERRAL = (FIXTURES / "referral-crlf.edi").read_bytes()


def decode_one(data: bytes):
    docs = edifact.decode(data)
    assert len(docs) == 1
    return docs[0]


def error_of(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        edifact.decode(data)
    return caught.value


@given(medvri_documents())
@settings(max_examples=150, deadline=None)
def test_round_trip(doc):
    """decode(encode(doc)) gives back every field of a document MEDVRI can carry."""
    assert edifact.decode(edifact.encode(doc)) == [doc]


def test_referral_fixture_fields():
    """The CRLF fixture decodes into the referrer, institution, patient and letter it holds."""
    doc = decode_one(REFERRAL)
    assert doc.kind is Kind.REFERRAL and doc.zd_number == "ZD100200300"
    assert (doc.sender.agb, doc.recipient.agb) == ("01234567", "06005678")
    assert (doc.patient.family_prefix, doc.patient.family_name, doc.patient.bsn) == \
        ("van", "Dijk", "123456782")
    assert doc.body[3] == "februari pijnlijk en gezwollen is (re > li): hydrops, flexie 90'."
    assert doc.body[4].endswith("zinvol?")


def test_answer_number_makes_an_answer():
    """A bare ZD…_ANTW number makes a teleconsult answer to the number without the suffix,
    even when the plain request number stands first."""
    doc = decode_one((FIXTURES / "teleconsult-answer.edi").read_bytes())
    assert doc.kind is Kind.TELECONSULT_ANSWER
    assert (doc.zd_number, doc.in_reply_to) == ("ZD100200301_ANTW", "ZD100200301")


def test_unoc_diacritics_and_several_messages():
    """A UNOC interchange without UNA or line breaks yields one document per message, diacritics intact."""
    first, second = edifact.decode((FIXTURES / "two-messages-unoc.edi").read_bytes())
    assert first.patient.given_name == "Hélène" and first.sender.name == "A. Özdemir"
    assert second.zd_number == "ZD200300401"
    out = edifact.encode(first)
    assert out.startswith(b"UNA:+.? '\nUNB+UNOC:1+") and "Hélène".encode("latin-1") in out
    assert edifact.decode(out) == [first]


def test_ascii_content_is_written_as_unoa():
    """Content that is plain ASCII is written with the UNOA syntax identifier."""
    assert b"UNB+UNOA:1+" in edifact.encode(decode_one(REFERRAL))


def test_bom_and_value_ending_in_release_character():
    """A leading BOM is skipped and a value ending in an escaped ? keeps its ?."""
    doc = decode_one(b"\xef\xbb\xbf" + REFERRAL)
    assert doc.body[4].endswith("zinvol?")
    assert b"zinvol??'" in edifact.encode(doc)


def test_long_lines_are_wrapped_at_70():
    """Letter lines longer than 70 characters are wrapped on output and no word is lost."""
    doc = decode_one(REFERRAL)
    long_line = " ".join(["woord"] * 40)
    wrapped = decode_one(edifact.encode(dataclasses.replace(doc, body=(long_line,))))
    assert all(len(line) <= 70 for line in wrapped.body) and len(wrapped.body) == 4
    assert " ".join(wrapped.body) == long_line


def test_missing_zd_number_gets_a_gateway_number():
    """Without any ZD number the document gets a gateway number (GW + 10 digits, never a ZD
    form), the same for the same interchange, with a warning; it is written back as a
    'Gatewaynummer:' line and never as a ZD number."""
    data = REFERRAL.replace(b"TXT:1+ZD-nummer?: ZD100200300'", b"TXT:1+Zonder nummer'")
    first, second = decode_one(data), decode_one(data)
    assert first.zd_number == second.zd_number and re.fullmatch(r"GW\d{10}", first.zd_number)
    assert any("gateway number" in warning for warning in first.warnings)
    out = edifact.encode(first)
    assert f"Gatewaynummer?: {first.zd_number}".encode() in out and b"ZD-nummer" not in out
    assert decode_one(out) == first


def test_mailbox_addresses_in_unb_are_kept():
    """UNB addresses that are network mailbox numbers (ZorgMail style, 9 digits) are read as
    mailboxes, not refused; the AGB codes stay empty until the route tables map them."""
    doc = decode_one(REFERRAL.replace(b"+01234567+06005678+", b"+500000101+500000201+"))
    assert (doc.sender.agb, doc.sender.mailbox) == ("", "500000101")
    assert (doc.recipient.agb, doc.recipient.mailbox) == ("", "500000201")
    assert b"+500000101+500000201+" in edifact.encode(doc)


def test_unz_reference_mismatch_is_accepted_with_a_warning():
    """A UNZ control reference other than the UNB's is accepted and noted; counts stay strict."""
    doc = decode_one(REFERRAL.replace(b"UNZ+1+HIS00042", b"UNZ+1+00042"))
    assert "UNZ control reference '00042' differs from UNB's 'HIS00042' (accepted), segment 19 " \
        "(UNZ), line 19, element 2" in doc.warnings


def test_other_edifact_types_are_refused_before_layout_checks():
    """A MEDLAB (or MEDSPE, …) is refused as not MEDVRI, not as a MEDVRI with the wrong segments."""
    medlab = (b"UNB+UNOA:1+500000101+500000201+260831:0930+2601'UNH+2601+MEDLAB:1'"
              b"ZKH+Streeklab Rijnmond'PID+1975:03:18+V+Dijk'UNT+4+2601'UNZ+1+2601'")
    assert error_of(medlab).code == "E-EDI-TYPE"


def test_missing_det_takes_the_unb_time():
    """A message without DET is sent at the UNB's date and time, with a warning."""
    data = REFERRAL.replace(b"DET+26:03:02+10:12'\r\n", b"").replace(b"UNT+16", b"UNT+15")
    doc = decode_one(data)
    assert doc.sent_at.isoformat() == "2026-03-02T10:12:00"
    assert any("DET" in warning for warning in doc.warnings)


def test_receiver_reference_is_the_portal_id():
    """PID element 5 holding the receiver's own patient number (not a BSN) is kept."""
    doc = decode_one(REFERRAL.replace(b"+HIS-881+BSN123456782'", b"+BSN123456782+ZIS-77'"))
    assert (doc.patient.bsn, doc.patient.portal_id) == ("123456782", "ZIS-77")


BAD_CASES = {
    "truncated": (REFERRAL[:300], "E-EDI-TRUNCATED"),
    "no UNZ": (REFERRAL[:REFERRAL.index(b"UNZ")], "E-EDI-TRUNCATED"),
    "wrong UNT count": (REFERRAL.replace(b"UNT+16+42", b"UNT+15+42"), "E-EDI-COUNT"),
    "UNT reference": (REFERRAL.replace(b"UNT+16+42", b"UNT+16+43"), "E-EDI-REFERENCE"),
    "UNZ count": (REFERRAL.replace(b"UNZ+1+", b"UNZ+2+"), "E-EDI-COUNT"),

    "bad BSN": (REFERRAL.replace(b"BSN123456782", b"BSN123456789"), "E-EDI-BSN"),
    "bad UNB address": (REFERRAL.replace(b"+01234567+", b"+0123-456+"), "E-EDI-AGB"),
    "bad AGB header": (REFERRAL.replace(b"TXT:2+Geachte collega,", b"TXT:2+AGB-organisatie?: 12"),
                       "E-EDI-AGB"),
    "bad DET date": (REFERRAL.replace(b"DET+26:03:02", b"DET+26:02:30"), "E-EDI-DATE"),
    "bad birth date": (REFERRAL.replace(b"1957:11:30", b"1957:13:30"), "E-EDI-DATE"),
    "bad UNB date": (REFERRAL.replace(b"+260302:1012+", b"+260399:1012+"), "E-EDI-DATE"),
    "unknown charset": (REFERRAL.replace(b"UNOA:1", b"UNOX:1"), "E-EDI-CHARSET"),
    "8-bit byte in UNOA": (REFERRAL.replace(b"Visser+", b"V\xeesser+"), "E-EDI-CHARSET"),
    "syntax 4 in UNB": (REFERRAL.replace(b"UNOA:1", b"UNOA:4"), "E-EDI-SYNTAX4"),
    "syntax 4 repetition": (REFERRAL.replace(b"UNA:+.? '", b"UNA:+.?*'"), "E-EDI-SYNTAX4"),
    "missing GGA": (REFERRAL.replace(b"GGA+M. Visser+Huisartsenpraktijk+Gezondheidscentrum De Brink+"
                                     b"Brinkstraat:3::Amersfoort:3811AA+033-4567890'\r\n", b"")
                    .replace(b"UNT+16", b"UNT+15"), "E-EDI-STRUCTURE"),
    "segments out of order": (REFERRAL.replace(b"UNH+42+MEDVRI:1'\r\n", b"").replace(
        b"DET+26:03:02+10:12'", b"DET+26:03:02+10:12'UNH+42+MEDVRI:1'"), "E-EDI-STRUCTURE"),
    "not MEDVRI": (REFERRAL.replace(b"MEDVRI:1", b"MEDRPT:1"), "E-EDI-TYPE"),
    "bad sex": (REFERRAL.replace(b"+M+Dijk", b"+X+Dijk"), "E-EDI-SEX"),
    "10 MB single line": (b"UNB+UNOA:1+" + b"A" * 10_000_000, "E-EDI-TOO-LARGE"),
    "long segment": (REFERRAL.replace(b"TXT:2+Geachte", b"TXT:2+" + b"x" * 5000), "E-EDI-TOO-LARGE"),
    "GGA element 6": (REFERRAL.replace(b"+033-4567890'", b"+033-4567890+extra'"), "E-EDI-UNPLACED"),
    "PID name component 7": (REFERRAL.replace(b":Pieter:P.J.+", b":Pieter:P.J.:x+"), "E-EDI-UNPLACED"),
    "PAD element 3": (REFERRAL.replace(b"+06-98765432'", b"+06-98765432+x'"), "E-EDI-UNPLACED"),
}


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input_gets_a_coded_error(name):
    """Each named kind of bad interchange is refused with its own stable error code and a location."""
    data, code = BAD_CASES[name]
    error = error_of(data)
    assert error.code == code
    assert error.where
    assert "12345678" not in str(error)                   # a bad BSN is not quoted


def test_unplaced_component_is_named():
    """Content a MEDVRI segment has no place for is refused with its element and component."""
    assert error_of(BAD_CASES["PID name component 7"][0]).where == \
        "segment 6 (PID), line 6, element 3, component 7"


def test_unescaped_colon_in_free_text_is_kept():
    """A ':' the sender forgot to escape in a name or phone stays in the text."""
    doc = decode_one(REFERRAL.replace(b"GGA+M. Visser+", b"GGA+Dr:M. Visser+"))
    assert doc.sender.name == "Dr:M. Visser"


def test_error_names_segment_and_line():
    """A count error names the UNT segment, its line and the element."""
    error = error_of(BAD_CASES["wrong UNT count"][0])
    assert error.where == "segment 18 (UNT), line 18, element 1"


def test_errors_carry_no_patient_data():
    """A bad BSN or birth date is reported without the value itself."""
    for name in ("bad BSN", "bad birth date"):
        text = str(error_of(BAD_CASES[name][0]))
        assert "123456789" not in text and "1957" not in text


@pytest.mark.parametrize("change, code", [
    ({"kind": Kind.CANCELLATION}, "E-ENCODE-KIND"),
    ({"kind": Kind.SUPPLEMENT}, "E-ENCODE-KIND"),
])
def test_kinds_medvri_cannot_carry(change, code):
    """Cancellations and supplements cannot be written as MEDVRI: EncodeError names the kind."""
    doc = dataclasses.replace(decode_one(REFERRAL), **change)
    with pytest.raises(EncodeError) as caught:
        edifact.encode(doc)
    assert caught.value.code == code and caught.value.where == "field kind"


def test_attachments_and_foreign_characters_are_refused():
    """An attachment, or a character outside ISO-8859-1, raises EncodeError naming the field."""
    from gateway.document import Attachment
    doc = decode_one(REFERRAL)
    with pytest.raises(EncodeError) as caught:
        edifact.encode(dataclasses.replace(doc, attachments=(Attachment("a.pdf", "application/pdf", b"%PDF"),)))
    assert caught.value.where == "field attachments"
    with pytest.raises(EncodeError) as caught:
        edifact.encode(dataclasses.replace(doc, body=("Prijs 10 €",)))
    assert caught.value.where == "field body[1]"


def test_control_ids():
    """The control id of a message is its UNB and UNH reference."""
    assert [cid for cid, _ in edifact.decode_messages(REFERRAL)] == ["HIS00042/42"]


def test_line_of_counts_line_breaks():
    """Error locations count lines, also when a segment holds an escaped terminator."""
    text = "UNA:+.? '\nUNB+A?'B'\nUNH+1'"
    assert edisyntax.locate(text, 3) == "segment 3, line 3"
