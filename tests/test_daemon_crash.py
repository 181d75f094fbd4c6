"""SIGKILL gatewayd during a stream of MLLP/TLS messages whose sender resends until it
gets AA: afterwards every acknowledged message is stored exactly once, intact."""

import json
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway import keys
from gateway.spool.store import Store
from tests.helpers.fakes import free_port, numbered_referral
from tests.test_crash import check
from tests.test_daemon_e2e import identity, msa, send

ROOT = Path(__file__).parent.parent


class Daemon:
    def __init__(self, config: str, log: Path):
        self.config, self.log, self.process = config, log, None

    def start(self):
        with open(self.log, "a") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "-c",
                                             self.config], cwd=ROOT, stdout=out, stderr=out)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def test_sigkill_during_mllp_stream(tmp_path):
    """Killed five times mid-stream, the daemon loses no acknowledged message and stores none twice."""
    port = free_port()
    made = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", str(tmp_path / "gw"), "--mllp-port", str(port),
         "--https-port", str(free_port()), "--metrics-port", str(free_port()), "--json"],
        capture_output=True, check=True, cwd=ROOT).stdout)
    brink = identity(made, "his-brink")
    daemon = Daemon(made["config"], tmp_path / "gatewayd.log")
    daemon.start()
    acked: set[str] = set()
    stop = threading.Event()

    def sender():
        index = 0
        while not stop.is_set():
            index += 1
            message = numbered_referral(index, "KILL")
            while not stop.is_set():
                try:
                    reply = send(port, made, message, brink["cert"], brink["key"])
                    if msa(reply) == [b"MSA", b"AA", f"KILL-{index:06d}".encode()]:
                        acked.add(f"KILL-{index:06d}")
                        break
                except (OSError, ssl.SSLError, IndexError):
                    time.sleep(0.02)

    thread = threading.Thread(target=sender)
    thread.start()
    rng = random.Random(7)
    try:
        for _ in range(5):
            time.sleep(rng.uniform(1.0, 2.0))
            daemon.kill()
            time.sleep(0.1)
            daemon.start()
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=30)
        daemon.kill()
    assert len(acked) > 20, "too few messages acknowledged for the test to mean anything"
    spool = Path(made["spool"])
    ring = keys.load(Path(made["keys"]))
    Store(spool, time.time, ring).close()
    assert check(spool, acked, ring) == []
