"""gatewayctl store migrate: an SQLite store copied whole into an empty PostgreSQL
database, resumable after a SIGKILL, verified, and a gatewayd that runs on the copy."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway import audit, retention, routes
from gateway.cli.common import actor
from gateway.intake import Envelope, Intake
from gateway.spool import db as database
from gateway.spool import inforce, migrate, outboxes, payloads
from gateway.spool.store import Store
from tests.helpers import daemon
from tests.helpers.fakes import RING, ROOT, numbered_referral

SAMPLES = ROOT / "gateway" / "routes" / "samples"
HIS = Envelope("his-brink", "mllp", frozenset({"01234567"}))


def filled(folder: Path) -> Store:
    """An SQLite store with messages, history, a purge, route changes, a notification
    cursor, an SFTP outbox, a damaged payload (quarantined when delivered) and an audit chain."""
    clock = [1_800_000_000.0]
    store = Store(folder, lambda: clock[0], RING)
    intake = Intake(store, routes.load(SAMPLES), 1 << 24)
    for index in range(1, 31):
        intake.accept(numbered_referral(index), HIS)
    store.transition(1, "delivered", "https:zis-eemland", "pickup confirmed", action="pickup")
    with store.db.transaction():
        inforce.record_changes(store.db, RING, "cli:tester",
                               ["institution 06005678: format xml -> hl7"], clock[0])
    store.purge([("ZD500000002", "referral: 180 days", clock[0])], retention.ACTOR, clock[0])
    store.db.execute("INSERT INTO notify_cursor VALUES (1, 5)")
    for message_id in (4, 5):                          # two files in an SFTP outbox
        outboxes.add(store.db, "his-brink", message_id, 10, "ZD9_ANTW", "edi", clock[0])
    sealed = bytearray(payloads.sealed(store.db, 3, "out"))
    sealed[-5] ^= 1
    store.db.execute("UPDATE payloads SET sealed = ? WHERE message_id = 3 AND which = 'out'",
                     (bytes(sealed),))
    return store


def test_a_migration_killed_half_way_resumes_and_verifies(postgres, tmp_path):
    """Killed after a few batches, run again it resumes (no row twice) and ends with every
    table's count, the audit chain and every payload as in the source; a damaged part
    stays damaged and is named; the copy works as a store (ids continue, dedup holds)."""
    source = filled(tmp_path / "spool")
    url = postgres.url(tmp_path / "pg")
    child = [sys.executable, "-m", "tests.helpers.migrate_child", str(tmp_path / "spool"), url]
    first = subprocess.run([*child, "4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert first.stdout.splitlines()[-1] == "messages: 28 of 29 copied"
    second = subprocess.run([*child, "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[0] == "resuming a migration stopped half-way" and lines[1].startswith(
        "messages: 29 of 29") and "except 1 that did not open in the source either" in lines[-1]
    target = database.connect(url)
    assert "migrate_progress" not in target.tables()
    for table in migrate.KEYED | dict.fromkeys(migrate.SMALL):
        assert target.value(f"SELECT count(*) FROM {table}") == \
            source.db.value(f"SELECT count(*) FROM {table}"), table
    assert audit.verify(target, RING) == audit.verify(source.db, RING)
    assert sorted(row[0] for row in target.execute("SELECT file_name FROM outbox")) == \
        ["ZD9_ANTW-2.edi", "ZD9_ANTW.edi"]
    copy = Intake(Store(tmp_path, time.time, RING, url=url), routes.load(SAMPLES), 1 << 24)
    (again,) = copy.accept(numbered_referral(4), HIS)
    (new,) = copy.accept(numbered_referral(99), HIS)
    assert (again.id, again.duplicate, new.id) == (4, True, 31)
    assert [h["state"] for h in copy.store.history(5)] == ["received", "ready"]
    assert copy.store.purged("ZD500000002")["rule"] == "referral: 180 days"
    assert copy.store.purged("ZD500000002", "his-brink")["rule"] == "referral: 180 days"


def test_migrate_refuses_a_database_holding_a_store(postgres, tmp_path):
    """A target that holds messages already (and no migration under way) is refused."""
    filled(tmp_path / "spool")
    url = postgres.url(tmp_path / "pg")
    Intake(Store(tmp_path / "other", time.time, RING, url=url), routes.load(SAMPLES),
           1 << 24).accept(numbered_referral(1), HIS)
    source = Store(tmp_path / "spool", time.time, RING)
    try:
        migrate.run(source.db, database.connect(url), RING, lambda line: None)
    except migrate.MigrateProblem as exc:
        assert "holds a store already" in str(exc)
    else:
        raise AssertionError("migrated into a database holding a store")


def test_gatewayctl_migrate_then_gatewayd_on_postgresql(postgres, tmp_path):
    """gatewayctl store migrate copies a running setup's store (gatewayd stopped); with
    store.url set, gatewayctl and gatewayd use the copy: status, verify, new messages."""
    made = daemon.init(tmp_path / "gw")
    for index in (1, 2):
        daemon.ctl(made, "submit", "-", stdin=numbered_referral(index))
    url = postgres.url(tmp_path / "pg")
    result = daemon.ctl_json(made, "store", "migrate", "--to", url)
    assert result["copied"]["messages"] == 2 and result["unreadable"] == []
    daemon.configure(made, store__url=f'"{url}"')
    assert daemon.ctl_json(made, "store", "verify")["problems"] == []
    refused = daemon.ctl(made, "backup", str(tmp_path / "b"), check=False)
    assert refused.returncode != 0 and b"pg_dump" in refused.stderr
    gatewayd = daemon.start(made, tmp_path / "gatewayd.log")
    try:
        assert json.loads(daemon.ctl(made, "submit", "-", "--json",
                                     stdin=numbered_referral(3)).stdout)["id"] == 3
    finally:
        gatewayd.kill()
        gatewayd.wait()
    assert "store-migrate" in [r["action"] for r in daemon.ctl_json(
        made, "audit", "query", "--who", actor())]
