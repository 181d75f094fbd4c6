"""The SQL of the tables in force: the route tables and identities every node uses.

Table ``tables_in_force`` holds one row per part (a route table file, or the
identities as TOML) with its text (NULL: the optional file is absent), SHA-256,
the version that last changed it, when and by whom. The version is the
``counters`` row ``tables_version``: a writer raises it first thing in its
transaction, which also makes writers on several nodes take turns (the row's
lock), so versions only grow and a node needs to compare one number to know
whether anything changed (``version``, the cheap query every node polls).
``claim`` and ``put`` store changed parts with the route changes and audit
records of the same change, in the caller's transaction. Nothing here holds patient data.

Also here: the messages in fallback a page at a time (``fallback_after``), for
routing them again after a change without one unbounded query.
"""

import hashlib
from dataclasses import dataclass

from gateway import audit
from gateway.spool.db import Database

COUNTER = "tables_version"


@dataclass(frozen=True)
class Part:
    name: str
    version: int
    content: str | None
    sha256: str
    changed_at: float
    actor: str


def digest(content: str | None) -> str:
    """The SHA-256 of a part's text ('' for an absent part)."""
    return "" if content is None else hashlib.sha256(content.encode("utf-8")).hexdigest()


def version(db: Database) -> int:
    """The version of the tables in force (0: none stored yet)."""
    return db.value("SELECT value FROM counters WHERE name = ?", (COUNTER,)) or 0


def read(db: Database) -> tuple[int, dict[str, Part]]:
    """The version and every part stored, read in one transaction (a consistent pair)."""
    with db.transaction():
        return _read(db)


def _read(db: Database) -> tuple[int, dict[str, Part]]:
    parts = {row["part"]: Part(row["part"], row["version"], row["content"], row["sha256"],
                               row["changed_at"], row["actor"])
             for row in db.execute("SELECT * FROM tables_in_force")}
    return version(db), parts


def claim(db: Database) -> tuple[int, dict[str, Part]]:
    """Inside the caller's transaction: take the next version (waiting while another
    writer's transaction holds it) and read the parts as they are; (version, parts)."""
    db.execute("INSERT INTO counters VALUES (?, 0) ON CONFLICT DO NOTHING", (COUNTER,))
    db.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (COUNTER,))
    return _read(db)


def put(db: Database, ring, claimed: tuple[int, dict[str, Part]], changed: dict[str, str | None],
        actor: str, now: float, route_changes: list[str] = (), events: list = ()) -> int:
    """Inside the transaction of ``claim``: store the ``changed`` parts (part -> text) that
    differ from the ``claimed`` ones under its version, with ``route_changes`` (one row
    each) and audit ``events``. Return the version in force afterwards (the one before,
    given back, when there was nothing to write)."""
    new, before = claimed
    rows = [(name, new, text, digest(text), now, actor) for name, text in sorted(changed.items())
            if name not in before or before[name].sha256 != digest(text)]   # None: ""
    if not rows and not route_changes and not events:
        db.execute("UPDATE counters SET value = value - 1 WHERE name = ?", (COUNTER,))
        return new - 1
    db.executemany("INSERT INTO tables_in_force VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (part) DO "
                   "UPDATE SET version = excluded.version, content = excluded.content, "
                   "sha256 = excluded.sha256, changed_at = excluded.changed_at, "
                   "actor = excluded.actor", rows)
    record_changes(db, ring, actor, route_changes, now, events)
    return new


def record_changes(db: Database, ring, actor: str, route_changes: list[str], now: float,
                   events: list = ()) -> None:
    """Keep what changed in the route tables (table ``route_changes``), when and by whom,
    with a ``routes-change`` audit record each and ``events`` besides, in the caller's
    transaction."""
    db.executemany("INSERT INTO route_changes (at, actor, change) VALUES (?, ?, ?)",
                   [(now, actor, change) for change in route_changes])
    events = [audit.Event(actor, "routes-change", detail=change)
              for change in route_changes] + list(events)
    if events:
        audit.append(db, ring, events, now)


def fallback_after(db: Database, after: int, limit: int = 200) -> list:
    """The next ``limit`` messages in fallback with an id above ``after``, by id."""
    return db.execute("SELECT * FROM messages WHERE state = 'fallback' AND id > ? ORDER BY id "
                      "LIMIT ?", (after, limit)).fetchall()
