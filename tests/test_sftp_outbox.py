"""SFTP outboxes served from the store (gateway.transports.outbox, gateway.spool.outboxes),
on each backend, with two stores on one database standing for two nodes: names that
never collide, listings and reads from either node, a pickup seen by both, old outbox
files on disk taken in once, audit records through the caller's ``record``."""

import threading
import time

import pytest
from twisted.conch.ssh import filetransfer as ft
from twisted.internet import defer, task

from gateway import audit, routes
from gateway.intake import Envelope, Intake
from gateway.spool.store import Store
from gateway.transports import sftp, uploads
from tests.helpers.fakes import RING, ROOT, numbered_referral

LIMITS = uploads.Limits(max_bytes=100_000, files=3, account_bytes=1 << 20,
                        total_bytes=1 << 21, staged_seconds=60)
SAMPLES = ROOT / "gateway" / "routes" / "samples"


class Node:
    """One gatewayd's view: its own store connection and SFTP folder, one database."""

    def __init__(self, backend, tmp_path, name: str, record=None):
        folder = tmp_path / "spool" if backend.name == "sqlite" else tmp_path / name
        self.store = Store(folder, time.time, RING, url=backend.url(tmp_path / "db"))
        self.outbox = sftp.Outbox(tmp_path / name / "sftp", self.store, record)
        self.account = sftp.Account("his-brink", tmp_path / name / "sftp" / "his-brink",
                                    frozenset({"01234567"}), lambda data, envelope: [],
                                    self.outbox, uploads.Shelf(uploads.Holdings(LIMITS,
                                                                                task.Clock())))

    def listing(self) -> dict[str, int]:
        return {name: info["size"] for name, _, info in self.account.openDirectory(b"outbox")}

    def read(self, name: str) -> bytes:
        handle = self.account.openFile(f"outbox/{name}".encode(), ft.FXF_READ, {})
        handle.pulled()                       # as the session does at a first open
        try:
            return handle.readChunk(0, 1 << 20)
        finally:
            handle.close()


@pytest.fixture
def nodes(backend, tmp_path):
    made = [Node(backend, tmp_path, "a"), Node(backend, tmp_path, "b")]
    yield made
    for node in made:
        node.store.close()


def answer(store, index: int, zd_number: str) -> dict:
    """A stored message with converted output, addressed to his-brink's outbox."""
    intake = Intake(store, routes.load(SAMPLES), 1 << 20)
    receipt, = intake.accept(numbered_referral(index), Envelope("admin", "test"))
    with store.db.transaction():
        store.db.execute("UPDATE messages SET delivery = 'sftp:his-brink', zd_number = ?, "
                         "format = 'hl7' WHERE id = ?", (zd_number, receipt.id))
    return dict(store.get(receipt.id))


def test_two_answers_with_one_zd_number_get_two_files(nodes):
    """Two answers with the same ZD number: two names, each opening its own message; the
    first delivered again keeps its name (no third file, nothing overwritten)."""
    a, _ = nodes
    first, second = answer(a.store, 1, "ZD9_ANTW"), answer(a.store, 2, "ZD9_ANTW")
    for row in (first, second, first):
        a.outbox.deliver(row, a.store.payload(row, "out"))
    listed = a.listing()
    assert sorted(listed) == ["ZD9_ANTW-2.hl7", "ZD9_ANTW.hl7"]
    assert a.read("ZD9_ANTW.hl7") == a.store.payload(first, "out")
    assert a.read("ZD9_ANTW-2.hl7") == a.store.payload(second, "out")
    assert listed["ZD9_ANTW-2.hl7"] == len(a.store.payload(second, "out"))
    with pytest.raises(Exception, match="UNIQUE|unique|duplicate"):
        with a.store.db.transaction():
            a.store.db.execute("INSERT INTO outbox (account, file_name, message_id, size, "
                               "listed_at) VALUES ('his-brink', 'ZD9_ANTW.hl7', ?, 1, 0)",
                               (second["id"] + 100,))


def test_an_answer_delivered_on_one_node_is_read_and_picked_up_on_the_other(nodes, tmp_path):
    """Delivered by node A: node B lists it with its opened size and reads it (audited once
    there); deleted on B, it is gone from A's listing too, and its history says pickup."""
    a, b = nodes
    row = answer(a.store, 1, "ZD7_ANTW")
    a.outbox.deliver(row, a.store.payload(row, "out"))
    plain = a.store.payload(row, "out")
    assert b.listing() == {"ZD7_ANTW.hl7": len(plain)} == a.listing()
    assert b.read("ZD7_ANTW.hl7") == plain
    assert not list((tmp_path / "a" / "sftp" / "his-brink" / "outbox").iterdir())
    b.account.removeFile(b"outbox/ZD7_ANTW.hl7")
    assert a.listing() == {} == b.listing()
    assert a.store.history(row["id"])[-1]["reason"] == "pickup confirmed"
    assert [r["action"] for r in audit.query(a.store.db, who="sftp:his-brink")] == \
        ["pull", "pickup"]
    with pytest.raises(ft.SFTPError) as refused:          # a second pickup: no such file
        a.account.removeFile(b"outbox/ZD7_ANTW.hl7")
    assert refused.value.code == ft.FX_NO_SUCH_FILE
    with pytest.raises(ft.SFTPError):
        a.account.openFile(b"outbox/ZD7_ANTW.hl7", ft.FXF_READ, {})


