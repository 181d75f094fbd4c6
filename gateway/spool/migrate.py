"""Copying an SQLite store into an empty PostgreSQL database (``gatewayctl store migrate``).

Everything is copied as it is — rows, history, the sealed payloads (still sealed,
same key, same message id), the audit chain with its anchor, counters, purge
records and counts, route changes, key check values, the notifications and their
cursor, the route tables and identities in force, the SFTP outbox listings — table by table
in key order, a batch per transaction. Each batch's
transaction also notes the last key copied (table ``migrate_progress`` in the
target), so a migration killed half-way resumes where it stopped; a target that
holds data but no progress note is refused. The small tables are copied last in
one transaction; the message id sequence and the identity columns continue after
the highest id. Then the copy is verified: every table's count, the audit chain
(intact, ending at the source's head) and every payload opens (a part that did
not open in the source either is named, not hidden). Only then is the progress
note dropped. The source must not change meanwhile: gatewayd is stopped first.
"""

from dataclasses import dataclass, field
from typing import Callable

from gateway import audit
from gateway.errors import GatewayError
from gateway.keys import Keyring
from gateway.spool import payloads, schema
from gateway.spool.db import Database

# table -> its key columns, copied in this order (history after its messages)
KEYED = {"messages": ("id",), "history": ("id",), "payloads": ("message_id", "which"),
         "audit": ("seq",), "route_changes": ("id",), "notifications": ("id",),
         "outbox": ("message_id", "account")}
SMALL = ("key_checks", "purged", "purged_identities", "purge_counts", "schema_version",
         "notify_cursor", "audit_anchor", "tables_in_force")
assert {*KEYED, *SMALL, "counters"} == set(schema.COPIED), "migrate copies every table"
IDENTITIES = ("history", "route_changes", "notifications")     # columns the target numbers
PROGRESS = "CREATE TABLE IF NOT EXISTS migrate_progress (name TEXT PRIMARY KEY, done TEXT NOT NULL)"


class MigrateProblem(GatewayError):
    """The copy cannot be made or does not match its source (one line saying why)."""

    code = "E-MIGRATE"


@dataclass
class Report:
    copied: dict = field(default_factory=dict)        # table -> rows in the target
    resumed: bool = False
    audit_head: tuple = (0, "")
    unreadable: list = field(default_factory=list)    # parts that open in neither store


def run(source: Database, target: Database, ring: Keyring, progress: Callable[[str], None],
        batch_rows: int = 2000, batch_bytes: int = 32 << 20) -> Report:
    """Copy the store behind ``source`` (at the current schema version) into ``target``;
    raise MigrateProblem when the target is not empty or the copy does not verify."""
    if schema.version(source) != schema.VERSION:
        raise MigrateProblem(f"the source store is at schema version {schema.version(source)}; "
                             "upgrade it first (gatewayctl store upgrade)")
    report = Report(resumed=_start(target))
    if report.resumed:
        progress("resuming a migration stopped half-way")
    for table, key in KEYED.items():
        total = source.value(f"SELECT count(*) FROM {table}")
        done = target.value(f"SELECT count(*) FROM {table}")
        while count := _batch(source, target, table, key, batch_rows, batch_bytes):
            done += count
            progress(f"{table}: {done} of {total} copied")
    _finish(source, target)
    report.copied, report.audit_head, report.unreadable = _verify(source, target, ring)
    with target.transaction():
        target.execute("DROP TABLE migrate_progress")
    progress(f"verified: {', '.join(f'{n} {t}' for t, n in report.copied.items())}; audit chain "
             f"intact to record {report.audit_head[0]}; every payload opens"
             + (f" except {len(report.unreadable)} that did not open in the source either"
                if report.unreadable else ""))
    return report


