"""The durable store: one SQLite database holding rows, history, audit and sealed payloads.

SQLite runs in WAL mode with ``synchronous=FULL``; each change is one ``BEGIN
IMMEDIATE`` transaction that also appends to the message's history (time,
state, actor, reason) and to the audit log (``gateway.audit``), and, for new
messages, stores their payloads sealed (``gateway.spool.payloads``): a batch
of messages is one commit and one sync, and a caller gets its receipt only
after that commit. Message ids come from a counter in the same transaction
(never reused, even after a purge), so a payload is sealed to its message id.
The columns hold identifiers (ZD number, AGB codes, control ids, the patient's
keyed hash), states and times — never a BSN, a name or letter text; those live
only in the sealed payloads. The schema is versioned (``gateway.spool.schema``);
opening an older store upgrades it (``gateway.spool.upgrade``). All SQL of the
message store is here and in those modules, so that another backend can stand
behind the same methods.
"""

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gateway import audit
from gateway.errors import GatewayError
from gateway.keys import Keyring, KeyProblem
from gateway.spool import payloads, schema, states, upgrade

# What each state a message moves to means in the audit log (an operation may say more).
ACTIONS = {"ready": "route", "outbound": "route", "fallback": "route", "deferred": "deliver",
           "delivered": "deliver", "held": "hold", "expired": "deliver", "cancelled": "cancel",
           "rejected": "receive", "received": "receive"}
RESULTS = {"fallback": "fallback", "deferred": "failed", "expired": "expired", "rejected": "rejected"}
COLUMNS = ("identity", "control_id", "part", "content_sha256", "zd_number", "case_zd", "kind",
           "sender_agb", "recipient_agb", "in_reply_to", "sent_at", "destination", "format",
           "delivery", "state", "reason", "raw_owner", "patient")
# What a column holds when an entry leaves it out (the table's defaults).
DEFAULTS = {"part": 0, "zd_number": "", "case_zd": "", "kind": "", "sender_agb": "",
            "recipient_agb": "", "sent_at": "", "destination": "", "format": "", "delivery": "",
            "patient": ""}
INSERT_MESSAGE = (f"INSERT INTO messages (id, {', '.join(COLUMNS)}, received_at, updated_at) "
                  f"VALUES ({', '.join('?' * (len(COLUMNS) + 3))})")
INSERT_HISTORY = "INSERT INTO history (message_id, at, state, actor, reason) VALUES (?, ?, ?, ?, ?)"


class StateError(GatewayError):
    code = "E-STATE"


@dataclass(frozen=True)
class Entry:
    """A message to store under ``id``: its metadata (see COLUMNS), the states it passed
    through on the way in (recorded as history in the same transaction; ``note`` is the
    first entry's reason), who brought it, its audit events, and its payloads: the raw
    input (only on the message that owns it, ``raw_owner``) and the converted output."""

    id: int
    values: dict
    path: tuple[str, ...]
    actor: str
    events: tuple = ()
    raw: bytes | None = None
    out: bytes | None = None
    note: str | None = None


