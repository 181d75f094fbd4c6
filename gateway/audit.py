"""The NEN 7513 audit log: who did what with which patient's data, when, and the result.

Records live in the store's database (table ``audit``) and are appended in
the same transaction as the change they describe, so a message is never stored,
delivered or purged without its record. Each record holds: the actor (certificate
subject, SFTP account, ``cli:<user>`` or a gateway task), on whose behalf (the
mandating referrer's AGB code), the action, the message id and ZD number, the
patient as a keyed hash of the BSN (``Keyring.patient``; never the BSN), the time
(UTC), the result and a detail without patient data.

Records are hash-chained: ``hash = HMAC(audit key, previous hash + record)``, so
``verify`` finds an edited, removed or reordered record (and nobody without the key
can write a new chain). Retention removes the oldest records and keeps the last
removed one's sequence number and hash as the anchor the chain starts from.
Appending takes the database's ``audit`` lock first (on PostgreSQL an advisory
lock held to the commit), so concurrent writers — several nodes — make one chain.
"""

import datetime as dt
import json
from dataclasses import dataclass

from gateway.document import ANSWER_SUFFIX, answer_number
from gateway.keys import Keyring

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq {BIGINT} PRIMARY KEY,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    behalf TEXT NOT NULL,
    action TEXT NOT NULL,
    message_id {BIGINT},
    zd_number TEXT NOT NULL,
    patient TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_zd ON audit (zd_number);
CREATE INDEX IF NOT EXISTS audit_patient ON audit (patient);
CREATE INDEX IF NOT EXISTS audit_who ON audit (who);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq {BIGINT} NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_anchor VALUES (1, 0, '') ON CONFLICT DO NOTHING;
"""
FIELDS = ("at", "who", "behalf", "action", "message_id", "zd_number", "patient", "result", "detail")
INSERT = (f"INSERT INTO audit (seq, {', '.join(FIELDS)}, prev, hash) "
          f"VALUES ({', '.join('?' * (len(FIELDS) + 3))})")


@dataclass(frozen=True)
class Event:
    """One thing to record; ``at`` is filled in when it is appended."""

    who: str
    action: str
    result: str = "ok"
    message_id: int | None = None
    zd_number: str = ""
    patient: str = ""
    behalf: str = ""
    detail: str = ""


def about(row, who: str, action: str, result: str = "ok", detail: str = "") -> Event:
    """An event about the stored message ``row``."""
    return Event(who, action, result, row["id"], row["zd_number"], row["patient"],
                 row["sender_agb"], detail or "")


def append(db, ring: Keyring, events, now: float) -> None:
    """Append ``events`` to the chain; call inside the caller's write transaction, as
    late in it as can be (the lock is held until the commit)."""
    if not events:
        return
    db.lock("audit")
    seq, previous = head(db)
    at = _iso(now)
    records = []
    for event in events:
        seq += 1
        values = (at, event.who, event.behalf, event.action, event.message_id, event.zd_number,
                  event.patient, event.result, event.detail[:300])
        digest = ring.chain(previous, _canonical(seq, values))
        records.append((seq, *values, previous, digest))
        previous = digest
    db.executemany(INSERT, records)


def head(db) -> tuple[int, str]:
    """(seq, hash) of the chain's last record (the anchor when there is none)."""
    found = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone() or \
        db.execute("SELECT seq, hash FROM audit_anchor").fetchone()
    return found[0], found[1]


def verify(db, ring: Keyring) -> tuple[int, str | None, tuple[int, str]]:
    """Check the whole chain: (records checked, the first problem or None, (head seq, hash))."""
    seq, previous = db.execute("SELECT seq, hash FROM audit_anchor").fetchone()
    checked = 0
    for row in _records(db, -1):
        expected = seq + 1
        if row[0] != expected:
            return checked, f"record {expected} is missing (the next one is {row[0]})", (seq, previous)
        if row[-2] != previous:
            return checked, (f"record {expected} does not follow record {seq} "
                             "(a record was removed or reordered)"), (seq, previous)
        if ring.chain(previous, _canonical(row[0], tuple(row[1:-2]))) != row[-1]:
            return checked, f"record {expected} was changed after it was written", (seq, previous)
        seq, previous, checked = expected, row[-1], checked + 1
    return checked, None, (seq, previous)


def _records(db, after: int, page: int = 5000):
    """Every record after ``after`` in order, a page at a time (memory stays bounded)."""
    while True:
        rows = db.execute(f"SELECT seq, {', '.join(FIELDS)}, prev, hash FROM audit WHERE seq > ? "
                          "ORDER BY seq LIMIT ?", (after, page)).fetchall()
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1][0]


def query(db, zd_number: str | None = None, patient: str | None = None,
          who: str | None = None, start: float | None = None, end: float | None = None,
          limit: int = 10000) -> list[dict]:
    """Records matching every given condition, oldest first. A ZD number also finds its
    answer (``_ANTW``)."""
    conditions, values = [], []
    if zd_number:
        conditions.append("zd_number IN (?, ?)")
        values += [zd_number, answer_number(zd_number.removesuffix(ANSWER_SUFFIX))]
    if patient:
        conditions.append("patient = ?")
        values.append(patient)
    if who:
        conditions.append("who = ?")
        values.append(who)
    if start is not None:
        conditions.append("at >= ?")
        values.append(_iso(start))
    if end is not None:
        conditions.append("at < ?")
        values.append(_iso(end))
    where = " AND ".join(conditions) or "1 = 1"
    rows = db.execute(f"SELECT seq, {', '.join(FIELDS)} FROM audit WHERE {where} ORDER BY seq "
                      "LIMIT ?", (*values, limit))
    return [dict(zip(("seq",) + FIELDS, row)) for row in rows]


def prune(db, before: float) -> int:
    """Remove records older than ``before`` (inside a write transaction), moving the anchor
    to the last one removed; return how many."""
    db.lock("audit")
    last = db.execute("SELECT seq, hash FROM audit WHERE at < ? ORDER BY seq DESC LIMIT 1",
                      (_iso(before),)).fetchone()
    if last is None:
        return 0
    removed = db.execute("DELETE FROM audit WHERE seq <= ?", (last[0],)).rowcount
    db.execute("UPDATE audit_anchor SET seq = ?, hash = ?", (last[0], last[1]))
    return removed


_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _canonical(seq: int, values: tuple) -> bytes:
    return _CANONICAL.encode([seq, *values]).encode()


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="microseconds")
