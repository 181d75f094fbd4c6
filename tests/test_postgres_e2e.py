"""A real gatewayd on PostgreSQL: killed with SIGKILL under MLLP/TLS and HTTPS senders, its
database connections terminated, its database server stopped and started again. Every
message acknowledged is stored once and opens; while the database is away nothing is
acknowledged and /healthz says why; the daemon recovers by itself."""

import random
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gateway import keys
from tests.helpers import daemon
from tests.helpers.fakes import Threads, numbered_referral
from tests.helpers.pgcluster import Cluster
from tests.test_crash import check
from tests.test_daemon_crash import Daemon
from tests.test_daemon_e2e import curl, identity, msa, send


def on_postgres(tmp_path: Path, url: str) -> dict:
    """A gatewayd setup on free ports whose store is the PostgreSQL database at ``url``."""
    made = daemon.init(tmp_path / "gw")
    daemon.configure(made, store__url=f'"{url}"')
    return made


class Senders(Threads):
    """An MLLP/TLS sender and an HTTPS sender, each resending a message until it is
    acknowledged (AA, 202) and then going on with the next; ``acked`` holds control ids."""

    def __init__(self, made: dict):
        super().__init__(timeout=60)
        self.made, self.acked, self.refused = made, set(), 0
        self.threads = [threading.Thread(target=self._mllp), threading.Thread(target=self._https)]

    def _mllp(self):
        brink, port = identity(self.made, "his-brink"), self.made["ports"]["mllp"]
        self._loop("MLLP", lambda data, control: msa(send(
            port, self.made, data, brink["cert"], brink["key"])) == [b"MSA", b"AA", control])

    def _https(self):
        self._loop("HTTP", lambda data, _: curl(self.made, "/v1/messages", "his-brink",
                                                data=data)[0] == 202)

    def _loop(self, prefix: str, deliver) -> None:
        index = 0
        while not self.stop.is_set():
            index += 1
            control = f"{prefix}-{index:06d}"
            data = numbered_referral(index, prefix, zd_base=700_000_000 if prefix == "HTTP"
                                     else 500_000_000)
            while not self.stop.is_set():
                try:
                    if deliver(data, control.encode()):
                        self.acked.add(control)
                        break
                    self.refused += 1
                except (OSError, ssl.SSLError, IndexError):
                    pass
                time.sleep(0.05)


def test_sigkill_on_postgresql_loses_no_acknowledged_message(postgres, tmp_path):
    """gatewayd on PostgreSQL killed four times mid-stream (MLLP and HTTPS senders): every
    acknowledged message is stored once and opens, and the database checks out."""
    url = postgres.url(tmp_path / "gw")
    made = on_postgres(tmp_path, url)
    gatewayd = Daemon(made["config"], tmp_path / "gatewayd.log")
    gatewayd.start()
    rng = random.Random(13)
    with Senders(made) as senders:
        try:
            for _ in range(4):
                time.sleep(rng.uniform(1.0, 2.0))
                gatewayd.kill()
                gatewayd.start()
            time.sleep(1.5)
        finally:
            senders.stop.set()
    gatewayd.kill()
    assert len(senders.acked) > 20 and any(c.startswith("HTTP") for c in senders.acked)
    assert check(Path(made["spool"]), senders.acked, keys.load(Path(made["keys"])), url) == []


def _health(made) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{made['ports']['metrics']}/healthz",
                                    timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _until(condition, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    return condition()


def test_terminated_connections_under_load_lose_nothing(postgres, tmp_path):
    """The daemon's database connections are terminated three times while senders send:
    the daemon reconnects alone, and every acknowledged message is stored once."""
    url = postgres.url(tmp_path / "gw")
    made = on_postgres(tmp_path, url)
    gatewayd = daemon.start(made, tmp_path / "gatewayd.log")
    try:
        with Senders(made) as senders:
            for _ in range(3):
                time.sleep(1.0)
                postgres.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "datname = current_database() AND application_name = 'gatewayd'")
            before = len(senders.acked)
            assert _until(lambda: len(senders.acked) > before + 5), "no recovery"
        assert _health(made)[0] == 200, _health(made)
    finally:
        gatewayd.kill()
        gatewayd.wait()
    assert len(senders.acked) > 20
    assert check(Path(made["spool"]), senders.acked, keys.load(Path(made["keys"])), url) == []
    assert "lost the connection to PostgreSQL" in (tmp_path / "gatewayd.log").read_text()


@pytest.fixture
def cluster():
    """A private PostgreSQL server this test may stop and start."""
    problem = Cluster.available()
    if problem:
        pytest.skip(problem)
    made = Cluster()
    made.start()
    yield made
    made.remove()                          # stopped, whatever happened


def test_database_server_stopped_and_started(cluster, tmp_path):
    """With the database server stopped, MLLP gets no ACK (the connection closes), HTTPS
    answers 503 and /healthz answers 503 naming PostgreSQL; started again, the daemon
    recovers alone and everything acknowledged before and after is stored once."""
    made = on_postgres(tmp_path, cluster.url)
    gatewayd = daemon.start(made, tmp_path / "gatewayd.log")
    brink, port = identity(made, "his-brink"), made["ports"]["mllp"]
    try:
        first = numbered_referral(1, "STOP")
        assert msa(send(port, made, first, brink["cert"], brink["key"]))[1] == b"AA"
        cluster.stop()
        assert send(port, made, numbered_referral(2, "STOP"), brink["cert"], brink["key"]) == b""
        status, body = curl(made, "/v1/messages", "his-brink",
                            data=numbered_referral(3, "STOP", zd_base=700_000_000))
        assert status == 503 and b"E-STORE" in body
        status, text = _health(made)
        assert status == 503 and "PostgreSQL" in text
        cluster.start()
        assert _until(lambda: _health(made)[0] == 200), _health(made)
        for index in (2, 4):
            reply = send(port, made, numbered_referral(index, "STOP"), brink["cert"], brink["key"])
            assert msa(reply) == [b"MSA", b"AA", f"STOP-{index:06d}".encode()]
    finally:
        gatewayd.kill()
        gatewayd.wait()
    acked = {f"STOP-{i:06d}" for i in (1, 2, 4)}
    assert check(Path(made["spool"]), acked, keys.load(Path(made["keys"])), cluster.url) == []