def test_a_payload_that_does_not_open_is_not_served(nodes):
    """An output altered in the database: the read fails, and the message goes back to
    delivery (which quarantines a payload that does not open)."""
    a, _ = nodes
    row = answer(a.store, 1, "ZD8_ANTW")
    a.outbox.deliver(row, a.store.payload(row, "out"))
    a.store.transition(row["id"], "delivered", "delivery")
    sealed = bytearray(bytes(a.store.db.value(
        "SELECT sealed FROM payloads WHERE message_id = ? AND which = 'out'", (row["id"],))))
    sealed[-3] ^= 1
    with a.store.db.transaction():
        a.store.db.execute("UPDATE payloads SET sealed = ? WHERE message_id = ? AND which = "
                           "'out'", (bytes(sealed), row["id"]))
    with pytest.raises(ft.SFTPError, match="file unavailable"):
        a.account.openFile(b"outbox/ZD8_ANTW.hl7", ft.FXF_READ, {})
    assert a.store.get(row["id"])["state"] == "outbound"
    assert a.account.shelf.held == 0


def test_old_outbox_files_on_disk_are_taken_in_once(nodes, tmp_path):
    """Files an older gatewayd wrote: each that opens as its account's message is listed
    under its name and removed from disk; one that does not is quarantined."""
    a, b = nodes
    row = answer(a.store, 1, "ZD6_ANTW")
    folder = tmp_path / "a" / "sftp" / "his-brink" / "outbox"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ZD6_ANTW.hl7").write_bytes(RING.seal(a.store.payload(row, "out"), row["id"]))
    (folder / "ZD5_ANTW.hl7").write_bytes(RING.seal(b"not ours", 999_999))
    (folder / "ZD4_ANTW.hl7.tmp").write_bytes(b"cut off")
    assert a.outbox.import_files() == 1
    assert not list(folder.iterdir())
    assert list((a.store.root / "quarantine").iterdir())
    assert b.listing() == {"ZD6_ANTW.hl7": len(a.store.payload(row, "out"))}
    assert a.outbox.import_files() == 0


def test_refusal_and_read_audits_go_through_record(backend, tmp_path):
    """An upload refused and an outbox read are handed to ``record`` (the daemon's group
    commit), never written by the SFTP code itself."""
    handed = []
    node = Node(backend, tmp_path, "a", record=lambda events: handed.extend(events) or
                defer.succeed(None))
    try:
        row = answer(node.store, 1, "ZD3_ANTW")
        node.outbox.deliver(row, node.store.payload(row, "out"))
        before = audit.query(node.store.db)
        upload = node.account.openFile(b"inbox/big.edi", ft.FXF_WRITE | ft.FXF_CREAT, {})
        with pytest.raises(ft.SFTPError):
            upload.writeChunk(0, b"x" * 100_001)
        node.read("ZD3_ANTW.hl7")
        assert [(e.action, e.result) for e in handed] == [("receive", "refused"), ("pull", "ok")]
        assert audit.query(node.store.db) == before
    finally:
        node.store.close()


def test_a_staged_upload_replaced_by_another_is_logged_and_audited(nodes, monkeypatch):
    """Two .part uploads of one name: the second replaces the first, with one WARNING line
    and an audit record (never silently)."""
    from twisted.logger import Logger, LogLevel, formatEvent

    from gateway.transports import sftp
    events: list = []
    monkeypatch.setattr(sftp, "log", Logger(observer=events.append))
    a, _ = nodes
    for data in (b"first", b"second upload"):
        handle = a.account.openFile(b"inbox/referral.edi.part", ft.FXF_WRITE | ft.FXF_CREAT, {})
        handle.writeChunk(0, data)
        handle.close()
    assert a.account.shelf.staged["referral.edi.part"].data == b"second upload"
    (record,) = [r for r in audit.query(a.store.db, who="sftp:his-brink")]
    assert record["result"] == "replaced" and "of 5 bytes replaced" in record["detail"]
    assert "referral" not in record["detail"]
    (line,) = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert "of 5 bytes replaced" in line and "referral" not in line


def test_purged_messages_leave_the_outbox(nodes):
    """The retention purge takes a message's outbox row with it."""
    a, b = nodes
    row = answer(a.store, 1, "ZD2_ANTW")
    a.outbox.deliver(row, a.store.payload(row, "out"))
    a.store.purge([(f"#{row['id']}", "test", time.time())], "test", time.time())
    assert b.listing() == {}
    assert a.store.db.value("SELECT count(*) FROM outbox") == 0


def test_two_nodes_listing_one_message_at_once_agree_on_its_name(pg_backend, tmp_path):
    """PostgreSQL: while node A's transaction listing a message is not committed, node B
    lists the same message (two pushes of one answer); B waits, then takes A's name —
    not a second name, not an error."""
    from gateway.spool import outboxes
    a, b = (Node(pg_backend, tmp_path, name) for name in "ab")
    try:
        row = answer(a.store, 1, "ZD1_ANTW")
        found = []
        with a.store.db.transaction():
            a.store.db.execute("INSERT INTO outbox (account, file_name, message_id, size, "
                               "listed_at) VALUES ('his-brink', 'ZD1_ANTW.hl7', ?, 5, 0)",
                               (row["id"],))
            racing = threading.Thread(target=lambda: found.append(outboxes.add(
                b.store.db, "his-brink", row["id"], 5, "ZD1_ANTW", "hl7", 1.0)))
            racing.start()
            time.sleep(0.5)
            assert racing.is_alive()                # held by A's uncommitted row
        racing.join(10)
        assert found == ["ZD1_ANTW.hl7"] and list(b.listing()) == ["ZD1_ANTW.hl7"]
    finally:
        a.store.close()
        b.store.close()
