"""The store on both backends: concurrent writers, key census, the database seam, and
PostgreSQL outages (connections killed) with nothing acknowledged lost."""

import re
import threading
import time
from pathlib import Path

import pytest

from gateway import audit, config, keys, routes
from gateway.errors import ConfigError
from gateway.intake import Envelope, Intake
from gateway.spool import db as database
from gateway.spool.store import Store, StoreUnavailable
from tests.helpers.fakes import RING, ROOT, numbered_referral

SAMPLES = ROOT / "gateway" / "routes" / "samples"
HIS = Envelope("his-brink", "mllp", frozenset({"01234567"}))


def writer(backend, folder: Path) -> Intake:
    return Intake(backend.store(folder, time.time, RING, other_thread=True),
                  routes.load(SAMPLES), 1 << 24)


def test_two_writers_racing_on_the_same_resends_store_each_once(backend, tmp_path):
    """Two writers (own connections, own threads) send the same 60 messages in batches of
    8, in opposite orders, twice over: no batch fails, every message is stored once, both
    writers' receipts for a control id name the same message, and the audit chain is one."""
    data = {f"T-{i:06d}": numbered_referral(i) for i in range(1, 61)}
    first = writer(backend, tmp_path)            # makes the store
    intakes = [first, writer(backend, tmp_path)]
    receipts: list[dict] = [{}, {}]
    failures: list = []

    def send(number: int, order: list[str]) -> None:
        try:
            for _ in range(2):
                for start in range(0, len(order), 8):
                    chunk = order[start:start + 8]
                    outcomes = intakes[number].accept_many([(data[c], HIS) for c in chunk])
                    for control_id, outcome in zip(chunk, outcomes):
                        assert isinstance(outcome, list), outcome
                        receipts[number].setdefault(control_id, set()).add(outcome[0].id)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
    order = sorted(data)
    threads = [threading.Thread(target=send, args=(0, order)),
               threading.Thread(target=send, args=(1, order[::-1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    store = first.store
    counts = dict(store.db.execute("SELECT control_id, count(*) FROM messages GROUP BY control_id"))
    assert counts == {control_id: 1 for control_id in data}
    for control_id in data:
        assert receipts[0][control_id] == receipts[1][control_id] and \
            len(receipts[0][control_id]) == 1
    checked, problem, _ = audit.verify(store.db, RING)
    assert problem is None and checked == 60 * 3      # receive, convert, route per message


def test_key_census_rotation_and_retirement(backend, tmp_path):
    """Parts say which key seals them; after a rotation new parts use the new key, a reseal
    moves every part to it, and the old key can then be retired; everything still opens."""
    intake = writer(backend, tmp_path)
    intake.accept(numbered_referral(1), HIS)
    assert intake.store.sealed_keys() == {"k1": 2}
    ring = keys.rotated(RING)
    rotated = Intake(backend.store(tmp_path, time.time, ring), routes.load(SAMPLES), 1 << 24)
    rotated.accept(numbered_referral(2), HIS)
    assert rotated.store.sealed_keys() == {"k1": 2, "k2": 2}
    assert rotated.store.reseal() == (2, 0)
    assert rotated.store.sealed_keys() == {"k2": 4}
    rotated.store.forget_key("k1", "cli:tester")
    store = backend.store(tmp_path, time.time, keys.without(ring, "k1"))
    assert [store.payload(row, "raw")[:3] for row in store.listing()] == [b"MSH", b"MSH"]


def test_rows_answer_by_name_and_position_and_placeholders_work(backend, tmp_path):
    """The seam gives rows by column name and position on both backends, ``?`` placeholders
    and literal ``%`` side by side, and the executemany row count."""
    store = backend.store(tmp_path, time.time, RING)
    db = store.db
    with db.transaction():
        assert db.executemany("INSERT INTO route_changes (at, actor, change) VALUES (?, ?, ?)",
                              [(1.5, "a", "50% more"), (2.5, "b", "x")]) == 2
    row = db.one("SELECT actor, change FROM route_changes WHERE change LIKE '%more' AND at > ?",
                 (1,))
    assert (row["actor"], row[1], dict(row)) == ("a", "50% more", {"actor": "a",
                                                                    "change": "50% more"})
    assert db.value(db.dialect.integrity) == "ok"


@pytest.mark.parametrize("url, ok", [("", True), ("postgresql://gw@db:5432/gatewayd", True),
                                     ("postgres://db/gw", True), ("mysql://db/gw", False),
                                     ("/var/lib/gatewayd.db", False)])
def test_store_url_is_empty_or_postgresql(tmp_path, url, ok):
    """store.url takes a postgresql:// URL or nothing (SQLite in paths.spool)."""
    path = tmp_path / "gatewayd.toml"
    path.write_text(f'[store]\nurl = "{url}"\n')
    if ok:
        assert config.load(path).store_url == url
    else:
        with pytest.raises(ConfigError, match="store.url must be empty or start with"):
            config.load(path)


def test_no_sql_outside_the_store():
    """Every SQL statement runs behind the store: in gateway/spool or gateway/audit.py."""
    allowed = {"audit.py"}
    found = []
    for path in (ROOT / "gateway").rglob("*.py"):
        if "spool" in path.parts or path.name in allowed:
            continue
        text = path.read_text()
        if re.search(r"\.execute(many|script)?\(|sqlite3|psycopg", text):
            found.append(str(path.relative_to(ROOT)))
    assert found == []


def test_a_url_shows_without_its_password():
    assert database.where("postgresql://gw:secret@db:5432/gatewayd") == \
        "postgresql://gw@db:5432/gatewayd"


def _kill_connections(postgres) -> int:
    return len(postgres.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "datname = current_database() AND application_name = 'gatewayd'"))


def test_killed_connections_refuse_then_reconnect_alone(postgres, tmp_path):
    """With its connection killed (pg_terminate_backend) the writer stores nothing and says
    so (StoreUnavailable, a StoreError: no ACK), nothing half-done remains; the next batch
    reconnects by itself and stores, and everything acknowledged before is still there."""
    intake = Intake(Store(tmp_path, time.time, RING, url=postgres.url(tmp_path)),
                    routes.load(SAMPLES), 1 << 24)
    acked = [intake.accept(numbered_referral(i), HIS)[0].id for i in range(1, 4)]
    assert _kill_connections(postgres) >= 1
    with pytest.raises(StoreUnavailable, match="PostgreSQL"):
        intake.accept(numbered_referral(4), HIS)
    (later,) = intake.accept(numbered_referral(4), HIS)           # a resend, reconnected
    assert later.duplicate is False and intake.store.problem() is None
    assert sorted(row["id"] for row in intake.store.listing()) == sorted(acked + [later.id])
    assert audit.verify(intake.store.db, RING)[1] is None


def test_an_unreachable_server_is_named(tmp_path):
    """A store URL nobody answers at fails at once with a one-line StoreUnavailable naming
    the server (without a password)."""
    with pytest.raises(StoreUnavailable) as caught:
        database.connect("postgresql://gw:secret@127.0.0.1:9/gatewayd")
    text = str(caught.value)
    assert "PostgreSQL at postgresql://gw@127.0.0.1:9/gatewayd cannot be reached" in text
    assert "secret" not in text and "\n" not in text


def test_a_node_opens_a_complete_store_while_another_writes(postgres, tmp_path):
    """A node starting while another node is in the middle of a write transaction opens
    the store without waiting for it: nothing of the schema is made again (CREATE INDEX
    IF NOT EXISTS would lock the table, and could deadlock with the writer)."""
    url = postgres.url(tmp_path)
    Store(tmp_path, time.time, RING, url=url).close()          # the first node made it
    import psycopg
    with psycopg.connect(url) as writer:                          # a transaction, left open
        writer.execute("LOCK TABLE messages, audit IN ROW EXCLUSIVE MODE")
        opened: list = []
        starting = threading.Thread(target=lambda: opened.append(
            Store(tmp_path, time.time, RING, url=url)))
        starting.start()
        starting.join(timeout=10)
        waited = starting.is_alive()
        writer.rollback()
    starting.join()
    opened[0].close()
    assert not waited, "opening the store waited for another node's transaction"
