"""Durable before acknowledged: SIGKILL a child that is ingesting messages, many
times; every message it acknowledged is stored exactly once, its payloads intact
inside the database. The same checker catches a deliberately broken child that
acknowledges before storing."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.spool import db as database
from gateway.spool import payloads
from gateway.spool.store import Store
from tests.helpers.fakes import RING

ROOT = Path(__file__).resolve().parent.parent


def run_with_kills(spool: Path, kills: int, early: bool, seed: int) -> set[str]:
    """Start, kill -9 and restart the child ``kills`` times, resending from the first
    unacknowledged message; return every control id it acknowledged."""
    rng = random.Random(seed)
    acked: list[str] = []
    for _ in range(kills):
        start = len(acked)
        args = [sys.executable, "-m", "tests.helpers.crash_child", str(spool), str(start), "100000"]
        child = subprocess.Popen(args + (["--ack-early"] if early else []), cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate(timeout=30)
        for line in output.splitlines():
            if line.startswith("ack ") and len(line) == len("ack CRASH-000000"):
                acked.append(line[4:])
    return set(acked)


def check(spool: Path, acked: set[str], ring=RING, url: str = "") -> list[str]:
    """Problems found in the spool (or the PostgreSQL store at ``url``): acknowledged
    messages missing or stored twice, payloads missing or not opening, a failing
    integrity check."""
    problems = []
    db = database.connect(url or spool / "gateway.db")
    if db.value(db.dialect.integrity) != "ok":
        problems.append("integrity_check failed")
    counts = dict(db.execute("SELECT control_id, count(*) FROM messages GROUP BY control_id"))
    problems += [f"{c} acknowledged but missing" for c in sorted(acked) if c not in counts]
    problems += [f"{c} stored {n} times" for c, n in counts.items() if n != 1]
    problems += [problem for _, _, problem in payloads.problems(db, ring)]
    problems += [f"message {i} has no converted payload" for (i,) in db.execute(
        "SELECT id FROM messages m WHERE state = 'ready' AND NOT EXISTS (SELECT 1 FROM "
        "payloads p WHERE p.message_id = m.id AND p.which = 'out')")]
    db.close()
    return problems


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_loses_no_acknowledged_message(tmp_path, seed):
    """After repeated SIGKILLs every acknowledged message is stored once, intact."""
    acked = run_with_kills(tmp_path, kills=6, early=False, seed=seed)
    assert acked, "the child acknowledged nothing; the test proved nothing"
    Store(tmp_path, time.time, RING).close()    # a restart: the WAL is taken in
    assert check(tmp_path, acked) == []
    assert not (tmp_path / "payloads").exists()


def test_checker_catches_acknowledge_before_commit(tmp_path):
    """A child that acknowledges before storing loses messages, and the checker says so."""
    for seed in range(3, 8):
        acked = run_with_kills(tmp_path / str(seed), kills=6, early=True, seed=seed)
        if any("missing" in problem for problem in check(tmp_path / str(seed), acked)):
            return
    pytest.fail("the broken child lost nothing in 30 kills: the checker cannot be trusted")
