"""Durable intake throughput and CPU per message, against bare SQLite commits of the same run.

Measures on one disk:

1. bare single-row SQLite WAL commits with ``synchronous=FULL`` (the floor: one
   sync per commit) and one sequential sender through ``intake.accept`` (decode,
   route, encode, sealed payloads, rows, history, audit, one commit each), in
   alternating rounds; the medians and their ratio;
2. eight concurrent senders, each waiting for its receipt before sending again,
   stored in batches of everything waiting, waiting up to 5 ms for as many as the
   last batch held, a reader thread reading a batch (``Intake.prepare``) while a
   writer thread commits the one before (``Intake.commit``), as the daemon's group
   commit does; messages/s, the ratio to the single sender,
   the mean batch; then the same 8 senders spread over 2 processes with a store
   connection and a writer each, as ``process.workers = 2`` runs gatewayd (both
   cores: one process decodes and encodes while the other commits);
3. with ``--prefill N``: the same again after N more messages with their sealed
   payloads, history and audit records were put into the store (N=1,000,000 is
   the aim's figure and takes minutes and about 8 GB of disk), against the
   empty-store figures of this run.

Each line also gives the process's CPU time (user + system) per message.

With ``--store postgresql://…`` the same rounds run again on a PostgreSQL store (in a
scratch schema of that database, dropped afterwards), against bare single-row
PostgreSQL commits of the same run, with the ratios to this run's SQLite figures.

Run: ``.venv/bin/python bench/intake.py [--messages N] [--rounds R] [--prefill N] [--dir DIR]
[--store URL]`` (``--dir``: a folder on the disk to measure, outside the repository).
Aims (issue 12): one sender >= 0.5x the bare commit rate; 8 senders >= 5x one
sender; flat (within 10 %) with 1,000,000 stored.
"""

import argparse
import multiprocessing
import os
import queue
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gateway import routes  # noqa: E402
from gateway.intake import Envelope, Intake  # noqa: E402
from gateway.spool import db as database  # noqa: E402
from gateway.spool.store import Store  # noqa: E402
from tests.helpers.pgcluster import scratch_schema  # noqa: E402
from tests.helpers.fakes import RING, numbered_referral  # noqa: E402

ENVELOPE = Envelope("bench", "bench")


