"""intake.accept: durable store, dedup across restarts, rejects kept, mandates,
fallback and re-routing, and no patient data in the SQLite metadata."""

import dataclasses
import time
from pathlib import Path

import pytest

from gateway import routes
from gateway.codecs import edifact, hl7v2, zdxml
from gateway.errors import DecodeError
from gateway.intake import Intake
from gateway.reading import DuplicateConflict, Envelope, NotMandated
from tests.helpers.fakes import RING, write_tables

ROOT = Path(__file__).parent.parent
SAMPLES = ROOT / "gateway" / "routes" / "samples"
FIXTURES = ROOT / "fixtures"
REFERRAL = (FIXTURES / "medvri" / "referral-crlf.edi").read_bytes()
ADMIN = Envelope("admin", "test")


def make_intake(backend, spool: Path, tables: Path = SAMPLES) -> Intake:
    return Intake(backend.store(spool, time.time, RING), routes.load(tables), 16 * 1024 * 1024)


def test_referral_is_stored_converted_and_ready(backend, tmp_path):
    """A referral is stored raw and as the institution's XML, ready for pickup."""
    intake = make_intake(backend, tmp_path)
    (receipt,) = intake.accept(REFERRAL, ADMIN)
    assert (receipt.state, receipt.destination, receipt.duplicate) == ("ready", "06005678", False)
    row = intake.store.get(receipt.id)
    assert intake.store.payload(row, "raw") == REFERRAL
    out = intake.store.payload(row, "out")
    assert zdxml.decode(out) == edifact.decode(REFERRAL)
    assert [h["state"] for h in intake.store.history(receipt.id)] == ["received", "ready"]


def test_resend_returns_first_receipt_even_after_restart(backend, tmp_path):
    """The same control id and content from the same identity is stored once, across restarts."""
    (first,) = make_intake(backend, tmp_path).accept(REFERRAL, ADMIN)
    (again,) = make_intake(backend, tmp_path).accept(REFERRAL, ADMIN)
    assert again.id == first.id and again.duplicate
    assert len(make_intake(backend, tmp_path).store.listing()) == 1


def test_same_control_id_other_content_is_refused(backend, tmp_path):
    """A control id reused for other content is refused and nothing more is stored."""
    intake = make_intake(backend, tmp_path)
    intake.accept(REFERRAL, ADMIN)
    with pytest.raises(DuplicateConflict):
        intake.accept(REFERRAL.replace(b"Geachte collega", b"Beste collega"), ADMIN)
    assert len(intake.store.listing()) == 1


def test_unreadable_input_is_kept_as_rejected(backend, tmp_path):
    """Bad input raises DecodeError and is kept, with its reason, for an administrator."""
    intake = make_intake(backend, tmp_path)
    bad = REFERRAL.replace(b"UNT+16+42", b"UNT+15+42")
    with pytest.raises(DecodeError):
        intake.accept(bad, ADMIN)
    (row,) = intake.store.listing("rejected")
    assert row["reason"].startswith("E-EDI-COUNT")
    assert intake.store.payload(row, "raw") == bad


def test_identity_may_only_send_for_its_mandates(backend, tmp_path):
    """An identity sending for an AGB code it is not mandated for is refused; nothing is stored."""
    intake = make_intake(backend, tmp_path)
    with pytest.raises(NotMandated):
        intake.accept(REFERRAL, Envelope("his-other", "test", frozenset({"01765432"})))
    assert intake.store.listing() == []
    (receipt,) = intake.accept(REFERRAL, Envelope("his-brink", "test", frozenset({"01234567"})))
    assert receipt.state == "ready"


def test_answer_routes_to_the_requester(backend, tmp_path):
    """An answer goes to the answer address of whoever sent the request, found in the store."""
    intake = make_intake(backend, tmp_path)
    intake.accept((FIXTURES / "hl7" / "teleconsult-request.hl7").read_bytes(), ADMIN)
    (receipt,) = intake.accept((FIXTURES / "hl7" / "teleconsult-answer-crlf.hl7").read_bytes(), ADMIN)
    assert (receipt.state, receipt.destination) == ("outbound", "answers:01234567")
    row = intake.store.get(receipt.id)
    assert row["delivery"] == "sftp:his-brink"
    assert edifact.decode(intake.store.payload(row, "out"))[0].kind == \
        "teleconsult-answer"


