"""gatewayd with ``process.workers = 2``: a main process and a worker on the same listening
sockets and the same SQLite store — work spread over both, kill -9 of either, SIGHUP and
SIGTERM for the set, and dedup and one audit chain across processes."""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway import control, keys
from gateway.spool import db as database
from gateway.spool.store import Store
from gateway.workers import Shared
from tests.helpers import daemon
from tests.helpers.daemon import wait_for
from tests.helpers.fakes import ROOT
from tests.helpers.senders import Senders
from tests.test_crash import check

WORKER = re.compile(r"worker 1 started: pid (\d+)")


def two_processes(tmp_path: Path, url: str = "") -> tuple[dict, Path]:
    made = daemon.init(tmp_path / "gw")
    daemon.configure(made, process__workers=2)
    if url:
        daemon.configure(made, store__url=f'"{url}"')
    made["url"] = url
    return made, tmp_path / "gatewayd.log"


def worker_pids(log: Path) -> list[int]:
    return [int(pid) for pid in WORKER.findall(log.read_text())]


def serving(log: Path, count: int = 1) -> bool:
    return log.read_text().count("gatewayd worker 1 serving") >= count


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def stored_once(made: dict, acked: set[str]) -> list[str]:
    spool = Path(made["spool"])
    ring = keys.load(Path(made["keys"]))
    if not made.get("url"):
        Store(spool, time.time, ring).close()       # the WAL taken in, as at a restart
    return check(spool, acked, ring, made.get("url", ""))


def test_messages_spread_over_both_processes_stored_once_counted_by_main(tmp_path):
    """Connections land on both processes; every acknowledged message is stored once, its
    log line names the process (``@w1`` for the worker), and main's /metrics counts both."""
    made, log = two_processes(tmp_path)
    gateway = daemon.start(made, log)
    try:
        wait_for(lambda: serving(log), what="the worker")
        with Senders([made], mllp=4, https=0) as senders:
            time.sleep(4)
        acked = senders.acked
        lines = [line for line in log.read_text().splitlines() if "accepted id=" in line]
        by_worker = [line for line in lines if "[gatewayd.mllp@w1]" in line]
        assert len(acked) > 40 and len(lines) == len(acked)
        assert 0 < len(by_worker) < len(lines), "all connections went to one process"
        assert stored_once(made, acked) == []
        time.sleep(2.2)                       # the worker publishes its counts every second
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{made['ports']['metrics']}/metrics", timeout=10).read().decode()
        assert f'gatewayd_received_total{{channel="mllp"}} {len(acked)}\n' in metrics
    finally:
        gateway.terminate()
        gateway.wait(30)


def test_killed_worker_loses_nothing_and_is_started_again(backend, tmp_path):
    """kill -9 of the worker three times during a stream (SQLite, PostgreSQL): every
    acknowledged message is stored once, and the main process starts a new worker each time."""
    made, log = two_processes(tmp_path, backend.url(tmp_path / "gw"))
    gateway = daemon.start(made, log)
    try:
        wait_for(lambda: serving(log), what="the worker")
        with Senders([made], https=0) as senders:
            for kill in range(1, 4):
                time.sleep(1.0)
                os.kill(worker_pids(log)[-1], signal.SIGKILL)
                wait_for(lambda: serving(log, kill + 1), what="the worker started again")
            time.sleep(1.0)
        acked = senders.acked
        pids = worker_pids(log)
        assert len(set(pids)) == 4 and alive(pids[-1]) and gateway.poll() is None
        status = control.ask(Path(made["spool"]), {"command": "status"})
        assert status["pid"] == gateway.pid and status["workers"] == {"1": pids[-1]}
        assert "worker 1 ended" in log.read_text()
        assert len(acked) > 20
        assert stored_once(made, acked) == []
    finally:
        gateway.terminate()
        gateway.wait(30)


