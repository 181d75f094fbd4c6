"""Upgrading a version 1 spool (sealed payload files, made by gatewayd before payloads
moved into the database; fixtures/spool-v1.tar.gz): every part moved unchanged and
opening, resumable after a kill at any point, on first start of gatewayd or by
``gatewayctl store upgrade``."""

import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from gateway import audit, codecs, keys
from gateway.spool import db as database
from gateway.spool import payloads, schema
from gateway.spool.store import Store
from tests.helpers import daemon
from tests.helpers.fakes import ROOT
from tests.helpers.upgrade_child import V1_RING

FIXTURE = ROOT / "fixtures" / "spool-v1.tar.gz"
DAMAGED = "ZD900000031"          # its converted part had a bit flipped on disk under version 1


def extract(folder: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(folder, filter="data")
    return folder / "spool"


def stored(spool: Path) -> dict:
    """(message id, which) -> sealed bytes of every payload in the store."""
    db = sqlite3.connect(spool / "gateway.db")
    try:
        return {(m, w): s for m, w, s in db.execute(
            "SELECT message_id, which, sealed FROM payloads")}
    finally:
        db.close()


def test_a_version_1_spool_is_upgraded_when_opened(tmp_path):
    """Opening a version 1 spool moves every part into the database: each raw input decodes
    to its row's ZD number, each converted part to the same, the damaged part is named and
    still refuses to open, the audit chain holds, and the payload folder is gone."""
    spool = extract(tmp_path)
    lines = []
    store = Store(spool, time.time, V1_RING, progress=lines.append)
    assert schema.version(store.db) == 2 and not (spool / "payloads").exists()
    assert [r[0] for r in store.db.execute("SELECT version FROM schema_version")] == [1, 2]
    assert lines[0].startswith("upgrading the store") and "version 2" in lines[-1]
    assert any("except 1 that did not open from their files either" in line for line in lines)
    rows = store.db.execute("SELECT * FROM messages ORDER BY id").fetchall()
    assert len(rows) == 30
    for row in rows:
        raw = store.payload(row, "raw")
        if row["state"] == "rejected":
            assert raw == b"MSH|^~\\&|broken"
            continue
        doc = codecs.get(codecs.sniff(raw)).decode(raw)[row["part"]]
        assert doc.zd_number == row["zd_number"]
        if row["zd_number"] == DAMAGED:
            with pytest.raises(payloads.PayloadCorrupt, match="authentication tag"):
                store.payload(row, "out")
        elif row["state"] != "fallback":
            out = store.payload(row, "out")
            assert codecs.get(row["format"]).decode(out)[0].zd_number == row["zd_number"]
    assert len({row["raw_owner"] for row in rows}) == 29          # one interchange of two
    assert audit.verify(store.db, V1_RING)[1] is None
    # k1 sealed messages 2-21 (19 inputs, 19 converted; message 1 was purged before),
    # k2 messages 22-31 (10 inputs, 9 converted: the one in fallback has none)
    assert store.sealed_keys() == {"k1": 38, "k2": 19}


def test_an_upgrade_killed_at_any_point_resumes_to_the_same_result(tmp_path):
    """Killed after a few batches, after the last batch, and after the commit but before
    the files are removed, the upgrade picks up where it stopped; the result is the same,
    byte for byte, as an upgrade that ran straight through."""
    reference = extract(tmp_path / "straight")
    Store(reference, time.time, V1_RING).close()
    spool = extract(tmp_path / "killed")

    def child(kill_at: int) -> list[str]:
        result = subprocess.run([sys.executable, "-m", "tests.helpers.upgrade_child", str(spool),
                                 str(kill_at), "4"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == -signal.SIGKILL, result.stderr
        return result.stdout.splitlines()

    db = database.SQLite(spool / "gateway.db", readonly=True)
    lines = child(kill_at=3)                 # two batches of 4 messages done
    assert lines[-1].startswith("moved the payloads of 8 of 30 messages")
    assert schema.version(db) == 1 and 0 < len(stored(spool)) < len(stored(reference))
    lines = child(kill_at=7)                 # resumes at message 9; all moved, not committed
    assert lines[1].startswith("moved the payloads of 12 of 30 messages")
    assert lines[-1].startswith("moved the payloads of 30 of 30")
    assert schema.version(db) == 1 and (spool / "payloads").exists()
    lines = child(kill_at=4)                 # verified and committed, folder not yet removed
    assert lines[-1] == "store upgraded to version 2; removing the payload folder"
    assert schema.version(db) == 2 and (spool / "payloads").exists()
    db.close()
    Store(spool, time.time, V1_RING).close()
    assert not (spool / "payloads").exists()
    assert stored(spool) == stored(reference)


def _v1_setup(tmp_path: Path) -> dict:
    """A setup from gatewayctl init whose spool and key file are the version 1 fixture's."""
    made = daemon.init(tmp_path / "gw")
    spool = Path(made["spool"])
    for path in spool.iterdir():
        path.unlink()
    spool.rmdir()
    extract(spool.parent)
    keys.save(V1_RING, Path(made["keys"]))
    return made


def test_gatewayctl_store_upgrade_reports_and_then_has_nothing_to_do(tmp_path):
    """store upgrade moves the payloads, saying how far it is; run again it says the store
    is at version 2 already."""
    made = _v1_setup(tmp_path)
    text = daemon.ctl(made, "store", "upgrade").stdout.decode()
    assert "moved the payloads of 30 of 30 messages" in text
    assert text.rstrip().endswith("the store is at version 2 now")
    assert daemon.ctl_json(made, "store", "upgrade") == {"version": 2, "upgraded": False}
    assert daemon.ctl(made, "show", "5", "--converted").stdout.startswith(b"<?xml")


def test_gatewayd_upgrades_a_version_1_spool_at_start(tmp_path):
    """gatewayd started on a version 1 spool upgrades it before it listens, and logs so."""
    made = _v1_setup(tmp_path)
    log = tmp_path / "gatewayd.log"
    process = daemon.start(made, log)
    try:
        text = log.read_text()
        assert "store: moved the payloads of 30 of 30 messages" in text
        assert "store: store upgraded to version 2" in text
        assert daemon.ctl_json(made, "store", "upgrade")["upgraded"] is False
    finally:
        process.terminate()
        process.wait(timeout=30)
