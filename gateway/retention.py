"""Retention: what is kept how long, and the purge that enforces it.

A case's messages (the referral with its cancellations and supplements, or a
teleconsult request with its answer: the messages whose ZD number, or the number
they reply to, is the case's, ``_ANTW`` left off) are purged together, once the last of
them was received longer ago than the rule for their kind: referrals
``retention.referral_days`` (180), teleconsultation ``retention.teleconsult_days``
(548, 18 months). Input that could not be read (no ZD number) follows the
referral rule on its own. Purging deletes the rows, their history and their
sealed payloads (a raw input another remaining message shares stays); it keeps
per ZD number only when and under which rule it was purged (so resend, cancel
and status can say so), and per month, kind and destination only how many
messages were purged. Audit records older than ``retention.audit_days`` go too.
Then SQLite gives the space back (incremental vacuum, WAL truncated), so the
purged ciphertexts leave the database file (PostgreSQL: autovacuum reuses it). SFTP outbox files of purged
messages and quarantined outbox files are removed once they are older than a
day or the rule; ``.err`` files in SFTP ``errors/`` folders once they are older
than ``retention.sftp_error_days``.
"""

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway import keys
from gateway.spool import queries
from gateway.spool.store import Store

DAY = 86400
TELECONSULT = ("teleconsult-request", "teleconsult-answer")
ACTOR = "retention"


@dataclass(frozen=True)
class Group:
    key: str            # the ZD number without _ANTW, or "#<id>" for a message without one
    rule: str
    messages: int
    last_received: float


@dataclass
class Report:
    groups: list[Group] = field(default_factory=list)
    payloads: int = 0
    files: int = 0
    audit_records: int = 0

    @property
    def messages(self) -> int:
        return sum(group.messages for group in self.groups)


def rules(settings) -> dict[bool, tuple[str, int]]:
    """(rule text, days) for teleconsultation (True) and referrals (False)."""
    return {False: (f"referral: {settings.retention_referral_days} days",
                    settings.retention_referral_days),
            True: (f"teleconsultation: {settings.retention_teleconsult_days} days",
                   settings.retention_teleconsult_days)}


def due(store: Store, settings, now: float) -> list[Group]:
    """The ZD numbers (and unnumbered messages) whose retention has ended at ``now``."""
    found = []
    for row in queries.cases(store.db, TELECONSULT):
        rule, days = rules(settings)[bool(row["teleconsult"])]
        if row["last"] < now - days * DAY:
            found.append(Group(row["grp"], rule, row["messages"], row["last"]))
    return found


def purge(store: Store, settings, now: float, dry_run: bool = False) -> Report:
    """Purge everything whose retention ended at ``now`` (or, with ``dry_run``, say what)."""
    report = Report(due(store, settings, now))
    if dry_run:
        return report
    for start in range(0, len(report.groups), 200):   # short transactions: intake goes on
        chunk = report.groups[start:start + 200]
        report.payloads += store.purge([(g.key, g.rule, g.last_received) for g in chunk], ACTOR,
                                       now)
    report.files = _sweep_files(store, settings, time.time())   # file ages: real time
    report.audit_records = store.prune_audit(now - settings.retention_audit_days * DAY, ACTOR)
    store.reclaim()
    return report


def sweep(settings, ring) -> int:
    """Remove this node's own files past their time (``_sweep_files``) on a store
    connection of its own (a thread may run it); how many. Every node does it daily:
    the purge of the store, which sweeps too, runs on one node only."""
    store = Store.configured(settings, time.time, ring)
    try:
        return _sweep_files(store, settings, time.time())
    finally:
        store.close()


def _sweep_files(store: Store, settings, now: float) -> int:
    """Remove outbox files of messages that are gone, quarantined outbox files past
    the referral rule and SFTP .err files past retention.sftp_error_days."""
    removed = 0
    for path in Path(settings.paths_sftp).glob("*/outbox/*"):
        if _older(path, now, DAY) and store.get(_sealed_for(path)) is None:
            path.unlink(missing_ok=True)
            removed += 1
    for path in Path(settings.paths_sftp).glob("*/errors/*.err"):
        if _older(path, now, settings.retention_sftp_error_days * DAY):
            path.unlink(missing_ok=True)
            removed += 1
    for path in (store.root / "quarantine").glob("*"):
        if _older(path, now, settings.retention_referral_days * DAY):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _sealed_for(path: Path) -> int:
    """The message id an outbox file is sealed to (0 when it is not a sealed file)."""
    return (keys.file_header(path) or ("", 0))[1]


def _older(path: Path, now: float, seconds: float) -> bool:
    try:
        return path.stat().st_mtime < now - seconds
    except FileNotFoundError:
        return False


def purge_text(zd_number: str, purged) -> str:
    """What resend, cancel and status say about a purged ZD number."""
    when = dt.datetime.fromtimestamp(purged["purged_at"]).strftime("%Y-%m-%d")
    return f"{zd_number} was purged on {when} under the retention rule ({purged['rule']})"


def as_of(date: dt.date | None) -> float:
    """Seconds for the start of ``date`` in local time (now without a date)."""
    if date is None:
        return time.time()
    return dt.datetime.combine(date, dt.time()).timestamp()


def describe(report: Report) -> dict:
    return {"messages": report.messages, "zd_numbers": [g.key for g in report.groups],
            "by_rule": {rule: sum(g.messages for g in report.groups if g.rule == rule)
                        for rule in sorted({g.rule for g in report.groups})},
            "payloads_removed": report.payloads, "files_removed": report.files,
            "audit_records_removed": report.audit_records}

