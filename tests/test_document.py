"""The canonical Document's identifier and consistency rules."""

import dataclasses
import datetime as dt

import pytest

from gateway.document import (Address, Document, Kind, Patient, Recipient, Sender, agb_problem,
                              bsn_problem, normalize_bsn, zd_problem)
from gateway.errors import DocumentError


def make(**changes) -> Document:
    base = dict(kind=Kind.REFERRAL, zd_number="ZD123456789", sent_at=dt.datetime(2026, 3, 2, 10, 12),
                sender=Sender("01234567"), recipient=Recipient("06005678"))
    return Document(**{**base, **changes})


@pytest.mark.parametrize("value, ok", [("111222333", True), ("123456782", True),
                                       ("123456789", False), ("000000000", False),
                                       ("12345678", False), ("１２３４５６７８２", False)])
def test_bsn_11_proef(value, ok):
    """A BSN passes only with 9 ASCII digits and the 11-proef."""
    assert (bsn_problem(value) is None) is ok


def test_8_digit_bsn_is_padded():
    """An 8-digit BSN gets a leading zero before the check."""
    assert normalize_bsn("12345672") == "012345672"


@pytest.mark.parametrize("value, ok", [("01234567", True), ("1234567", False), ("0123456a", False)])
def test_agb(value, ok):
    """An AGB code is exactly 8 digits."""
    assert (agb_problem(value) is None) is ok


@pytest.mark.parametrize("value, answer, ok", [
    ("ZD12345678", False, True), ("ZD123456789", False, True), ("ZD1234567", False, False),
    ("ZD123456789_ANTW", False, False), ("ZD123456789_ANTW", True, True), ("ZD123456789", True, False),
    ("ZD１００２００３００", False, False), ("ZD١٠٠٢٠٠٣٠٠", False, False)])
def test_zd_numbers(value, answer, ok):
    """ZD numbers are ZD + 8 or 9 ASCII digits (no fullwidth or other scripts'); answers
    add _ANTW."""
    assert (zd_problem(value, answer) is None) is ok


@pytest.mark.parametrize("changes, field", [
    ({"zd_number": "ZD12"}, "zd_number"),
    ({"kind": Kind.TELECONSULT_ANSWER, "zd_number": "ZD123456789_ANTW", "in_reply_to": "ZD999999999"},
     "in_reply_to"),
    ({"sender": Sender("123")}, "sender.agb"),
    ({"recipient": Recipient("06005678", practitioner_agb="x")}, "recipient.practitioner_agb"),
    ({"patient": Patient(bsn="123456789")}, "patient.bsn"),
    ({"patient": Patient(birth_date=dt.date(2027, 1, 1))}, "patient.birth_date"),
    ({"sent_at": dt.datetime(2026, 3, 29, 2, 30)}, "sent_at"),
    ({"sent_at": dt.datetime(2026, 3, 2, 10, 12, tzinfo=dt.timezone.utc)}, "sent_at"),
    ({"body": ("line\nbreak",)}, "body[1]"),
    ({"sender": Sender("01234567", name=" padded")}, "sender.name"),
    ({"patient": Patient(address=Address())}, "patient.address"),
])
def test_document_rules(changes, field):
    """A Document that breaks a rule cannot be made; the error names the field, not its value."""
    with pytest.raises(DocumentError) as caught:
        make(**changes)
    assert caught.value.where == field
    assert "123456789" not in caught.value.message


def test_valid_answer():
    """An answer replies to its own number without _ANTW."""
    doc = make(kind=Kind.TELECONSULT_ANSWER, zd_number="ZD123456789_ANTW", in_reply_to="ZD123456789")
    assert dataclasses.replace(doc) == doc


def test_fingerprint_is_stable_and_content_bound():
    """The fingerprint is the same for equal documents and differs when a field differs."""
    assert make().fingerprint() == make().fingerprint()
    assert make().fingerprint() != make(body=("x",)).fingerprint()
