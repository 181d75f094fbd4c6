"""The durable store: SQLite metadata and state, payload files for content.

SQLite runs in WAL mode with ``synchronous=FULL`` and one writer; each change
is one ``BEGIN IMMEDIATE`` transaction that also appends to the message's
history (time, state, actor, reason). Payload files are written and fsynced
before the row that names them is committed, and a caller gets its receipt only
after that commit. The database holds identifiers (ZD number, AGB codes,
control ids), states and times — never a BSN, a name or letter text; those live
only in the payload files.
"""

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gateway.errors import GatewayError
from gateway.spool import payloads, states

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL,
    control_id TEXT,
    part INTEGER NOT NULL DEFAULT 0,
    content_sha256 TEXT NOT NULL,
    zd_number TEXT NOT NULL DEFAULT '',
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
    out_name TEXT,
    out_offset INTEGER,
    out_length INTEGER,
    out_sha256 TEXT,
    UNIQUE (identity, control_id)
);
CREATE INDEX IF NOT EXISTS messages_zd ON messages (zd_number);
CREATE INDEX IF NOT EXISTS messages_queue ON messages (state, destination);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt_at);
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
"""
COLUMNS = ("identity", "control_id", "part", "content_sha256", "zd_number", "kind", "sender_agb",
           "recipient_agb", "in_reply_to", "sent_at", "destination", "format", "delivery",
           "state", "reason", "raw_name", "raw_offset", "raw_length", "raw_sha256", "out_name",
           "out_offset", "out_length", "out_sha256")


class StateError(GatewayError):
    code = "E-STATE"


@dataclass(frozen=True)
class Entry:
    """A message to store: its metadata (see COLUMNS), the states it passed through on
    the way in (recorded as history in the same transaction) and who brought it."""

    values: dict
    path: tuple[str, ...]
    actor: str


class Store:
    """One spool folder: ``gateway.db`` and ``payloads/``. Pass the clock in (seconds)."""

    def __init__(self, root: Path, clock: Callable[[], float]):
        self.root = Path(root)
        self.payload_root = self.root / "payloads"
        self.payload_root.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.db = sqlite3.connect(self.root / "gateway.db", isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        payloads.prepare(self.payload_root)
        payloads.sweep(self.payload_root)

    def close(self) -> None:
        self.db.close()

    def write_payloads(self, parts: list[bytes]) -> list[payloads.Part]:
        """Store ``parts`` durably in one file; return where each is, for an Entry."""
        return payloads.write(self.payload_root, parts)

    def discard_payload(self, name: str) -> None:
        payloads.remove(self.payload_root, name)

    def payload(self, row, which: str = "raw") -> bytes:
        """The ``raw`` or ``out`` payload of a message row; raise PayloadCorrupt if damaged."""
        return payloads.read(self.payload_root, payloads.Part(
            row[f"{which}_name"], row[f"{which}_offset"], row[f"{which}_length"],
            row[f"{which}_sha256"]))

    def find(self, identity: str, control_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM messages WHERE identity = ? AND control_id = ?",
                               (identity, control_id)).fetchone()

    def insert(self, entries: list[Entry]) -> list[int]:
        """Commit ``entries`` in one transaction (payloads must already be written);
        return their ids. Raises sqlite3.IntegrityError on a duplicate control id."""
        now = self.clock()
        ids = []
        with self._transaction():
            for entry in entries:
                columns = [c for c in COLUMNS if entry.values.get(c) is not None]
                cursor = self.db.execute(
                    f"INSERT INTO messages ({', '.join(columns)}, received_at, updated_at) "
                    f"VALUES ({', '.join('?' * len(columns))}, ?, ?)",
                    [entry.values[c] for c in columns] + [now, now])
                ids.append(cursor.lastrowid)
                for state in entry.path:
                    reason = entry.values.get("reason") if state == entry.values["state"] else None
                    self._history(cursor.lastrowid, now, state, entry.actor, reason)
        return ids

    def transition(self, message_id: int, state: str, actor: str, reason: str | None = None,
                   **changes) -> None:
        """Move a message to ``state`` (one transaction, with history); raise StateError if
        that transition is not allowed."""
        now = self.clock()
        with self._transaction():
            row = self.db.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise StateError(f"no message {message_id}", code="E-NOT-FOUND")
            if not states.allowed(row["state"], state):
                raise StateError(f"message {message_id} cannot go from {row['state']} to {state}")
            assignments = {"state": state, "reason": reason, "updated_at": now, **changes}
            self.db.execute(f"UPDATE messages SET {', '.join(f'{k} = ?' for k in assignments)} "
                            "WHERE id = ?", [*assignments.values(), message_id])
            self._history(message_id, now, state, actor, reason)

    def note(self, message_id: int, actor: str, reason: str) -> None:
        """Add to a message's history without changing its state (e.g. a pickup confirmed)."""
        now = self.clock()
        with self._transaction():
            row = self.db.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is not None:
                self._history(message_id, now, row["state"], actor, reason)

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

    def route_changes(self, limit: int = 1000) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM route_changes ORDER BY id DESC LIMIT ?",
                               (limit,)).fetchall()

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
