"""The durable store: one database holding rows, history, audit and sealed payloads.

The database is SQLite in the spool folder (the embedded default: WAL mode,
``synchronous=FULL``) or PostgreSQL (``store.url``), behind one seam
(``gateway.spool.db``). Each change is one write transaction that also appends
to the message's history (time,
state, actor, reason) and to the audit log (``gateway.audit``), and, for new
messages, stores their payloads sealed (``gateway.spool.payloads``): a batch
of messages is one commit and one sync, and a caller gets its receipt only
after that commit. Message ids are taken in the same transaction (SQLite: a
counter row; PostgreSQL: a sequence; never reused, even after a purge), so a
payload is sealed to its message id. The caller checks new messages against
the stored ones before; a concurrent writer (another process or node) that
commits the same (identity, control id) meanwhile makes the UNIQUE key refuse
the insert (``insert`` raises Conflict, nothing is committed), and the caller
plans again (the key is a duplicate now).
A push ends (``settle``) in the transaction that drops its delivery claim
(``gateway.spool.claims``).
The columns hold identifiers (ZD number, AGB codes, control ids, the patient's
keyed hash), states and times — never a BSN, a name or letter text; those live
only in the sealed payloads. The schema is versioned (``gateway.spool.schema``);
opening an older store upgrades it (``gateway.spool.upgrade``). All SQL of the
project is here, in the other modules of ``gateway.spool`` and in ``gateway.audit``.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gateway import audit
from gateway.errors import GatewayError
from gateway.keys import Keyring, KeyProblem
from gateway.spool import db as database
from gateway.spool import claims, outboxes, payloads, schema, states, upgrade
from gateway.spool.db import Conflict, Database, StoreUnavailable   # noqa: F401 - for callers

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


class ClaimLost(StateError):
    """A node settled a push whose delivery claim had expired and gone to another node."""

    code = "E-CLAIM-LOST"


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
    """A store whose payloads are sealed with ``ring``: ``gateway.db`` in the spool folder
    ``root``, or the PostgreSQL database at ``url``. Pass the clock in (seconds);
    ``other_thread`` when one thread opens it for another to use; ``progress`` is told
    about an upgrade of an older store (one line at a time). Raise StoreUnavailable
    when PostgreSQL cannot be reached."""

    def __init__(self, root: Path, clock: Callable[[], float], ring: Keyring,
                 other_thread: bool = False, progress: Callable[[str], None] | None = None,
                 url: str = ""):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.clock, self.ring = clock, ring
        self.db: Database = database.connect(url or self.root / "gateway.db", other_thread)
        found = schema.prepare(self.db)
        self.check_keys()
        if found < schema.VERSION:
            upgrade.run(self.db, ring, self.root, progress or (lambda line: None))
        upgrade.remove_files(self.root)

    @classmethod
    def configured(cls, settings, clock: Callable[[], float], ring: Keyring, **options) -> "Store":
        """The store ``settings`` name: ``store.url``, or SQLite in ``paths.spool``."""
        return cls(settings.paths_spool, clock, ring, url=settings.store_url, **options)

    @property
    def where(self) -> str:
        """The database, as it may be shown (a URL without its password)."""
        return database.where(self.db.target)

    def check_keys(self) -> None:
        """Refuse a key file that lacks a key this store used, or holds a different one."""
        known = {key_id: bytes(sealed) for key_id, sealed in
                 self.db.execute("SELECT key_id, sealed FROM key_checks")}
        for key_id, sealed in known.items():
            if key_id not in self.ring.keys:
                raise KeyProblem(f"the key file lacks key {key_id!r}, which {self.where} uses")
            if not self.ring.fits(key_id, sealed):
                raise KeyProblem(f"key {key_id!r} in the key file is not the key {self.where} "
                                 "was sealed with (wrong key file?)")
        new = [k for k in self.ring.keys if k not in known]
        if new:
            with self.db.transaction():
                self.db.executemany("INSERT INTO key_checks VALUES (?, ?) ON CONFLICT DO NOTHING",
                                    [(k, self.ring.check_value(k)) for k in new])

    def check_current(self) -> None:
        """Refuse to seal with a key that was retired meanwhile (the daemon was not reloaded
        after a rotation): what it sealed could not be opened after a restart."""
        if self.db.one("SELECT 1 FROM key_checks WHERE key_id = ?", (self.ring.current,)) is None:
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

    def problem(self) -> str | None:
        """Why the database cannot be used right now (PostgreSQL unreachable), or None. A
        connection found broken is opened again at once (the second try)."""
        for attempt in (1, 2):
            try:
                self.db.execute("SELECT 1")
                return None
            except StoreUnavailable as exc:
                if attempt == 2:
                    return exc.message
        return None

    def find(self, identity: str, control_id: str):
        return self.db.one("SELECT * FROM messages WHERE identity = ? AND control_id = ?",
                           (identity, control_id))

    def find_many(self, keys: list[tuple[str, str]]) -> dict:
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
               events: list = (), expect: int = 1) -> None:
        """Commit new messages, their payloads, history and audit records (and ``events``
        besides) in one transaction. ``build(next_id)`` runs inside it: it takes ids from
        ``next_id()`` (``expect``: how many it will take, fetched at once) and returns the
        entries. Raises Conflict when one of the entries' (identity, control id) is stored
        already, or a concurrent writer stores it first: nothing is committed."""
        now = self.clock()
        with self.db.transaction():
            self.check_current()
            reserve: list[int] = []

            def next_id() -> int:
                if not reserve:
                    reserve.extend(reversed(self.db.take_ids(max(expect, 1))))
                return reserve.pop()
            entries = build(next_id)
            # UNIQUE (identity, control_id) refuses a key stored meanwhile: Conflict
            self.db.executemany(INSERT_MESSAGE, sorted(     # one order: no deadlock between nodes
                [(e.id, *[e.values.get(c, DEFAULTS.get(c)) for c in COLUMNS], now, now)
                 for e in entries], key=lambda row: (row[1], row[2] or "", row[0])))
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
        with self.db.transaction():
            self._change(message_id, state, actor, reason, action, result, output, changes)

    def settle(self, message_id: int, node: str, state: str, actor: str,
               reason: str | None = None, held: bool = True, **options) -> None:
        """End ``node``'s push of a message: its delivery claim dropped and the message
        moved to ``state`` (as ``transition``), in one transaction. With ``held``, raise
        ClaimLost (nothing changed) when the node no longer holds the claim (it expired
        and went to another node, which decides now); StateError as ``transition``."""
        with self.db.transaction():
            if not claims.release(self.db, message_id, node) and held:
                raise ClaimLost(f"message {message_id}: the claim of {node} expired meanwhile")
            self._change(message_id, state, actor, reason, options.pop("action", None),
                         options.pop("result", None), None, options)

    def _change(self, message_id: int, state: str, actor: str, reason: str | None,
                action: str | None, result: str | None, output: bytes | None,
                changes: dict) -> None:
        """``transition`` inside the caller's transaction."""
        now = self.clock()
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
        with self.db.transaction():
            self._note(self.get(message_id), actor, reason, action, set_reason)

    def picked_up(self, account: str, file_name: str):
        """Mark ``account``'s outbox file picked up (gone from every node's listing) and note
        the pickup in its message's history and audit log, in one transaction; the
        message's row, or None when no such file is listed."""
        with self.db.transaction():
            message_id = outboxes.take(self.db, account, file_name, self.clock())
            row = None if message_id is None else self.get(message_id)
            self._note(row, f"sftp:{account}", "pickup confirmed", "pickup")
            return row

    def _note(self, row, actor: str, reason: str, action: str, set_reason: bool = False) -> None:
        """``note`` for the message ``row`` (nothing for None), in the caller's transaction."""
        if row is None:
            return
        now = self.clock()
        if set_reason:
            self.db.execute("UPDATE messages SET reason = ?, updated_at = ? WHERE id = ?",
                            (reason, now, row["id"]))
        self.db.execute(INSERT_HISTORY, (row["id"], now, row["state"], actor, reason))
        audit.append(self.db, self.ring, [audit.about(row, actor, action, detail=reason)], now)

    def record(self, events: list) -> None:
        """Append audit events on their own (reads of patient data, administrative changes)."""
        with self.db.transaction():
            audit.append(self.db, self.ring, events, self.clock())

    def purged(self, zd_number: str, identity: str | None = None):
        """The purge record of a ZD number that was purged; with ``identity``, only if
        that identity had sent a message with it (others learn nothing of it)."""
        if identity is None:
            return self.db.one("SELECT * FROM purged WHERE zd_number = ?", (zd_number,))
        return self.db.one("SELECT purged.* FROM purged JOIN purged_identities USING (zd_number) "
                           "WHERE zd_number = ? AND identity = ?", (zd_number, identity))

    def get(self, message_id: int):
        return self.db.one("SELECT * FROM messages WHERE id = ?", (message_id,))

    def by_zd(self, zd_number: str) -> list:
        return self.db.execute("SELECT * FROM messages WHERE zd_number = ? ORDER BY id",
                               (zd_number,)).fetchall()

    def history(self, message_id: int) -> list:
        return self.db.execute("SELECT * FROM history WHERE message_id = ? ORDER BY id",
                               (message_id,)).fetchall()

    def listing(self, state: str | None = None, limit: int = 1000) -> list:
        if state is None:
            return self.db.execute("SELECT * FROM messages ORDER BY id DESC LIMIT ?",
                                   (limit,)).fetchall()
        return self.db.execute("SELECT * FROM messages WHERE state = ? ORDER BY id LIMIT ?",
                               (state, limit)).fetchall()

    def route_changes(self, limit: int = 1000) -> list:
        return self.db.execute("SELECT * FROM route_changes ORDER BY id DESC LIMIT ?",
                               (limit,)).fetchall()

    def purge(self, groups: list[tuple[str, str, float]], actor: str, now: float) -> int:
        """Delete the messages of each (case ZD number or ``#id``, rule, last received) in
        one transaction — none received after that last one, which may have come meanwhile —
        with their payloads (a raw input shared with a message that stays, stays), keeping a
        purge record per ZD number, counts and audit records; return how many payloads went."""
        events, removed = [], 0
        with self.db.transaction():
            for key, rule, last in groups:
                rows = self.db.execute("SELECT * FROM messages WHERE id = ?", (int(key[1:]),)) \
                    if key.startswith("#") else self.db.execute(
                        "SELECT * FROM messages WHERE case_zd = ? AND received_at <= ?", (key, last))
                rows = rows.fetchall()
                events += [audit.about(row, actor, "purge", detail=rule) for row in rows]
                self.db.executemany(
                    "INSERT INTO purge_counts VALUES (?, ?, ?, 1) ON CONFLICT (month, kind, "
                    "destination) DO UPDATE SET messages = purge_counts.messages + 1",
                    [(time.strftime("%Y-%m", time.gmtime(row["received_at"])),
                      row["kind"] or row["state"], row["destination"]) for row in rows])
                ids = [(row["id"],) for row in rows]
                self.db.executemany("DELETE FROM history WHERE message_id = ?", ids)
                self.db.executemany("DELETE FROM messages WHERE id = ?", ids)
                outboxes.forget(self.db, ids)
                removed += self._drop_payloads(ids, {row["raw_owner"] for row in rows})
                numbers = {row["zd_number"] for row in rows if row["zd_number"]}
                numbers |= set() if key.startswith("#") else {key}
                self.db.executemany(
                    "INSERT INTO purged VALUES (?, ?, ?, ?) ON CONFLICT (zd_number) DO UPDATE SET "
                    "purged_at = excluded.purged_at, rule = excluded.rule, "
                    "messages = excluded.messages",
                    [(number, now, rule, len(rows)) for number in sorted(numbers)])
                self.db.executemany(
                    "INSERT INTO purged_identities VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [(number, identity) for number in sorted(numbers)
                     for identity in sorted({row["identity"] for row in rows})])
            audit.append(self.db, self.ring, events, now)
        return removed

    def _drop_payloads(self, ids: list[tuple[int]], owners: set[int]) -> int:
        """Delete the outputs of the messages ``ids`` (deleted just now) and the raw inputs
        of ``owners`` that no message names any more; how many."""
        return self.db.executemany("DELETE FROM payloads WHERE message_id = ? AND which = 'out'",
                                   ids) + self.db.executemany(
            "DELETE FROM payloads WHERE message_id = ? AND which = 'raw' AND "
            "NOT EXISTS (SELECT 1 FROM messages WHERE raw_owner = ?)",
            [(owner, owner) for owner in sorted(owners)])

    def reseal(self, batch_bytes: int = 32 << 20) -> tuple[int, int]:
        """Seal every stored payload that is not under the current key again under it, a
        batch of parts per transaction (intake goes on meanwhile; a run stopped half-way
        is finished by running it again); return (parts resealed, parts that do not open,
        left as they are for delivery to quarantine)."""
        resealed, broken, after = 0, 0, (0, "")
        while after is not None:
            with self.db.transaction():
                self.check_current()
                done, bad, after = self._reseal_batch(after, batch_bytes)
            resealed, broken = resealed + done, broken + bad
        return resealed, broken

    def _reseal_batch(self, after: tuple[int, str], batch_bytes: int):
        """Reseal parts after (message id, which) ``after`` until ``batch_bytes`` were sealed;
        return (resealed, unreadable, the last part looked at, or None at the end)."""
        done = bad = size = 0
        for message_id, which, key_id in payloads.parts(self.db, after):
            after = (message_id, which)
            if key_id == self.ring.current:
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
        return done, bad, None

    def sealed_keys(self) -> dict[str, int]:
        """How many stored parts each key id seals (read from the parts' headers)."""
        return payloads.census(self.db)

    def forget_key(self, key_id: str, actor: str) -> None:
        """Drop a retired key's check value (and record who retired it)."""
        with self.db.transaction():
            self.db.execute("DELETE FROM key_checks WHERE key_id = ?", (key_id,))
            audit.append(self.db, self.ring, [audit.Event(actor, "keys-retire", detail=key_id)],
                         self.clock())

    def prune_audit(self, before: float, actor: str) -> int:
        """Remove audit records older than ``before`` (recording that it did); how many."""
        with self.db.transaction():
            removed = audit.prune(self.db, before)
            if removed:
                audit.append(self.db, self.ring, [audit.Event(
                    actor, "audit-prune", detail=f"{removed} records past retention")], self.clock())
        return removed

    def reclaim(self) -> None:
        """Give the space purged messages held back (SQLite: incremental vacuum, the WAL
        truncated; PostgreSQL: autovacuum's work, nothing to do at once)."""
        self.db.reclaim()