def _start(target: Database) -> bool:
    """Make the target's tables; whether a migration into it was under way. Raise
    MigrateProblem when it holds a store already."""
    schema.prepare(target)
    with target.transaction():
        if "migrate_progress" in target.tables():
            return True
        if target.value("SELECT count(*) FROM messages") or \
                target.value("SELECT count(*) FROM audit"):
            raise MigrateProblem("the target database holds a store already; migrate only into "
                                 "an empty database")
        target.execute(PROGRESS)
    return False


def _batch(source: Database, target: Database, table: str, key: tuple, batch_rows: int,
           batch_bytes: int) -> int:
    """Copy the next rows of ``table`` and note the last key, in one target transaction;
    how many were copied."""
    with target.transaction():
        done = target.value("SELECT done FROM migrate_progress WHERE name = ?", (table,))
        after = _key(key, done)
        columns = ", ".join(key)
        rows = source.execute(
            f"SELECT * FROM {table} WHERE ({columns}) > ({', '.join('?' * len(key))}) "
            f"ORDER BY {columns} LIMIT ?", (*after, batch_rows)).fetchall()
        rows = _within(rows, batch_bytes)
        if not rows:
            return 0
        names = rows[0].keys()
        target.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                           f"({', '.join('?' * len(names))})", [tuple(row) for row in rows])
        last = "\t".join(str(rows[-1][column]) for column in key)
        target.execute("INSERT INTO migrate_progress VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                       "SET done = excluded.done", (table, last))
    return len(rows)


def _key(key: tuple, done: str | None) -> tuple:
    """The last key copied (or one below every key) as values."""
    if done is None:
        return (-1,) if key == ("id",) or key == ("seq",) else (-1, "")
    values = done.split("\t")
    return tuple(int(v) if i == 0 else v for i, v in enumerate(values))


def _within(rows: list, batch_bytes: int) -> list:
    """The first rows of ``rows`` whose bytes stay under ``batch_bytes`` (at least one)."""
    size = 0
    for count, row in enumerate(rows, 1):
        size += sum(len(value) for value in row if isinstance(value, (bytes, str)))
        if size >= batch_bytes:
            return rows[:count]
    return rows


def _finish(source: Database, target: Database) -> None:
    """Copy the small tables whole, set the message id sequence and the identity columns
    after the highest ids (one transaction, safe to run again)."""
    with target.transaction():
        for table in SMALL:
            rows = source.execute(f"SELECT * FROM {table}").fetchall()
            target.execute(f"DELETE FROM {table}")
            if rows:
                names = rows[0].keys()
                target.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                                   f"({', '.join('?' * len(names))})",
                                   [tuple(row) for row in rows])
        target.execute("DELETE FROM counters")
        target.executemany("INSERT INTO counters VALUES (?, ?)", [
            tuple(row) for row in source.execute("SELECT * FROM counters WHERE name != "
                                                 "'message_id'")])
        last = max(source.value(source.dialect.last_id) or 0,
                   source.value("SELECT coalesce(max(id), 0) FROM messages"))
        if last:
            target.execute("SELECT setval('message_ids', ?)", (last,))
        for table in IDENTITIES:
            target.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")


def _verify(source: Database, target: Database, ring: Keyring):
    """(rows per table, the audit head, parts that open in neither store); raise
    MigrateProblem on any difference."""
    copied = {}
    for table in (*KEYED, *SMALL):
        counts = [db.value(f"SELECT count(*) FROM {table}") for db in (source, target)]
        if counts[0] != counts[1]:
            raise MigrateProblem(f"{table}: {counts[1]} rows copied of {counts[0]}")
        copied[table] = counts[1]
    checked, problem, head = audit.verify(target, ring)
    if problem:
        raise MigrateProblem(f"the copied audit chain does not verify: {problem}")
    if head != audit.head(source):
        raise MigrateProblem("the copied audit chain does not end where the source's does")
    before = {(m, w) for m, w, _ in payloads.problems(source, ring)}
    unreadable = []
    for message_id, which, problem in payloads.problems(target, ring):
        if (message_id, which) not in before:
            raise MigrateProblem(f"copied, but does not open: {problem}")
        unreadable.append(problem)
    return copied, head, unreadable