def test_forged_answer_to_another_institutions_request_is_not_delivered(backend, tmp_path):
    """A hospital answering a request that went to another hospital: the answer waits in
    fallback with the reason, nothing reaches the requester."""
    intake = make_intake(backend, tmp_path)
    intake.accept((FIXTURES / "hl7" / "teleconsult-request.hl7").read_bytes(), ADMIN)
    forged = (FIXTURES / "hl7" / "teleconsult-answer-crlf.hl7").read_bytes() \
        .replace(b"06005678", b"06009999")
    (receipt,) = intake.accept(forged, ADMIN)
    assert receipt.state == "fallback"
    assert intake.store.get(receipt.id)["reason"].startswith("answer from AGB 03056789 to a "
                                                             "request that went to institution")


def test_format_that_cannot_carry_the_document_is_fallback(backend, tmp_path):
    """A teleconsult request for an EDIFACT institution waits in fallback with the reason."""
    folder = write_tables(tmp_path / "routes", "06005678,Eemland,edifact,pull,attachments\n",
                          "01234567,V,*,\n")
    intake = make_intake(backend, tmp_path / "spool", folder)
    (receipt,) = intake.accept((FIXTURES / "hl7" / "teleconsult-request.hl7").read_bytes(), ADMIN)
    assert receipt.state == "fallback"
    assert "cannot be written as edifact" in intake.store.get(receipt.id)["reason"]


def test_fallback_is_rerouted_when_tables_change(backend, tmp_path):
    """A referral from an unknown referrer waits in fallback and moves on once the table knows it."""
    folder = write_tables(tmp_path / "routes", "", "")
    (folder / "institutions.csv").write_text((SAMPLES / "institutions.csv").read_text())
    intake = make_intake(backend, tmp_path / "spool", folder)
    (receipt,) = intake.accept(REFERRAL, ADMIN)
    assert intake.store.get(receipt.id)["reason"] == "referrer AGB 01234567 not in the table"
    assert intake.reroute_rows(intake.store.listing("fallback"), "test") == []
    (folder / "referrers.csv").write_text((SAMPLES / "referrers.csv").read_text())
    intake.tables = routes.load(folder)
    (moved,) = intake.reroute_rows(intake.store.listing("fallback"), "test")
    assert (moved.id, moved.state) == (receipt.id, "ready")
    assert [h["state"] for h in intake.store.history(receipt.id)] == ["received", "fallback", "ready"]


def test_sqlite_holds_no_patient_data(backend, tmp_path):
    """Marker BSN, name and letter text appear in no SQLite file, only in payloads."""
    doc = edifact.decode(REFERRAL)[0]
    marked = dataclasses.replace(
        doc, patient=dataclasses.replace(doc.patient, bsn="123456782", family_name="Zyxmarker"),
        body=("Letterlinemarker qwv",))
    intake = make_intake(backend, tmp_path)
    intake.accept(hl7v2.encode(marked), ADMIN)
    intake.store.close()
    for path in tmp_path.glob("gateway.db*"):
        data = path.read_bytes()
        assert b"123456782" not in data and b"Zyxmarker" not in data and b"Letterlinemarker" not in data


def test_messages_without_control_id_are_told_apart_by_content(backend, tmp_path):
    """HL7 without MSH-10: equal content is a resend, other content a new message."""
    intake = make_intake(backend, tmp_path)
    hl7 = (FIXTURES / "hl7" / "referral-lf.hl7").read_bytes().replace(b"HISX-000042", b"")
    (first,) = intake.accept(hl7, ADMIN)
    (again,) = intake.accept(hl7, ADMIN)
    (other,) = intake.accept(hl7.replace(b"Geachte collega", b"Beste collega"), ADMIN)
    assert again.duplicate and again.id == first.id and other.id != first.id


