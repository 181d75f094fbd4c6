"""A real gatewayd on PostgreSQL: killed with SIGKILL under MLLP/TLS and HTTPS senders, its
database connections terminated, its database server stopped and started again. Every
message acknowledged is stored once and opens; while the database is away nothing is
acknowledged and /healthz says why; the daemon recovers by itself."""

import random
import time
from pathlib import Path

from gateway import keys
from tests.helpers import daemon
from tests.helpers.fakes import numbered_referral
from tests.helpers.senders import Senders
from tests.test_crash import check
from tests.test_daemon_crash import Daemon
from tests.test_daemon_e2e import curl, identity, msa, send


def on_postgres(tmp_path: Path, url: str) -> dict:
    """A gatewayd setup on free ports whose store is the PostgreSQL database at ``url``."""
    made = daemon.init(tmp_path / "gw")
    daemon.configure(made, store__url=f'"{url}"')
    return made


def test_sigkill_on_postgresql_loses_no_acknowledged_message(postgres, tmp_path):
    """gatewayd on PostgreSQL killed four times mid-stream (MLLP and HTTPS senders): every
    acknowledged message is stored once and opens, and the database checks out."""
    url = postgres.url(tmp_path / "gw")
    made = on_postgres(tmp_path, url)
    gatewayd = Daemon(made["config"], tmp_path / "gatewayd.log")
    gatewayd.start()
    rng = random.Random(13)
    with Senders([made]) as senders:
        try:
            for _ in range(4):
                time.sleep(rng.uniform(1.0, 2.0))
                gatewayd.kill()
                gatewayd.start()
            # enough after the last start, however slowly a loaded machine restarts it
            assert daemon.until(lambda: len(senders.acked) > 20 and any(
                c.startswith("HTTP") for c in senders.acked), 60), len(senders.acked)
        finally:
            senders.stop.set()
    gatewayd.kill()
    assert check(Path(made["spool"]), senders.acked, keys.load(Path(made["keys"])), url) == []


def test_terminated_connections_under_load_lose_nothing(postgres, tmp_path):
    """The daemon's database connections are terminated three times while senders send:
    the daemon reconnects alone, and every acknowledged message is stored once."""
    url = postgres.url(tmp_path / "gw")
    made = on_postgres(tmp_path, url)
    gatewayd = daemon.start(made, tmp_path / "gatewayd.log")
    try:
        with Senders([made]) as senders:
            for _ in range(3):
                time.sleep(1.0)
                postgres.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                             "datname = current_database() AND application_name = 'gatewayd'")
            before = len(senders.acked)
            assert daemon.until(lambda: len(senders.acked) > before + 5), "no recovery"
        assert daemon.health(made)[0] == 200, daemon.health(made)
    finally:
        gatewayd.kill()
        gatewayd.wait()
    assert len(senders.acked) > 20
    assert check(Path(made["spool"]), senders.acked, keys.load(Path(made["keys"])), url) == []
    assert "lost the connection to PostgreSQL" in (tmp_path / "gatewayd.log").read_text()


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
        status, text = daemon.health(made)
        assert status == 503 and "PostgreSQL" in text
        cluster.start()
        assert daemon.until(lambda: daemon.health(made)[0] == 200), daemon.health(made)
        for index in (2, 4):
            reply = send(port, made, numbered_referral(index, "STOP"), brink["cert"], brink["key"])
            assert msa(reply) == [b"MSA", b"AA", f"STOP-{index:06d}".encode()]
    finally:
        gatewayd.kill()
        gatewayd.wait()
    acked = {f"STOP-{i:06d}" for i in (1, 2, 4)}
    assert check(Path(made["spool"]), acked, keys.load(Path(made["keys"])), cluster.url) == []