def test_killed_main_takes_its_worker_and_a_restart_recovers(tmp_path):
    """kill -9 of the main process during a stream: the worker ends too; gatewayd started
    again serves, and every acknowledged message is stored once."""
    made, log = two_processes(tmp_path)
    gateway = daemon.start(made, log)
    try:
        with Senders([made], https=0) as senders:
            for round_ in range(1, 3):
                wait_for(lambda: serving(log, round_), what="the worker")
                time.sleep(1.0)
                worker = worker_pids(log)[-1]
                gateway.send_signal(signal.SIGKILL)
                gateway.wait()
                wait_for(lambda: not alive(worker), "the worker dying with main", 5)
                gateway = daemon.start(made, log)
            wait_for(lambda: serving(log, 3), what="the worker")
            time.sleep(1.0)
    finally:
        gateway.terminate()
        gateway.wait(30)
    assert len(senders.acked) > 20
    assert stored_once(made, senders.acked) == []


def test_sighup_reaches_the_worker_and_sigterm_stops_both(tmp_path):
    """After SIGHUP to the main process a changed route table is in force in the worker
    too (its messages take the new output format); ``gatewayctl reload`` answers once the
    worker has reloaded as well, and names a worker that does not; SIGTERM ends both processes cleanly."""
    made, log = two_processes(tmp_path)
    gateway = daemon.start(made, log)
    try:
        wait_for(lambda: serving(log), what="the worker")
        table = Path(made["config"]).parent / "routes" / "institutions.csv"
        table.write_text(table.read_text().replace("06005678,Ziekenhuis Eemland,xml,",
                                                   "06005678,Ziekenhuis Eemland,hl7,"))
        gateway.send_signal(signal.SIGHUP)
        wait_for(lambda: "[gatewayd@w1] reloaded route tables" in log.read_text(),
                 what="the worker's reload")
        with Senders([made], https=0) as senders:
            wait_for(lambda: "[gatewayd.mllp@w1] accepted" in log.read_text().split(
                "[gatewayd@w1] reloaded route tables")[1], what="a message stored by the worker")
        acked = senders.acked
        ids = [int(i) for i in re.findall(r"\[gatewayd\.mllp@w1\] accepted id=(\d+)",
                                          log.read_text())]
        db = database.connect(Path(made["spool"]) / "gateway.db")
        formats = {row[0] for row in db.execute(
            f"SELECT format FROM messages WHERE id IN ({','.join(map(str, ids))})")}
        db.close()
        assert acked and formats == {"hl7"}
        table.write_text(table.read_text().replace("06005678,Ziekenhuis Eemland,hl7,",
                                                   "06005678,Ziekenhuis Eemland,xml,"))
        answer = json.loads(daemon.ctl(made, "reload", "--json").stdout)
        assert answer["refused"] == {} and answer["pid"] == gateway.pid
        worker = worker_pids(log)[-1]
        os.kill(worker, signal.SIGSTOP)         # a worker that cannot reload: named, not hidden
        try:
            late = daemon.ctl(made, "reload", "--json", check=False)
        finally:
            os.kill(worker, signal.SIGCONT)
        assert late.returncode == 78
        assert json.loads(late.stdout)["refused"] == {
            "workers": "worker 1 did not confirm the reload"}
        wait_for(lambda: log.read_text().count("[gatewayd@w1] reloaded route tables") == 3,
                 what="the stopped worker's reload once it runs again")
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) == 0
        assert not alive(worker) and "worker 1 stopped" in log.read_text()
    finally:
        if gateway.poll() is None:
            gateway.kill()