def test_accept_many_is_one_transaction(backend, tmp_path):
    """A batch is stored in one transaction (one time on every row); each input gets its own
    outcome: receipts, a duplicate of an earlier one in the same batch, a rejection, a refusal."""
    from tests.helpers.fakes import numbered_referral
    intake = make_intake(backend, tmp_path)
    first, second = numbered_referral(1, "B"), numbered_referral(2, "B")
    changed = first.replace(b"Geachte collega", b"Beste collega")
    outcomes = intake.accept_many([
        (first, ADMIN), (second, ADMIN), (first, ADMIN), (b"garbage", ADMIN),
        (second, Envelope("his-other", "test", frozenset({"01765432"}))), (changed, ADMIN)])
    one, two, again, rejected, refused, conflict = outcomes
    assert one[0].state == two[0].state == "ready" and one[0].id != two[0].id
    assert again[0].id == one[0].id and again[0].duplicate
    assert isinstance(rejected, DecodeError) and isinstance(refused, NotMandated)
    assert isinstance(conflict, DuplicateConflict)
    rows = intake.store.listing()
    assert len(rows) == 3 and len({row["received_at"] for row in rows}) == 1
    assert intake.store.payload(intake.store.get(two[0].id), "raw") == second


def test_an_hl7_file_cut_mid_segment_is_refused_when_no_frame_vouches_for_it(backend, tmp_path):
    """From a file drop (framed=False) an HL7 message whose last segment has no terminator
    is kept as rejected (E-HL7-TRUNCATED); whole, it is taken; over MLLP or HTTPS (framed)
    a missing final CR is accepted as senders write it."""
    intake = make_intake(backend, tmp_path)
    whole = (FIXTURES / "hl7" / "referral-lf.hl7").read_bytes()
    assert whole.endswith(b"\n")
    cut = whole[:whole.rindex(b"|")]
    dropped = Envelope("his-brink", "sftp", None, framed=False)
    with pytest.raises(DecodeError) as refused:
        intake.accept(cut, dropped)
    assert refused.value.code == "E-HL7-TRUNCATED"
    assert intake.accept(whole, dropped)[0].state == "ready"
    assert intake.accept(cut.replace(b"HISX-000042", b"HISX-000043"), ADMIN)


@pytest.mark.parametrize("name, data", [
    ("xml", b"<Bundle>" + b"<a/>" * 20_000 + b"</Bundle>"),
    ("edifact", b"UNA:+.? ~UNB+UNOA:1+x+y~" + b"TXT:1+x~" * 20_000),
])
def test_segment_flood_is_refused_in_every_format(backend, tmp_path, name, data):
    """XML elements count as segments, and an EDIFACT UNA's own terminator is counted:
    past limits.max_segments the input is refused unread and unstored."""
    from gateway.reading import TooLarge
    intake = make_intake(backend, tmp_path)
    with pytest.raises(TooLarge) as refused:
        intake.accept(data, ADMIN)
    assert refused.value.code == "E-TOO-MANY-SEGMENTS"
    assert intake.store.listing() == []


def test_every_fixture_is_taken_in(backend, tmp_path):
    """Every fixture shape (ZorgDomein ORU and ORM, MDM, tolerant REF and MEDVRI, XML with a
    custodian) is stored and routed by intake with the sample tables."""
    intake = make_intake(backend, tmp_path)
    for path in sorted(p for p in FIXTURES.glob("*/*") if p.parent.name != "expected"):
        receipts = intake.accept(path.read_bytes(), ADMIN)
        assert receipts and all(r.state in ("ready", "fallback", "outbound") for r in receipts), path


