"""The store's schema by version: what a new store gets, and which version an old one has.

Versions are numbered once for every backend, so that a PostgreSQL store can use
the same numbers and the same ``schema_version`` table:

1  payloads in sealed files under ``spool/payloads/`` (the message row names file,
   offset, length and SHA-256); stores of that time have no ``schema_version`` table
2  payloads sealed inside the database (table ``payloads``), in the same
   transaction as their rows: one commit, one sync per batch

``prepare`` creates a new store at the latest version, or says which version an
existing one has; the steps from one version to the next are in
``gateway.spool.upgrade``. Every table is created with IF NOT EXISTS, so running
``TABLES`` on an older store adds what it lacks without touching what it has.
"""

import sqlite3
import time

from gateway import audit
from gateway.errors import GatewayError

VERSION = 2
NOTES = {1: "payloads in sealed files", 2: "payloads sealed inside the database"}

MESSAGES = """
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
    raw_owner INTEGER NOT NULL,
    patient TEXT NOT NULL DEFAULT '',
    UNIQUE (identity, control_id)
);
"""
TABLES = MESSAGES + """
CREATE INDEX IF NOT EXISTS messages_zd ON messages (zd_number);
CREATE INDEX IF NOT EXISTS messages_case ON messages (case_zd);
CREATE INDEX IF NOT EXISTS messages_queue ON messages (state, destination);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS messages_raw_owner ON messages (raw_owner);
CREATE TABLE IF NOT EXISTS payloads (
    message_id INTEGER NOT NULL,
    which TEXT NOT NULL CHECK (which IN ('raw', 'out')),
    sealed BLOB NOT NULL,
    PRIMARY KEY (message_id, which)
);
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
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL,
    note TEXT NOT NULL
);
""" + audit.SCHEMA


class StoreProblem(GatewayError):
    """The store cannot be opened or upgraded as it is (one line saying why)."""

    code = "E-STORE"


def version(db: sqlite3.Connection) -> int:
    """The schema version of the store behind ``db``: 0 when it is empty."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        found = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if found is not None:
            return found
    return 1 if "messages" in tables else 0


def prepare(db: sqlite3.Connection) -> int:
    """Create a new store at the latest version, or bring an older one's tables up to
    date (its data stays for ``upgrade``); return the version the store had. Raise
    StoreProblem for a store made by a newer gatewayd."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = version(db)
        if found > VERSION:
            raise StoreProblem(f"the store has schema version {found}; this gatewayd knows up to "
                               f"{VERSION} (made by a newer gatewayd?)")
        for statement in _statements(TABLES):
            db.execute(statement)
        if found == 0:
            record(db, VERSION)
        elif found == 1 and db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
            record(db, 1)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found or VERSION


def record(db: sqlite3.Connection, number: int) -> None:
    """Note that the store is at version ``number`` now (inside the caller's transaction)."""
    db.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (number, time.time(), NOTES[number]))


def _statements(script: str) -> list[str]:
    """The statements of ``script`` one by one (executescript would commit the transaction)."""
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    return [statement for statement in found if statement]
