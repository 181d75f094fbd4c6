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
``TABLES`` on an older store adds what it lacks without touching what it has. A store
that has every table, index and sequence already is opened without running it: on
PostgreSQL ``CREATE INDEX IF NOT EXISTS`` locks its table even when the index is
there, and a node starting while another node writes could deadlock with that node.

The tables are written once for both backends; the type words in braces are each
backend's own (``gateway.spool.db``: INTEGER/REAL/BLOB on SQLite, BIGINT/DOUBLE
PRECISION/BYTEA and identity columns on PostgreSQL). SQLite takes message ids
from the ``counters`` row, PostgreSQL from the sequence ``message_ids``.
"""

import re
import time

from gateway import audit
from gateway.errors import GatewayError
from gateway.spool.db import Database

VERSION = 2
NOTES = {1: "payloads in sealed files", 2: "payloads sealed inside the database"}

MESSAGES = """
CREATE TABLE IF NOT EXISTS messages (
    id {BIGINT} PRIMARY KEY,
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
    received_at {DOUBLE} NOT NULL,
    updated_at {DOUBLE} NOT NULL,
    next_attempt_at {DOUBLE},
    attempts INTEGER NOT NULL DEFAULT 0,
    raw_owner {BIGINT} NOT NULL,
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
    message_id {BIGINT} NOT NULL,
    which TEXT NOT NULL CHECK (which IN ('raw', 'out')),
    sealed {BYTES} NOT NULL,
    PRIMARY KEY (message_id, which)
);
CREATE TABLE IF NOT EXISTS history (
    id {SERIAL},
    message_id {BIGINT} NOT NULL REFERENCES messages (id),
    at {DOUBLE} NOT NULL,
    state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS history_message ON history (message_id);
CREATE TABLE IF NOT EXISTS route_changes (
    id {SERIAL},
    at {DOUBLE} NOT NULL,
    actor TEXT NOT NULL,
    change TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value {BIGINT} NOT NULL);
CREATE TABLE IF NOT EXISTS key_checks (key_id TEXT PRIMARY KEY, sealed {BYTES} NOT NULL);
CREATE TABLE IF NOT EXISTS purged (
    zd_number TEXT PRIMARY KEY,
    purged_at {DOUBLE} NOT NULL,
    rule TEXT NOT NULL,
    messages INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purged_identities (
    zd_number TEXT NOT NULL,
    identity TEXT NOT NULL,
    PRIMARY KEY (zd_number, identity)
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
    applied_at {DOUBLE} NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), seq {BIGINT});
CREATE TABLE IF NOT EXISTS notifications (
    id {SERIAL},
    created {DOUBLE} NOT NULL,
    event TEXT NOT NULL,
    message_id {BIGINT} NOT NULL,
    zd_number TEXT NOT NULL,
    destination TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at {DOUBLE} NOT NULL,
    mailed_at {DOUBLE},
    posted_at {DOUBLE},
    sent_at {DOUBLE},
    UNIQUE (event, message_id)
);
CREATE TABLE IF NOT EXISTS claims (
    message_id {BIGINT} PRIMARY KEY,
    node TEXT NOT NULL,
    destination TEXT NOT NULL,
    until {DOUBLE} NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_destination ON claims (destination);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    node TEXT NOT NULL DEFAULT '',
    until {DOUBLE} NOT NULL DEFAULT 0,
    last_run {DOUBLE}
);
CREATE TABLE IF NOT EXISTS tables_in_force (
    part TEXT PRIMARY KEY,
    version {BIGINT} NOT NULL,
    content TEXT,
    sha256 TEXT NOT NULL,
    changed_at {DOUBLE} NOT NULL,
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    account TEXT NOT NULL,
    file_name TEXT NOT NULL,
    message_id {BIGINT} NOT NULL,
    size {BIGINT} NOT NULL,
    listed_at {DOUBLE} NOT NULL,
    picked_up_at {DOUBLE},
    PRIMARY KEY (account, file_name),
    UNIQUE (message_id, account)
);
""" + audit.SCHEMA
# What each backend adds: where message ids come from.
IDS = {"sqlite": "INSERT INTO counters VALUES ('message_id', 0) ON CONFLICT DO NOTHING;\n",
       "postgresql": "CREATE SEQUENCE IF NOT EXISTS message_ids AS BIGINT;\n"}
# The names of everything in the store (tables, indexes, sequences).
NAMES = {"sqlite": "SELECT name FROM sqlite_master",
         "postgresql": "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                       "c.relnamespace WHERE n.nspname = current_schema()"}
# Every table of a store, in an order that copying can follow (migrate, backup checks);
# not the nodes' passing state: delivery claims and job leases (``claims``, ``jobs``).
COPIED = ("messages", "history", "payloads", "route_changes", "counters", "key_checks", "purged",
          "purged_identities", "purge_counts", "schema_version", "notify_cursor", "notifications",
          "audit", "audit_anchor", "tables_in_force", "outbox")


class StoreProblem(GatewayError):
    """The store cannot be opened or upgraded as it is (one line saying why)."""

    code = "E-STORE"


def version(db: Database) -> int:
    """The schema version of the store behind ``db``: 0 when it is empty."""
    tables = db.tables()
    if "schema_version" in tables:
        found = db.value("SELECT max(version) FROM schema_version")
        if found is not None:
            return found
    return 1 if "messages" in tables else 0


def prepare(db: Database) -> int:
    """Create a new store at the latest version, or bring an older one's tables up to
    date (its data stays for ``upgrade``); return the version the store had. Raise
    StoreProblem for a store made by a newer gatewayd. Nodes starting together on one
    PostgreSQL database take turns (a lock)."""
    with db.transaction():
        db.lock("schema")
        found = version(db)
        if found > VERSION:
            raise StoreProblem(f"the store has schema version {found}; this gatewayd knows up to "
                               f"{VERSION} (made by a newer gatewayd?)")
        if not _complete(db):
            db.script(TABLES + IDS[db.backend])
        if found == 0:
            record(db, VERSION)
        elif found == 1 and db.value("SELECT count(*) FROM schema_version") == 0:
            record(db, 1)
    return found or VERSION


def _complete(db: Database) -> bool:
    """Whether every table, index and sequence ``TABLES`` makes is in the store."""
    wanted = set(re.findall(r"IF NOT EXISTS (\w+)", TABLES + IDS[db.backend]))
    return wanted <= {row[0] for row in db.execute(NAMES[db.backend])}


def record(db: Database, number: int) -> None:
    """Note that the store is at version ``number`` now (inside the caller's transaction)."""
    db.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (number, time.time(), NOTES[number]))
