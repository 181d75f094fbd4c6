"""The durable store: SQLite metadata and state, sealed payload files for content.

SQLite runs in WAL mode with ``synchronous=FULL`` and one writer; each change
is one ``BEGIN IMMEDIATE`` transaction that also appends to the message's
history (time, state, actor, reason) and to the audit log (``gateway.audit``).
Payload files are sealed with the keyring, written and fsynced before the row
that names them is committed, and a caller gets its receipt only after that
commit. Message ids come from a counter in the same transaction (never reused,
even after a purge), so a payload can be sealed to its message id before the
row exists. The database holds identifiers (ZD number, AGB codes, control ids,
the patient's keyed hash), states and times — never a BSN, a name or letter
text; those live only in the sealed payload files.
"""

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gateway import audit, keys
from gateway.errors import GatewayError
from gateway.keys import Keyring, KeyProblem
from gateway.spool import payloads, states

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL,
    control_id TEXT,
    part INTEGER NOT NULL DEFAULT 0,
    content_sha256 TEXT NOT NULL,
    zd_number TEXT NOT NULL DEFAULT '',
    case_zd TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    sender_agb TEXT NOT NULL DEFAULT '',
    recipient_agb TEXT NOT NULL DEFAULT '',
    in_reply_to TEXT,
    sent_at TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    format TEXT NOT NULL DEFAULT '',
    delivery TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    reason TEXT,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    raw_name TEXT NOT NULL,
    raw_offset INTEGER NOT NULL DEFAULT 0,
    raw_length INTEGER NOT NULL DEFAULT 0,
    raw_sha256 TEXT NOT NULL,
    raw_owner INTEGER NOT NULL,
    patient TEXT NOT NULL DEFAULT '',
    out_name TEXT,
    out_offset INTEGER,
    out_length INTEGER,
    out_sha256 TEXT,
    UNIQUE (identity, control_id)
);
CREATE INDEX IF NOT EXISTS messages_zd ON messages (zd_number);
CREATE INDEX IF NOT EXISTS messages_case ON messages (case_zd);
CREATE INDEX IF NOT EXISTS messages_queue ON messages (state, destination);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS messages_raw_name ON messages (raw_name);
CREATE INDEX IF NOT EXISTS messages_out_name ON messages (out_name);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS history_message ON history (message_id);
CREATE TABLE IF NOT EXISTS route_changes (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    change TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('message_id', 0);
CREATE TABLE IF NOT EXISTS key_checks (key_id TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS purged (
    zd_number TEXT PRIMARY KEY,
    purged_at REAL NOT NULL,
    rule TEXT NOT NULL,
    messages INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purge_counts (
    month TEXT NOT NULL,
    kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    messages INTEGER NOT NULL,
    PRIMARY KEY (month, kind, destination)
);
"""
# What each state a message moves to means in the audit log (an operation may say more).
ACTIONS = {"ready": "route", "outbound": "route", "fallback": "route", "deferred": "deliver",
           "delivered": "deliver", "held": "hold", "expired": "deliver", "cancelled": "cancel",
           "rejected": "receive", "received": "receive"}
RESULTS = {"fallback": "fallback", "deferred": "failed", "expired": "expired", "rejected": "rejected"}
COLUMNS = ("identity", "control_id", "part", "content_sha256", "zd_number", "case_zd", "kind",
           "sender_agb",
           "recipient_agb", "in_reply_to", "sent_at", "destination", "format", "delivery",
           "state", "reason", "raw_name", "raw_offset", "raw_length", "raw_sha256", "raw_owner",
           "patient", "out_name",
           "out_offset", "out_length", "out_sha256")


class StateError(GatewayError):
    code = "E-STATE"


@dataclass(frozen=True)
class Entry:
    """A message to store under ``id``: its metadata (see COLUMNS), the states it passed
    through on the way in (recorded as history in the same transaction), who brought it,
    and its audit events."""

    id: int
    values: dict
    path: tuple[str, ...]
    actor: str
    events: tuple = ()


class Store:
    """One spool folder: ``gateway.db`` and ``payloads/``, sealed with ``ring``. Pass the
    clock in (seconds); ``other_thread`` when one thread opens it for another to use."""

    def __init__(self, root: Path, clock: Callable[[], float], ring: Keyring,
                 other_thread: bool = False):
        self.root = Path(root)
        self.payload_root = self.root / "payloads"
        self.payload_root.mkdir(parents=True, exist_ok=True)
        self.clock, self.ring = clock, ring
        self.db = sqlite3.connect(self.root / "gateway.db", isolation_level=None, timeout=30,
                                  check_same_thread=not other_thread)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")    # before the first table: purge frees space
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA + audit.SCHEMA)
        self.check_keys()
        payloads.prepare(self.payload_root)
        payloads.sweep(self.payload_root)

    def check_keys(self) -> None:
        """Refuse a key file that lacks a key this store used, or holds a different one."""
        known = dict(self.db.execute("SELECT key_id, sealed FROM key_checks").fetchall())
        for key_id, sealed in known.items():
            if key_id not in self.ring.keys:
                raise KeyProblem(f"the key file lacks key {key_id!r}, which {self.root} uses")
            if not self.ring.fits(key_id, sealed):
                raise KeyProblem(f"key {key_id!r} in the key file is not the key {self.root} "
                                 "was sealed with (wrong key file?)")
        new = [k for k in self.ring.keys if k not in known]
        if new:
            with self._transaction():
                self.db.executemany("INSERT INTO key_checks VALUES (?, ?)",
                                    [(k, self.ring.check_value(k)) for k in new])

    def check_current(self) -> None:
        """Refuse to seal with a key that was retired meanwhile (the daemon was not reloaded
        after a rotation): what it sealed could not be opened after a restart."""
        if self.db.execute("SELECT 1 FROM key_checks WHERE key_id = ?",
                           (self.ring.current,)).fetchone() is None:
            raise KeyProblem(f"key {self.ring.current!r} was retired; reload gatewayd to take the "
                             "key file's current key")

    def close(self) -> None:
        self.db.close()

    def write_payloads(self, parts: list[tuple[int, bytes]]) -> list[payloads.Part]:
        """Seal each (message id, bytes) and store them durably in one file; return where
        each is, for an Entry."""
        return payloads.write(self.payload_root, self.ring, parts)

    def discard_payload(self, name: str) -> None:
        payloads.remove(self.payload_root, name)

    def payload(self, row, which: str = "raw") -> bytes:
        """The ``raw`` or ``out`` payload of a message row; raise PayloadCorrupt if damaged."""
        owner = row["raw_owner"] if which == "raw" else row["id"]
        return payloads.read(self.payload_root, self.ring, payloads.Part(
            row[f"{which}_name"], row[f"{which}_offset"], row[f"{which}_length"],
            row[f"{which}_sha256"]), owner)

    def find(self, identity: str, control_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM messages WHERE identity = ? AND control_id = ?",
                               (identity, control_id)).fetchone()

    def insert(self, build: Callable[[Callable[[], int]], list[Entry]]) -> None:
        """Commit new messages in one transaction. ``build(next_id)`` runs inside it: it
        takes ids from ``next_id()``, writes the payloads sealed to them, and returns the
        entries. Raises sqlite3.IntegrityError on a duplicate control id."""
        now = self.clock()
        with self._transaction():
            self.check_current()
            entries = build(self._next_id)
            for entry in entries:
                columns = [c for c in COLUMNS if entry.values.get(c) is not None]
                self.db.execute(
                    f"INSERT INTO messages (id, {', '.join(columns)}, received_at, updated_at) "
                    f"VALUES (?, {', '.join('?' * len(columns))}, ?, ?)",
                    [entry.id] + [entry.values[c] for c in columns] + [now, now])
                for state in entry.path:
                    reason = entry.values.get("reason") if state == entry.values["state"] else None
                    self._history(entry.id, now, state, entry.actor, reason)
            audit.append(self.db, self.ring, [e for entry in entries for e in entry.events], now)

    def _next_id(self) -> int:
        return self.db.execute("UPDATE counters SET value = value + 1 WHERE name = 'message_id' "
                               "RETURNING value").fetchone()[0]

    def transition(self, message_id: int, state: str, actor: str, reason: str | None = None,
                   action: str | None = None, result: str | None = None, **changes) -> None:
        """Move a message to ``state`` (one transaction, with history and an audit record,
        ``action`` or the state's usual one); raise StateError if that is not allowed."""
        now = self.clock()
        with self._transaction():
            row = self.db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise StateError(f"no message {message_id}", code="E-NOT-FOUND")
            if not states.allowed(row["state"], state):
                raise StateError(f"message {message_id} cannot go from {row['state']} to {state}")
            assignments = {"state": state, "reason": reason, "updated_at": now, **changes}
            self.db.execute(f"UPDATE messages SET {', '.join(f'{k} = ?' for k in assignments)} "
                            "WHERE id = ?", [*assignments.values(), message_id])
            self._history(message_id, now, state, actor, reason)
            detail = reason or changes.get("destination") or row["destination"]
            audit.append(self.db, self.ring, [audit.about(
                row, actor, action or ACTIONS[state], result or RESULTS.get(state, "ok"), detail)],
                now)

    def note(self, message_id: int, actor: str, reason: str, action: str,
             set_reason: bool = False) -> None:
        """Add to a message's history and the audit log without changing its state (e.g. a
        pickup confirmed); ``set_reason`` also makes ``reason`` its current reason."""
        now = self.clock()
        with self._transaction():
            row = self.db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is not None and set_reason:
                self.db.execute("UPDATE messages SET reason = ?, updated_at = ? WHERE id = ?",
                                (reason, now, message_id))
            if row is not None:
                self._history(message_id, now, row["state"], actor, reason)
                audit.append(self.db, self.ring, [audit.about(row, actor, action, detail=reason)], now)

    def record(self, events: list) -> None:
        """Append audit events on their own (reads of patient data, administrative changes)."""
        with self._transaction():
            audit.append(self.db, self.ring, events, self.clock())

    def purged(self, zd_number: str) -> sqlite3.Row | None:
        """The purge record of a ZD number that was purged."""
        return self.db.execute("SELECT * FROM purged WHERE zd_number = ?", (zd_number,)).fetchone()

    def get(self, message_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()

    def by_zd(self, zd_number: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM messages WHERE zd_number = ? ORDER BY id",
                               (zd_number,)).fetchall()

    def history(self, message_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM history WHERE message_id = ? ORDER BY id",
                               (message_id,)).fetchall()

    def listing(self, state: str | None = None, limit: int = 1000) -> list[sqlite3.Row]:
        if state is None:
            return self.db.execute("SELECT * FROM messages ORDER BY id DESC LIMIT ?",
                                   (limit,)).fetchall()
        return self.db.execute("SELECT * FROM messages WHERE state = ? ORDER BY id LIMIT ?",
                               (state, limit)).fetchall()

    def record_route_changes(self, actor: str, changes: list[str]) -> None:
        """Keep what changed in the route tables, when and by whom (one transaction)."""
        now = self.clock()
        with self._transaction():
            self.db.executemany("INSERT INTO route_changes (at, actor, change) VALUES (?, ?, ?)",
                                [(now, actor, change) for change in changes])
            audit.append(self.db, self.ring, [audit.Event(actor, "routes-change", detail=change)
                                              for change in changes], now)

    def route_changes(self, limit: int = 1000) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM route_changes ORDER BY id DESC LIMIT ?",
                               (limit,)).fetchall()

    def purge(self, groups: list[tuple[str, str, float]], actor: str, now: float) -> set[str]:
        """Delete the messages of each (case ZD number or ``#id``, rule, last received) in
        one transaction — none received after that last one, which may have come meanwhile —
        keeping a purge record per ZD number, counts and audit records; return the payload
        file names they used."""
        names, events = set(), []
        with self._transaction():
            for key, rule, last in groups:
                rows = self.db.execute("SELECT * FROM messages WHERE id = ?", (int(key[1:]),)) \
                    if key.startswith("#") else self.db.execute(
                        "SELECT * FROM messages WHERE case_zd = ? AND received_at <= ?", (key, last))
                rows = rows.fetchall()
                for row in rows:
                    names.update(n for n in (row["raw_name"], row["out_name"]) if n)
                    events.append(audit.about(row, actor, "purge", detail=rule))
                    self.db.execute(
                        "INSERT INTO purge_counts VALUES (strftime('%Y-%m', ?, 'unixepoch'), ?, ?, 1) "
                        "ON CONFLICT DO UPDATE SET messages = messages + 1",
                        (row["received_at"], row["kind"] or row["state"], row["destination"]))
                ids = [(row["id"],) for row in rows]
                self.db.executemany("DELETE FROM history WHERE message_id = ?", ids)
                self.db.executemany("DELETE FROM messages WHERE id = ?", ids)
                numbers = {row["zd_number"] for row in rows if row["zd_number"]}
                numbers |= set() if key.startswith("#") else {key}
                self.db.executemany("INSERT OR REPLACE INTO purged VALUES (?, ?, ?, ?)",
                                    [(number, now, rule, len(rows)) for number in sorted(numbers)])
            audit.append(self.db, self.ring, events, now)
        return names

    def reseal(self, name: str) -> None:
        """Write the payload file ``name`` again, sealed under the current key, and point its
        messages at the new file (after a key rotation); raise PayloadCorrupt if damaged.
        The old file stays until the purge sweeps unused files: a delivery may be reading it."""
        rows = self.db.execute("SELECT * FROM messages WHERE raw_name = ? UNION "
                               "SELECT * FROM messages WHERE out_name = ?", (name, name)).fetchall()
        places = {}         # offset -> (message id it is sealed to, plain bytes)
        for row in rows:
            for which in ("raw", "out"):
                if row[f"{which}_name"] == name:
                    owner = row["raw_owner"] if which == "raw" else row["id"]
                    places.setdefault(row[f"{which}_offset"], (owner, self.payload(row, which)))
        offsets = sorted(places)
        moved = dict(zip(offsets, self.write_payloads([places[o] for o in offsets])))
        with self._transaction():
            for row in rows:
                for which in ("raw", "out"):
                    if row[f"{which}_name"] == name:
                        part = moved[row[f"{which}_offset"]]
                        self.db.execute(
                            f"UPDATE messages SET {which}_name = ?, {which}_offset = ?, "
                            f"{which}_length = ?, {which}_sha256 = ? WHERE id = ?",
                            (part.name, part.offset, part.length, part.sha256, row["id"]))

    def sealed_keys(self) -> dict[str, int]:
        """How many stored parts each key id seals (read from the parts' headers)."""
        counts: dict[str, int] = {}
        for name, offset in self.db.execute(
                "SELECT raw_name, raw_offset FROM messages UNION "
                "SELECT out_name, out_offset FROM messages WHERE out_name IS NOT NULL"):
            key_id = (keys.file_header(self.payload_root / name, offset) or ("(unreadable)",))[0]
            counts[key_id] = counts.get(key_id, 0) + 1
        return counts

    def forget_key(self, key_id: str, actor: str) -> None:
        """Drop a retired key's check value (and record who retired it)."""
        with self._transaction():
            self.db.execute("DELETE FROM key_checks WHERE key_id = ?", (key_id,))
            audit.append(self.db, self.ring, [audit.Event(actor, "keys-retire", detail=key_id)],
                         self.clock())

    def uses_payload(self, name: str) -> bool:
        """Whether any message still names the payload file ``name``."""
        return self.db.execute("SELECT 1 FROM messages WHERE raw_name = ? UNION ALL "
                               "SELECT 1 FROM messages WHERE out_name = ? LIMIT 1",
                               (name, name)).fetchone() is not None

    def prune_audit(self, before: float, actor: str) -> int:
        """Remove audit records older than ``before`` (recording that it did); how many."""
        with self._transaction():
            removed = audit.prune(self.db, before)
            if removed:
                audit.append(self.db, self.ring, [audit.Event(
                    actor, "audit-prune", detail=f"{removed} records past retention")], self.clock())
        return removed

    def reclaim(self) -> None:
        """Give freed space back to the file system."""
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:   # a store made before
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("VACUUM")
        self.db.executescript("PRAGMA incremental_vacuum;")   # execute() would free one page
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _history(self, message_id: int, at: float, state: str, actor: str, reason: str | None):
        self.db.execute("INSERT INTO history (message_id, at, state, actor, reason) "
                        "VALUES (?, ?, ?, ?, ?)", (message_id, at, state, actor, reason))

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, rolled back when the block raises."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