def test_two_processes_racing_on_the_same_messages_store_each_once(tmp_path):
    """Two processes on one SQLite store send the same 60 messages in batches of 8, in
    opposite orders: each stored once, both processes' receipts name the same message,
    and ``gatewayctl audit verify`` finds one intact chain."""
    made = daemon.init(tmp_path / "gw")
    Store(Path(made["spool"]), time.time, keys.load(Path(made["keys"]))).close()
    start = time.time() + 2.0
    children = [subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "racing_child.py"), made["config"],
         order, str(start)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for order in ("forward", "backward")]
    answers = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()[-2000:]
        answers.append(json.loads(out))
    assert answers[0] == answers[1] and len(answers[0]) == 60
    db = database.connect(Path(made["spool"]) / "gateway.db")
    counts = dict(db.execute("SELECT control_id, count(*) FROM messages GROUP BY control_id"))
    db.close()
    assert counts == {control_id: 1 for control_id in answers[0]}
    verified = daemon.ctl(made, "audit", "verify").stdout.decode()
    assert verified.startswith("ok: 180 records, chain intact")


def test_only_the_main_process_talks_to_systemd(tmp_path):
    """With a worker running, every notify datagram comes from the main process (its pid,
    by SO_PASSCRED): READY=1, RELOADING=1/READY=1 once per SIGHUP, STOPPING=1, watchdog pings."""
    made, log = two_processes(tmp_path)
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sink.bind(str(tmp_path / "notify"))
    sink.settimeout(20)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000",
           "WATCHDOG_PID": ""}
    gateway = daemon.start(made, log, env)
    states: list[tuple[int, str]] = []

    def until(wanted: str) -> None:
        while not states or states[-1][1] != wanted:
            data, ancillary, _, _ = sink.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = next(struct.unpack("3i", d)[0] for level, kind, d in ancillary
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            states.append((pid, data.decode()))
    try:
        until("READY=1")
        wait_for(lambda: serving(log), what="the worker")
        gateway.send_signal(signal.SIGHUP)
        until("RELOADING=1")
        until("READY=1")
        wait_for(lambda: "[gatewayd@w1] reloaded keys" in log.read_text(), what="worker reload")
        time.sleep(0.5)
        gateway.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert gateway.wait(30) == 0
    finally:
        if gateway.poll() is None:
            gateway.kill()
        sink.close()
    assert {pid for pid, _ in states} == {gateway.pid}
    assert [s for _, s in states if s != "WATCHDOG=1"] == \
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert any(s == "WATCHDOG=1" for _, s in states)


def test_a_late_worker_catches_up_on_every_part_asked_since_its_last_reload(tmp_path):
    """Reload requests a worker missed (signals coalesce) add up: it reloads the parts of
    all of them, everything when it is further behind than the requests kept, nothing
    when it is up to date."""
    shared = Shared(tmp_path)
    everything = ("routes", "identities", "certificates", "keys")
    assert shared.reload_asked(0, everything) == (0, ())          # nothing asked yet
    shared.ask_reload(3, [[2, ["keys"]], [3, ["routes", "keys"]]])
    assert shared.reload_asked(1, everything) == (3, ("keys", "routes"))
    assert shared.reload_asked(2, everything) == (3, ("routes", "keys"))
    assert shared.reload_asked(3, everything) == (3, ())
    assert shared.reload_asked(0, everything) == (3, everything)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_writers_queue_made_by_root_is_owned_like_the_database(tmp_path):
    """The writers' flock file made by root (gatewayctl as root) belongs to the database's
    owner, as SQLite's -wal and -shm do."""
    path = tmp_path / "gateway.db"
    database.connect(path).close()
    Path(f"{path}-writers").unlink()
    os.chown(path, 4321, 4321)
    database.connect(path).close()
    assert os.stat(f"{path}-writers").st_uid == 4321


def test_writers_queue_is_never_required(tmp_path):
    """Where the writers' flock file cannot be opened the store still works."""
    other = tmp_path / "other.db"
    Path(f"{other}-writers").mkdir()             # cannot be opened as a file
    db = database.connect(other)
    with db.transaction():
        db.execute("CREATE TABLE t (x INTEGER)")
    assert db.queue is None and db.value("SELECT count(*) FROM t") == 0
    db.close()
