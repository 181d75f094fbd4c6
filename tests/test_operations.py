"""resend, cancel, supplement, export and stats by ZD number, with their refusals."""

import datetime as dt
import time
from pathlib import Path

import pytest

from gateway import operations, routes
from gateway.codecs import zdxml
from gateway.document import Kind
from gateway.intake import Envelope, Intake
from gateway.spool.store import Store
from tests.helpers.fakes import RING

ROOT = Path(__file__).parent.parent
SAMPLES = ROOT / "gateway" / "routes" / "samples"
REFERRAL = (ROOT / "fixtures" / "medvri" / "referral-crlf.edi").read_bytes()
SENT = dt.datetime(2026, 3, 2, 10, 12)          # the fixture's DET
ADMIN = Envelope("admin", "test")


@pytest.fixture
def intake(tmp_path):
    intake = Intake(Store(tmp_path, time.time, RING), routes.load(SAMPLES), 1 << 24)
    intake.accept(REFERRAL, ADMIN)
    return intake


def test_resend_only_after_delivery(intake):
    """A referral waiting for pickup is not resent; a delivered one is offered again."""
    with pytest.raises(operations.Refused, match="is ready, not delivered"):
        operations.resend(intake, "ZD100200300", "test")
    intake.store.transition(1, "delivered", "test")
    assert operations.resend(intake, "ZD100200300", "test").state == "ready"


def test_resend_refused_when_cancelled_or_rerouted(intake):
    """Resend names the reason: cancelled, or routed to another institution."""
    intake.store.transition(1, "cancelled", "test")
    with pytest.raises(operations.Refused, match="was cancelled on"):
        operations.resend(intake, "ZD100200300", "test")
    intake.store.db.execute("UPDATE messages SET state = 'delivered', destination = '06009876'")
    with pytest.raises(operations.Refused, match="routed to institution 06009876"):
        operations.resend(intake, "ZD100200300", "test")


def _received(intake, message_id: int = 1) -> dt.datetime:
    return dt.datetime.fromtimestamp(intake.store.get(message_id)["received_at"], dt.timezone.utc)


def test_cancel_sends_a_cancellation_within_180_days(intake):
    """A delivered referral: a cancellation goes to the institution and the referral is
    marked cancelled."""
    intake.store.transition(1, "delivered", "test")
    receipt = operations.cancel(intake, "ZD100200300", "elders geholpen",
                                _received(intake) + dt.timedelta(days=10), 180, "test")
    row = intake.store.get(receipt.id)
    assert (row["kind"], row["state"], row["destination"]) == ("cancellation", "ready", "06005678")
    doc = zdxml.decode(intake.store.payload(row, "out"))[0]
    assert (doc.kind, doc.in_reply_to, doc.body) == (Kind.CANCELLATION, "ZD100200300",
                                                      ("elders geholpen",))
    assert intake.store.get(1)["state"] == "cancelled"
    with pytest.raises(operations.Refused, match="cancelled already"):
        operations.cancel(intake, "ZD100200300", "again", _received(intake) + dt.timedelta(days=11),
                          180, "test")


def test_cancel_window_counts_from_the_gateways_receipt(intake):
    """The 180 days run from when the gateway received the referral, not from the sender's
    own date (the fixture's DET lies months before): cancelling today works, day 181 not."""
    intake.store.transition(1, "delivered", "test")
    assert _received(intake).date() > SENT.date()
    with pytest.raises(operations.Refused, match="more than 180 days ago"):
        operations.cancel(intake, "ZD100200300", "x", _received(intake) + dt.timedelta(days=181),
                          180, "test")
    receipt = operations.cancel(intake, "ZD100200300", "x", _received(intake), 180, "test")
    assert intake.store.get(receipt.id)["kind"] == "cancellation"


def test_cancel_of_a_referral_never_pulled_withdraws_it(intake):
    """A referral still waiting in the spool is withdrawn: cancelled, out of the spool, and
    no cancellation is sent to an institution that never saw it."""
    receipt = operations.cancel(intake, "ZD100200300", "verkeerd adres", _received(intake),
                                180, "test")
    assert (receipt.id, receipt.state) == (1, "cancelled")
    assert "withdrawn before its institution received it" in intake.store.get(1)["reason"]
    assert [row["kind"] for row in intake.store.by_zd("ZD100200300")] == ["referral"]
    assert intake.store.db.execute("SELECT count(*) FROM messages WHERE state = 'ready'"
                                   ).fetchone()[0] == 0


def test_cancel_refused_without_the_option(intake, tmp_path):
    """At an institution without the cancel option, cancelling a delivered referral is refused."""
    intake.store.transition(1, "delivered", "test")
    folder = tmp_path / "strict"
    folder.mkdir()
    (folder / "institutions.csv").write_text("agb,name,format,delivery,options\n"
                                             "06005678,Eemland,xml,pull,\n")
    (folder / "referrers.csv").write_text((SAMPLES / "referrers.csv").read_text().replace(
        "01765432,A. Özdemir,*,sftp:his-hoogveld\n", ""))
    intake.tables = routes.load(folder)
    with pytest.raises(operations.Refused, match="does not accept cancellations"):
        operations.cancel(intake, "ZD100200300", "x", _received(intake), 180, "test")


def test_supplement_text_and_attachment(intake, tmp_path):
    """A text file's lines become the supplement's letter; a PDF becomes an attachment."""
    note = tmp_path / "note.txt"
    note.write_text("Aanvullend: MRI gepland.\nGroet")
    row = intake.store.get(operations.supplement(intake, "ZD100200300", note.name, note.read_bytes(), SENT,
                                                        "cli:test").id)
    doc = zdxml.decode(intake.store.payload(row, "out"))[0]
    assert (doc.kind, doc.body) == (Kind.SUPPLEMENT, ("Aanvullend: MRI gepland.", "Groet"))
    pdf = tmp_path / "uitslag.pdf"
    pdf.write_bytes(b"%PDF-1.4 synthetic")
    row = intake.store.get(operations.supplement(intake, "ZD100200300", pdf.name, pdf.read_bytes(), SENT,
                                                        "cli:test").id)
    (attachment,) = zdxml.decode(intake.store.payload(row, "out"))[0].attachments
    assert (attachment.file_name, attachment.media_type) == ("uitslag.pdf", "application/pdf")


def test_unknown_zd_number(intake):
    """Operations on an unknown ZD number say so."""
    with pytest.raises(operations.Refused, match="no referral with ZD number ZD999999999"):
        operations.resend(intake, "ZD999999999", "test")


def test_export_and_stats_carry_no_patient_data(intake):
    """The CSV export has identifiers, states and times only; stats count per queue."""
    today = dt.date.today()
    text = operations.export(intake, today - dt.timedelta(days=1), today + dt.timedelta(days=1),
                             "cli:test")
    lines = text.splitlines()
    assert lines[0] == ",".join(operations.EXPORT_COLUMNS)
    assert lines[1].split(",")[1:6] == ["ZD100200300", "referral", "01234567", "06005678", "ready"]
    assert "123456782" not in text and "Dijk" not in text
    (stat,) = operations.stats(intake, time.time())
    assert (stat["destination"], stat["state"], stat["depth"]) == ("06005678", "ready", 1)