class Numbers:
    """Fresh numbered referrals (control ids and ZD numbers never repeat in a run)."""

    def __init__(self):
        self.next = 0

    def take(self, count: int) -> list[bytes]:
        first, self.next = self.next, self.next + count
        return [numbered_referral(i, "BENCH", 600_000_000) for i in range(first, first + count)]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_commits(folder: Path, count: int) -> float:
    db = sqlite3.connect(folder / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    start = time.perf_counter()
    for index in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {index}",))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return count / elapsed


def bare_postgres_commits(url: str, count: int) -> float:
    """Single-row commits per second on PostgreSQL (synchronous_commit as the server has it)."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS bare (id BIGSERIAL PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for index in range(count):
            with db.transaction():
                db.execute("INSERT INTO bare (v) VALUES (%s)", (f"row {index}",))
        return count / (time.perf_counter() - start)


def one_sender(intake: Intake, messages: list[bytes]) -> tuple[float, float]:
    """(messages/s, CPU ms per message) for ``intake.accept`` one after another."""
    used, start = cpu(), time.perf_counter()
    for message in messages:
        intake.accept(message, ENVELOPE)
    elapsed = time.perf_counter() - start
    return len(messages) / elapsed, (cpu() - used) / len(messages) * 1000


def senders(intake: Intake, messages: list[bytes], count: int = 8) -> tuple[float, float, float]:
    """(messages/s, CPU ms per message, mean batch) for ``count`` senders waiting for
    their receipts, stored in batches of whatever waits the way the daemon's group commit
    stores them: a reader thread reads a batch (``Intake.prepare``) while a writer thread
    commits the one before (``Intake.commit``)."""
    waiting: list[tuple[bytes, threading.Event]] = []
    ready, done = threading.Condition(), threading.Event()
    handoff: queue.Queue = queue.Queue(maxsize=1)     # a batch read, waiting for the writer
    batches = []

    def reader():
        last = 1
        while not done.is_set():
            with ready:
                while not waiting and not done.is_set():
                    ready.wait(0.1)
                if len(waiting) < last:         # the daemon's gather: up to 5 ms for company
                    ready.wait_for(lambda: len(waiting) >= last, 0.005)
                batch = waiting[:256]
                del waiting[:256]
                last = max(1, len(batch))
            if batch:
                handoff.put((batch, intake.prepare([(message, ENVELOPE) for message, _ in batch])))
                handoff.join()                  # the next is read once the writer took this one
        handoff.put(None)

    def writer():
        while (taken := handoff.get()) is not None:
            handoff.task_done()
            batch, prepared = taken
            intake.commit(prepared)
            batches.append(len(batch))
            for _, event in batch:
                event.set()

    def sender(mine: list[bytes]):
        for message in mine:
            event = threading.Event()
            with ready:
                waiting.append((message, event))
                ready.notify()
            event.wait()

    threads = [threading.Thread(target=sender, args=(messages[n::count],)) for n in range(count)]
    stages = [threading.Thread(target=reader), threading.Thread(target=writer)]
    used, start = cpu(), time.perf_counter()
    for thread in stages + threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    done.set()
    for thread in stages:
        thread.join()
    return len(messages) / elapsed, (cpu() - used) / len(messages) * 1000, statistics.mean(batches)


def in_processes(intake: Intake, messages: list[bytes], processes: int,
                 count: int = 8) -> tuple[float, float, float]:
    """``senders`` spread over ``processes`` processes, each with its own connection to the
    same store and its own writer, as ``process.workers`` runs gatewayd (their writers take
    turns at the commit; one decodes and encodes while another syncs): (messages/s, CPU ms
    per message of all of them, mean batch)."""
    context = multiprocessing.get_context("fork")
    ready, results = context.Barrier(processes + 1), context.Queue()
    children = [context.Process(target=_senders_process, args=(
        intake, messages[n::processes], count // processes, ready, results))
        for n in range(processes)]
    for child in children:
        child.start()
    ready.wait()
    start = time.perf_counter()
    found = [results.get() for _ in children]
    elapsed = time.perf_counter() - start
    for child in children:
        child.join()
    return (len(messages) / elapsed, sum(used for used, _ in found) / len(messages) * 1000,
            statistics.mean(batch for _, batch in found))


def _senders_process(intake: Intake, messages: list[bytes], count: int, ready, results) -> None:
    """In a forked child: a store connection of its own, then ``senders``; reports (CPU
    seconds, mean batch)."""
    store = Store(intake.store.root, time.time, intake.store.ring, other_thread=True,
                  url=intake.store.db.target if intake.store.db.backend != "sqlite" else "")
    mine = Intake(store, intake.tables, intake.limits.max_bytes)
    ready.wait()
    used = cpu()
    _, _, batch = senders(mine, messages, count)
    results.put((cpu() - used, batch))
    store.close()


def measure(intake: Intake, numbers: Numbers, folder: Path, count: int, rounds: int,
            url: str = "", processes: int = 2) -> dict:
    """Medians over alternating rounds of bare commits (SQLite, or PostgreSQL at ``url``)
    and one sender; then 8 senders in one process, and in ``processes``."""
    bare, single, single_cpu = [], [], []
    for _ in range(rounds):
        bare.append(bare_postgres_commits(url, count) if url else bare_commits(folder, count))
        rate, used = one_sender(intake, numbers.take(count))
        single.append(rate)
        single_cpu.append(used)
    many, many_cpu, batch = senders(intake, numbers.take(count * 4))
    spread = in_processes(intake, numbers.take(count * 4), processes)
    return {"bare": statistics.median(bare), "single": statistics.median(single),
            "single_cpu": statistics.median(single_cpu), "many": many, "many_cpu": many_cpu,
            "batch": batch, "spread": spread, "processes": processes}


def report(title: str, found: dict, empty: dict | None = None,
           bare: str = "bare SQLite WAL FULL single-row commits", against: str = "the empty store"
           ) -> None:
    print(title)
    print(f"  {bare:<38} {found['bare']:8,.0f}/s")
    print(f"  one sender, intake.accept              {found['single']:8,.0f}/s  "
          f"{found['single'] / found['bare']:5.2f}x bare   "
          f"CPU {found['single_cpu']:.3f} ms/message")
    print(f"  8 senders, batched (mean {found['batch']:4.1f})         {found['many']:8,.0f}/s  "
          f"{found['many'] / found['single']:5.2f}x one sender   "
          f"CPU {found['many_cpu']:.3f} ms/message")
    rate, used, batch = found["spread"]
    print(f"  8 senders, {found['processes']} processes (mean {batch:4.1f})     {rate:8,.0f}/s  "
          f"{rate / found['single']:5.2f}x one sender   CPU {used:.3f} ms/message")
    if empty:
        print(f"  against {against}: one sender {found['single'] / empty['single']:.2f}x, "
              f"8 senders {found['many'] / empty['many']:.2f}x, CPU per message "
              f"{found['many_cpu'] / empty['many_cpu']:.2f}x")


def prefill(store: Store, count: int, numbers: Numbers) -> None:
    """Add ``count`` delivered messages, each with its two sealed payloads (the same sizes
    as the bench's), two history rows and three audit records, in large transactions.
    Their audit records are not chained (the intake only reads the last one)."""
    sample = numbers.take(1)[0]
    probe = Intake(Store(store.root, time.time, RING), routes.load(ROOT / "gateway" / "routes" /
                                                                    "samples"), 1 << 24)
    (receipt,) = probe.accept(sample, ENVELOPE)
    raw, out = (probe.store.payload(probe.store.get(receipt.id), w) for w in ("raw", "out"))
    probe.store.close()
    db = store.db
    db.execute("PRAGMA synchronous=OFF")
    (first,) = db.execute("SELECT value FROM counters WHERE name = 'message_id'").fetchone()
    now = time.time()
    for base in range(first + 1, first + 1 + count, 20_000):
        ids = range(base, min(base + 20_000, first + 1 + count))
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO messages (id, identity, control_id, content_sha256, zd_number, case_zd, "
            "kind, sender_agb, recipient_agb, sent_at, destination, format, delivery, state, "
            "received_at, updated_at, raw_owner, patient) VALUES (?, 'prefill', ?, ?, ?, ?, "
            "'referral', '01234567', '06005678', '2026-01-01T00:00:00', '06005678', 'xml', "
            "'pull', 'delivered', ?, ?, ?, ?)",
            [(i, f"P{i:09d}", f"{i:064x}", f"ZD{800000000 + i}", f"ZD{800000000 + i}", now, now,
              i, f"{i * 7919:032x}") for i in ids])
        db.executemany("INSERT INTO payloads VALUES (?, ?, ?)",
                       [(i, which, RING.seal(data, i)) for i in ids
                        for which, data in (("raw", raw), ("out", out))])
        db.executemany("INSERT INTO history (message_id, at, state, actor) VALUES (?, ?, ?, ?)",
                       [(i, now, state, "prefill") for i in ids for state in ("received", "ready")])
        db.executemany(
            "INSERT INTO audit (at, who, behalf, action, message_id, zd_number, patient, result, "
            "detail, prev, hash) VALUES ('2026-01-01T00:00:00.000000+00:00', 'prefill', "
            "'01234567', ?, ?, ?, ?, 'ok', '', '', '')",
            [(action, i, f"ZD{800000000 + i}", f"{i * 7919:032x}") for i in ids
             for action in ("receive", "convert", "route")])
        db.execute("UPDATE counters SET value = ? WHERE name = 'message_id'", (ids[-1],))
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA synchronous=FULL")
    os.sync()           # written without syncs: the disk writes it back now, not while measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="per round and sender run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefill", type=int, default=0,
                        help="then store this many more and measure again (aim: 1000000)")
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    parser.add_argument("--store", default="", help="also measure a PostgreSQL store in this "
                        "database (postgresql://…; a scratch schema, dropped afterwards)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folder = Path(folder)
        numbers = Numbers()
        intake = Intake(Store(folder / "spool", time.time, RING, other_thread=True),
                        routes.load(ROOT / "gateway" / "routes" / "samples"), 16 * 1024 * 1024)
        empty = measure(intake, numbers, folder, args.messages, args.rounds)
        report("empty store", empty)
        if args.prefill:
            start = time.perf_counter()
            prefill(intake.store, args.prefill, numbers)
            size = (folder / "spool" / "gateway.db").stat().st_size / 1e9
            print(f"(stored {args.prefill:,} more messages with their payloads in "
                  f"{time.perf_counter() - start:.0f} s; database {size:.1f} GB)")
            full = measure(intake, numbers, folder, args.messages, args.rounds)
            report(f"{args.prefill:,} messages stored", full, empty)
        if args.store:
            with scratch_schema(args.store) as url:
                on_postgres = Intake(Store(folder / "pg", time.time, RING, other_thread=True,
                                           url=url), intake.tables, 16 * 1024 * 1024)
                found = measure(on_postgres, numbers, folder, args.messages, args.rounds, url)
                on_postgres.store.close()
                report(f"PostgreSQL store ({database.where(args.store)})", found, empty,
                       "bare PostgreSQL single-row commits", "SQLite in this run")


if __name__ == "__main__":
    main()
