"""The NEN 7513 audit log: what it records, and a chain that names the first edited,
removed or reordered record."""

import sqlite3
import time

import pytest

from gateway import audit, keys, operations, routes
from gateway.intake import Envelope, Intake
from tests.helpers import daemon
from tests.helpers.fakes import RING, ROOT, numbered_referral

SAMPLES = ROOT / "gateway" / "routes" / "samples"
HIS = Envelope("his-brink", "mllp", frozenset({"01234567"}))
BSN = "123456782"        # the fixture patient's


@pytest.fixture
def store(tmp_path, backend):
    store = backend.store(tmp_path, time.time, RING)
    intake = Intake(store, routes.load(SAMPLES), 1 << 24)
    for index in range(1, 4):
        intake.accept(numbered_referral(index), HIS)
    store.transition(1, "delivered", "https:zis-eemland", "pickup confirmed", action="pickup")
    operations.resend(intake, "ZD500000001", "cli:tester")
    return store


def test_records_say_who_for_whom_what_which_patient_and_result(store):
    """Receipt, conversion, routing, pickup and resend, each with actor, mandating AGB,
    message, ZD number, the patient's keyed hash (never the BSN), time and result."""
    records = audit.query(store.db, zd_number="ZD500000001")
    assert [(r["who"], r["action"], r["result"]) for r in records] == [
        ("mllp:his-brink", "receive", "ok"), ("mllp:his-brink", "convert", "ok"),
        ("mllp:his-brink", "route", "ok"), ("https:zis-eemland", "pickup", "ok"),
        ("cli:tester", "resend", "ok")]
    assert {r["behalf"] for r in records} == {"01234567"}
    assert {r["patient"] for r in records} == {RING.patient(BSN)} and BSN not in str(records)
    assert {r["message_id"] for r in records} == {1}
    assert audit.query(store.db, patient=RING.patient("12345678" + "2")) == \
        audit.query(store.db, patient=RING.patient(BSN))
    assert len(audit.query(store.db, patient=RING.patient(BSN))) == 11
    assert len(audit.query(store.db, who="cli:tester")) == 1


def test_an_intact_chain_verifies(store):
    checked, problem, (seq, head) = audit.verify(store.db, RING)
    assert (checked, problem, seq) == (11, None, 11) and len(head) == 64


@pytest.mark.parametrize("damage, found", [
    ("UPDATE audit SET detail = 'nothing to see' WHERE seq = 4", "record 4 was changed"),
    ("UPDATE audit SET who = 'someone else' WHERE seq = 11", "record 11 was changed"),
    ("DELETE FROM audit WHERE seq = 6", "record 6 is missing"),
    ("UPDATE audit SET seq = seq + 100 WHERE seq IN (5, 6); "
     "UPDATE audit SET seq = 111 - seq WHERE seq > 100", "record 5 does not follow record 4"),
    ("DELETE FROM audit WHERE seq = 1", "record 1 is missing"),
])
def test_a_damaged_chain_names_the_first_bad_record(store, damage, found):
    """An edited record, a removed one and two swapped ones are each found and named."""
    for statement in damage.split("; "):
        store.db.execute(statement)
    checked, problem, _ = audit.verify(store.db, RING)
    assert problem.startswith(found)


def test_a_rewritten_chain_without_the_key_fails(store):
    """Someone who edits a record and recomputes every hash without the audit key is caught."""
    forger = keys.Keyring(RING.keys, RING.current, b"\0" * 32)
    store.db.execute("UPDATE audit SET result = 'refused' WHERE seq = 3")
    previous = ""
    for row in store.db.execute("SELECT * FROM audit ORDER BY seq").fetchall():
        values = tuple(row[f] for f in audit.FIELDS)
        digest = forger.chain(previous, audit._canonical(row["seq"], values))
        store.db.execute("UPDATE audit SET prev = ?, hash = ? WHERE seq = ?",
                         (previous, digest, row["seq"]))
        previous = digest
    assert audit.verify(store.db, RING)[1] == "record 1 was changed after it was written"


def test_pruning_old_records_keeps_the_chain_verifiable(store):
    """Records past their retention go; the chain starts from the last one removed."""
    removed = store.prune_audit(time.time() + 1, "retention")
    assert removed == 11
    assert audit.verify(store.db, RING)[:2] == (1, None)      # the prune's own record
    assert audit.query(store.db, who="retention")[0]["action"] == "audit-prune"
    store.db.execute("DELETE FROM audit")
    store.record([audit.Event("x", "y")])
    store.db.execute("UPDATE audit_anchor SET hash = 'other'")
    assert "does not follow" in audit.verify(store.db, RING)[1]


def test_cli_verify_and_query(tmp_path):
    """gatewayctl audit verify says ok or names the record (exit 65); audit query by BSN
    finds the administrator's view of the message, and the query itself is recorded."""
    made = daemon.init(tmp_path / "gw")
    daemon.ctl(made, "submit", str(ROOT / "fixtures" / "medvri" / "referral-crlf.edi"))
    daemon.ctl(made, "status", "ZD100200300")
    assert daemon.ctl(made, "audit", "verify").stdout.startswith(b"ok: 4 records, chain intact")
    records = daemon.ctl_json(made, "audit", "query", "--patient", BSN, "--from", "2020-01-01")
    assert [r["action"] for r in records] == ["receive", "convert", "route", "view"]
    assert daemon.ctl_json(made, "audit", "query", "--zd", "ZD100200300", "--to", "2020-01-01") == []
    db = sqlite3.connect(tmp_path / "gw" / "spool" / "gateway.db")
    db.execute("UPDATE audit SET at = '2020-01-01T00:00:00.000000+00:00' WHERE seq = 2")
    db.commit()
    result = daemon.ctl(made, "audit", "verify", check=False)
    assert result.returncode == 65
    assert result.stderr.decode().strip() == ("gatewayctl: error E-AUDIT-CHAIN: record 2 was changed "
                                              "after it was written (1 records before it are intact)")
    assert "audit-query" in [r["action"] for r in daemon.ctl_json(made, "audit", "query", "--who",
                                                                   records[-1]["who"])]