def test_reader_warnings_are_in_history_and_audit_without_patient_data(backend, tmp_path):
    """What a reader noted (UNZ reference, mailbox mapping) is the first history entry's
    reason and the receive record's detail, without names, BSN or letter text."""
    intake = make_intake(backend, tmp_path)
    (receipt,) = intake.accept((FIXTURES / "medvri" / "mailbox-unz-reference.edi").read_bytes(),
                               ADMIN)
    assert (receipt.state, receipt.destination) == ("ready", "06005678")
    first = intake.store.history(receipt.id)[0]
    assert first["state"] == "received"
    assert "UNZ control reference '1021' differs from UNB's 'SNM1021'" in first["reason"]
    assert "sender mailbox '500000101' is AGB 01765432" in first["reason"]
    detail = intake.store.db.execute("SELECT detail FROM audit WHERE action = 'receive'").fetchone()
    assert first["reason"].startswith(detail[0])          # the audit detail may be shortened
    for secret in ("111222333", "Groot", "Hek", "bloeddruk"):
        assert secret not in first["reason"]


def test_identity_sending_for_an_unmapped_mailbox_is_not_mandated(backend, tmp_path):
    """An identity whose message names its sender only by an unmapped mailbox is refused."""
    intake = make_intake(backend, tmp_path)
    data = (FIXTURES / "medvri" / "mailbox-unz-reference.edi").read_bytes().replace(
        b"+500000101+", b"+500000999+")
    with pytest.raises(NotMandated) as caught:
        intake.accept(data, Envelope("his-x", "test", frozenset({"01765432"})))
    assert "mailbox '500000999'" in str(caught.value)


@pytest.mark.parametrize("command, code", [(b"\\.sp 999999\\", "E-HL7-FORMAT"),
                                           (b"\\.in 100000\\", "E-HL7-FORMAT")])
def test_formatting_commands_cannot_blow_a_small_message_up(backend, tmp_path, command, code):
    """A .sp or .in asking for more than 100 lines or columns is refused (kept as
    rejected); a number too long to be one is kept as the sender wrote it."""
    intake = make_intake(backend, tmp_path)
    referral = (FIXTURES / "hl7" / "referral-lf.hl7").read_bytes()
    with pytest.raises(DecodeError) as refused:
        intake.accept(referral.replace(b"|1|Geachte collega,", b"|1|" + command + b"Geachte"), ADMIN)
    assert refused.value.code == code
    (receipt,) = intake.accept(referral.replace(b"|1|Geachte collega,", b"|1|\\.sp 20000000\\x"),
                               ADMIN)
    document = intake.stored_document(intake.store.get(receipt.id))
    assert document.body[0] == "\\.sp 20000000\\x"


def test_repetitions_count_as_letter_lines(backend, tmp_path):
    """An OBX-5 of 20,000 repetitions (empty lines) is refused unread like 20,000 segments."""
    from gateway.reading import TooLarge
    intake = make_intake(backend, tmp_path)
    referral = (FIXTURES / "hl7" / "referral-lf.hl7").read_bytes()
    with pytest.raises(TooLarge) as refused:
        intake.accept(referral.replace(b"|1|Geachte collega,", b"|1|" + b"~" * 20_000), ADMIN)
    assert refused.value.code == "E-TOO-MANY-SEGMENTS"


def test_a_reader_failing_unforeseen_keeps_the_input_as_rejected(backend, tmp_path, monkeypatch):
    """If a codec fails in a way it did not foresee (a bug), the input is kept as rejected
    with E-READ and the other inputs of its batch are stored."""
    from gateway import codecs

    class Broken:
        def decode_messages(self, raw):
            raise OverflowError("a number in the input")
    real = codecs.get
    monkeypatch.setattr(codecs, "get", lambda name: Broken() if name == "edifact" else real(name))
    intake = make_intake(backend, tmp_path)
    hl7 = (FIXTURES / "hl7" / "referral-lf.hl7").read_bytes()
    bad, good = intake.accept_many([(REFERRAL, ADMIN), (hl7, ADMIN)])
    assert bad.code == "E-READ" and "number in the input" not in str(bad)
    assert good[0].state == "ready"
    assert [row["state"] for row in intake.store.listing()] == ["ready", "rejected"]
