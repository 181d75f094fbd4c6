"""Durable intake throughput: intake.accept (decode, route, encode, store) against bare
single-row SQLite WAL commits with synchronous=FULL on the same disk, measured in the
same run; then again with about a million messages already stored, to show that
the cost per message stays flat.

Run: ``.venv/bin/python bench/intake.py [--messages N] [--prefill N] [--dir DIR]``
(``--dir`` outside the repository: the run leaves nothing behind, but git should
not see its temporary files).
Targets (issue 3): intake >= 0.3x the bare commit rate, and within 10% of that
with a million messages stored. The pre-filled rows are metadata only (their
payload files are not created), which is what could make the cost grow.
"""

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gateway import routes  # noqa: E402
from gateway.intake import Envelope, Intake  # noqa: E402
from gateway.spool.store import Store  # noqa: E402
from tests.helpers.fakes import RING, numbered_referral  # noqa: E402


def message(index: int) -> bytes:
    return numbered_referral(index, "BENCH", 600_000_000)


def bare_commits(folder: Path, count: int) -> float:
    db = sqlite3.connect(folder / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    start = time.perf_counter()
    for index in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {index}",))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return count / elapsed


def intake_rate(intake: Intake, first: int, count: int) -> float:
    envelope = Envelope("bench", "bench")
    start = time.perf_counter()
    for index in range(first, first + count):
        intake.accept(message(index), envelope)
    return count / (time.perf_counter() - start)


def prefill(store: Store, count: int) -> None:
    """Insert ``count`` metadata rows (with history and three audit records each) in large
    transactions; the audit chain of these rows is not valid, which the intake does not read."""
    now = time.time()
    batch = 50_000
    for base in range(0, count, batch):
        rows = [(f"prefill-{i}", f"P{i:09d}", f"ZD{800000000 + i}", "referral", "01234567",
                 "06005678", "2026-01-01T00:00:00", "06005678", "xml", "pull", "delivered",
                 now, now, f"00/prefill{i}", "0" * 64, f"ZD{800000000 + i}")
                for i in range(base, min(base + batch, count))]
        store.db.execute("BEGIN")
        store.db.executemany(
            "INSERT INTO messages (identity, control_id, zd_number, kind, sender_agb, recipient_agb,"
            " sent_at, destination, format, delivery, state, received_at, updated_at, raw_name,"
            " raw_sha256, case_zd, content_sha256, raw_owner) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'x',0)", rows)
        store.db.execute("INSERT INTO history (message_id, at, state, actor) SELECT id, received_at,"
                         " state, 'prefill' FROM messages WHERE id > (SELECT coalesce(max(message_id),"
                         " 0) FROM history)")
        store.db.execute("INSERT INTO audit (at, who, behalf, action, message_id, zd_number, patient,"
                         " result, detail, prev, hash) SELECT '2026-01-01T00:00:00.000000+00:00',"
                         " 'prefill', sender_agb, a.action, id, zd_number, hex(randomblob(16)), 'ok',"
                         " '', '', '' FROM messages, (SELECT 'receive' AS action UNION ALL SELECT"
                         " 'convert' UNION ALL SELECT 'route') AS a WHERE id > (SELECT"
                         " coalesce(max(message_id), 0) FROM audit)")
        store.db.execute("UPDATE counters SET value = (SELECT max(id) FROM messages)")
        store.db.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--prefill", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folder = Path(folder)
        bare = bare_commits(folder, args.messages)
        intake = Intake(Store(folder / "spool", time.time, RING), routes.load(ROOT / "gateway" / "routes" /
                                                                         "samples"), 16 * 1024 * 1024)
        empty = intake_rate(intake, 0, args.messages)
        print(f"bare SQLite WAL FULL single-row commits: {bare:8,.0f}/s")
        print(f"intake.accept, empty store:              {empty:8,.0f}/s   {empty / bare:4.2f}x bare")
        start = time.perf_counter()
        prefill(intake.store, args.prefill)
        print(f"(pre-filled {args.prefill:,} messages in {time.perf_counter() - start:.0f}s)")
        bare_again = bare_commits(Path(tempfile.mkdtemp(dir=folder)), args.messages)
        full = intake_rate(intake, args.messages, args.messages)
        print(f"bare commits again:                      {bare_again:8,.0f}/s")
        print(f"intake.accept, {args.prefill:,} stored:      {full:8,.0f}/s   {full / bare_again:4.2f}x "
              f"bare; {full / empty:4.2f}x the empty-store rate")


if __name__ == "__main__":
    main()