class Store:
    """One spool folder holding ``gateway.db``, its payloads sealed with ``ring``. Pass the
    clock in (seconds); ``other_thread`` when one thread opens it for another to use;
    ``progress`` is told about an upgrade of an older store (one line at a time)."""

    def __init__(self, root: Path, clock: Callable[[], float], ring: Keyring,
                 other_thread: bool = False, progress: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.clock, self.ring = clock, ring
        self.db = sqlite3.connect(self.root / "gateway.db", isolation_level=None, timeout=30,
                                  check_same_thread=not other_thread)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")    # before the first table: purge frees space
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute(f"PRAGMA journal_size_limit={64 << 20}")   # the WAL after a large message
        found = schema.prepare(self.db)
        self.check_keys()
        if found < schema.VERSION:
            upgrade.run(self.db, ring, self.root, progress or (lambda line: None))
        upgrade.remove_files(self.root)

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

    def payload(self, row, which: str = "raw") -> bytes:
        """The ``raw`` or ``out`` payload of a message row; raise PayloadCorrupt if it is
        missing or damaged."""
        owner = row["raw_owner"] if which == "raw" else row["id"]
        return payloads.get(self.db, self.ring, owner, which)

    def has_output(self, message_id: int) -> bool:
        """Whether a message has converted content (a message in fallback has none)."""
        return payloads.has(self.db, message_id, "out")

    def find(self, identity: str, control_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM messages WHERE identity = ? AND control_id = ?",
                               (identity, control_id)).fetchone()

    def find_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], sqlite3.Row]:
        """The stored messages among (identity, control id) ``keys``, in one query per 200."""
        found = {}
        for start in range(0, len(keys), 200):
            chunk = keys[start:start + 200]
            found.update(((row["identity"], row["control_id"]), row) for row in self.db.execute(
                "SELECT * FROM messages WHERE "
                + " OR ".join(["(identity = ? AND control_id = ?)"] * len(chunk)),
                [value for key in chunk for value in key]))
        return found

    def insert(self, build: Callable[[Callable[[], int]], list[Entry]],
               events: list = ()) -> None:
        """Commit new messages, their payloads, history and audit records (and ``events``
        besides) in one transaction. ``build(next_id)`` runs inside it: it takes ids from
        ``next_id()`` and returns the entries. Raises sqlite3.IntegrityError on a duplicate
        control id."""
        now = self.clock()
        with self._transaction():
            self.check_current()
            counter = self.db.execute("SELECT value FROM counters WHERE name = 'message_id'"
                                      ).fetchone()[0]

            def next_id() -> int:
                nonlocal counter
                counter += 1
                return counter
            entries = build(next_id)
            self.db.execute("UPDATE counters SET value = ? WHERE name = 'message_id'", (counter,))
            self.db.executemany(INSERT_MESSAGE, [
                (e.id, *[e.values.get(c, DEFAULTS.get(c)) for c in COLUMNS], now, now)
                for e in entries])
            self.db.executemany(INSERT_HISTORY, [
                (e.id, now, state, e.actor,
                 e.values.get("reason") if state == e.values["state"] else
                 (e.note if index == 0 else None))
                for e in entries for index, state in enumerate(e.path)])
            payloads.put(self.db, self.ring, [
                (e.id, which, data) for e in entries
                for which, data in (("raw", e.raw), ("out", e.out)) if data is not None])
            audit.append(self.db, self.ring,
                         [event for e in entries for event in e.events] + list(events), now)

    def transition(self, message_id: int, state: str, actor: str, reason: str | None = None,
                   action: str | None = None, result: str | None = None,
                   output: bytes | None = None, **changes) -> None:
        """Move a message to ``state`` (one transaction, with history and an audit record,
        ``action`` or the state's usual one; ``output`` stores new converted content with
        it); raise StateError if that is not allowed."""
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
            if output is not None:
                self.check_current()
                payloads.put(self.db, self.ring, [(message_id, "out", output)], replace=True)
            self.db.execute(INSERT_HISTORY, (message_id, now, state, actor, reason))
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
                self.db.execute(INSERT_HISTORY, (message_id, now, row["state"], actor, reason))
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

    def purge(self, groups: list[tuple[str, str, float]], actor: str, now: float) -> int:
        """Delete the messages of each (case ZD number or ``#id``, rule, last received) in
        one transaction — none received after that last one, which may have come meanwhile —
        with their payloads (a raw input shared with a message that stays, stays), keeping a
        purge record per ZD number, counts and audit records; return how many payloads went."""
        events, removed = [], 0
        with self._transaction():
            for key, rule, last in groups:
                rows = self.db.execute("SELECT * FROM messages WHERE id = ?", (int(key[1:]),)) \
                    if key.startswith("#") else self.db.execute(
                        "SELECT * FROM messages WHERE case_zd = ? AND received_at <= ?", (key, last))
                rows = rows.fetchall()
                events += [audit.about(row, actor, "purge", detail=rule) for row in rows]
                self.db.executemany(
                    "INSERT INTO purge_counts VALUES (strftime('%Y-%m', ?, 'unixepoch'), ?, ?, 1) "
                    "ON CONFLICT DO UPDATE SET messages = messages + 1",
                    [(row["received_at"], row["kind"] or row["state"], row["destination"])
                     for row in rows])
                ids = [(row["id"],) for row in rows]
                self.db.executemany("DELETE FROM history WHERE message_id = ?", ids)
                self.db.executemany("DELETE FROM messages WHERE id = ?", ids)
                removed += self._drop_payloads(ids, {row["raw_owner"] for row in rows})
                numbers = {row["zd_number"] for row in rows if row["zd_number"]}
                numbers |= set() if key.startswith("#") else {key}
                self.db.executemany("INSERT OR REPLACE INTO purged VALUES (?, ?, ?, ?)",
                                    [(number, now, rule, len(rows)) for number in sorted(numbers)])
            audit.append(self.db, self.ring, events, now)
        return removed

    def _drop_payloads(self, ids: list[tuple[int]], owners: set[int]) -> int:
        """Delete the outputs of the messages ``ids`` (deleted just now) and the raw inputs
        of ``owners`` that no message names any more; how many."""
        before = self.db.total_changes
        self.db.executemany("DELETE FROM payloads WHERE message_id = ? AND which = 'out'", ids)
        self.db.executemany("DELETE FROM payloads WHERE message_id = ? AND which = 'raw' AND "
                            "NOT EXISTS (SELECT 1 FROM messages WHERE raw_owner = ?)",
                            [(owner, owner) for owner in sorted(owners)])
        return self.db.total_changes - before

    def reseal(self, batch_bytes: int = 32 << 20) -> tuple[int, int]:
        """Seal every stored payload that is not under the current key again under it, a
        batch of parts per transaction (intake goes on meanwhile; a run stopped half-way
        is finished by running it again); return (parts resealed, parts that do not open,
        left as they are for delivery to quarantine)."""
        resealed, broken, after = 0, 0, 0
        while True:
            with self._transaction():
                self.check_current()
                done, bad, after = self._reseal_batch(after, batch_bytes)
            resealed, broken = resealed + done, broken + bad
            if after is None:
                return resealed, broken

    def _reseal_batch(self, after: int, batch_bytes: int) -> tuple[int, int, int | None]:
        """Reseal parts after rowid ``after`` until ``batch_bytes`` were sealed; return
        (resealed, unreadable, the last rowid looked at or None at the end)."""
        done = bad = size = 0
        rows = self.db.execute("SELECT rowid, message_id, which FROM payloads WHERE rowid > ? "
                               "ORDER BY rowid LIMIT 500", (after,)).fetchall()
        for row, message_id, which in rows:
            after = row
            if payloads.key_id(self.db, row) == self.ring.current:
                continue
            try:
                plain = payloads.get(self.db, self.ring, message_id, which)
            except payloads.PayloadCorrupt:
                bad += 1
                continue
            payloads.put(self.db, self.ring, [(message_id, which, plain)], replace=True)
            done, size = done + 1, size + len(plain)
            if size >= batch_bytes:
                return done, bad, after
        return done, bad, after if len(rows) == 500 else None

    def sealed_keys(self) -> dict[str, int]:
        """How many stored parts each key id seals (read from the parts' headers)."""
        return payloads.census(self.db)

    def forget_key(self, key_id: str, actor: str) -> None:
        """Drop a retired key's check value (and record who retired it)."""
        with self._transaction():
            self.db.execute("DELETE FROM key_checks WHERE key_id = ?", (key_id,))
            audit.append(self.db, self.ring, [audit.Event(actor, "keys-retire", detail=key_id)],
                         self.clock())

    def prune_audit(self, before: float, actor: str) -> int:
        """Remove audit records older than ``before`` (recording that it did); how many."""
        with self._transaction():
            removed = audit.prune(self.db, before)
            if removed:
                audit.append(self.db, self.ring, [audit.Event(
                    actor, "audit-prune", detail=f"{removed} records past retention")], self.clock())
        return removed

    def reclaim(self, step_pages: int = 4096) -> None:
        """Give freed space back to the file system, a few MB per transaction so that
        intake is not held up, then truncate the WAL."""
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:   # a store made before
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("VACUUM")
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        while free:
            # executescript: execute() would free one page
            self.db.executescript(f"PRAGMA incremental_vacuum({step_pages});")
            free, before = self.db.execute("PRAGMA freelist_count").fetchone()[0], free
            if free >= before:
                break
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
