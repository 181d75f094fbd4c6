"""Shared test material: numbered referrals, route tables on disk, a push destination."""

import hashlib
import os
import signal
import socket
import threading
from pathlib import Path

from twisted.internet import defer

from gateway.keys import Keyring

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (ROOT / "fixtures" / "hl7" / "referral-lf.hl7").read_bytes()
# The same keys in every test process (a crash child and its checker share a spool).
RING = Keyring({"k1": hashlib.sha256(b"test payload key").digest()}, "k1",
               hashlib.sha256(b"test audit key").digest())


def numbered_referral(index: int, prefix: str = "T", zd_base: int = 500_000_000) -> bytes:
    """The HL7 referral fixture with its own control id and ZD number."""
    return TEMPLATE.replace(b"HISX-000042", f"{prefix}-{index:06d}".encode()).replace(
        b"ZD100200300", f"ZD{zd_base + index}".encode())


def write_tables(folder: Path, institutions: str, referrers: str) -> Path:
    """Route tables in ``folder`` with the given data rows (headers added)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "institutions.csv").write_text("agb,name,format,delivery,options\n" + institutions)
    (folder / "referrers.csv").write_text("agb,name,institutions,answer_address\n" + referrers)
    return folder


class PendingDestination:
    """A push destination whose deliveries stay open until the test settles them."""

    def __init__(self):
        self.open: list[defer.Deferred] = []

    def deliver(self, row, payload):
        self.open.append(defer.Deferred())
        return self.open[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Threads:
    """Senders on threads: started on entering, told to ``stop`` and joined on leaving.
    A subclass sets ``self.threads`` and calls ``super().__init__()``."""

    def __init__(self, timeout: float = 30):
        self.stop, self.timeout = threading.Event(), timeout

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout)


def killed_at(line: int):
    """A progress callback that prints each line and kills this process with SIGKILL at
    line ``line`` (0: never): work cut off at a known point."""
    printed = 0

    def progress(text: str) -> None:
        nonlocal printed
        printed += 1
        print(text, flush=True)
        if printed == line:
            os.kill(os.getpid(), signal.SIGKILL)
    return progress


def run_together(work, arguments: list[tuple], seconds: float = 120.0) -> None:
    """``work(*args)`` for each of ``arguments`` at once, a thread each; wait until all are
    done (a thread still running after ``seconds`` fails the test)."""
    threads = [threading.Thread(target=work, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
