"""Once-only jobs: held by one node at a time, taken over when its holder stops renewing
(or its process is killed), let go at once on a clean stop; the daily purge runs once a
day over all nodes, and again only when a run was cut off."""

import signal
import subprocess
import sys
import time

from twisted.internet import defer

from gateway.spool import jobs
from gateway.spool.store import Store
from tests.helpers.fakes import RING, ROOT

DAY = 86400


def nodes(backend, folder, clock, *names: str, lease: float = 30) -> list[jobs.Jobs]:
    return [jobs.Jobs(backend.store(folder, clock.seconds, RING), name, clock.seconds, lease)
            for name in names]


def test_a_job_stays_with_one_node_and_moves_when_it_stops_renewing(pg_backend, tmp_path,
                                                                        clock):
    """Two nodes ask for the job every 5 s: the first to ask keeps it while it renews;
    once it stops, the other has it within the lease, and the first cannot take it back."""
    a, b = nodes(pg_backend, tmp_path, clock, "a", "b")
    assert a.hold("notifications") and not b.hold("notifications")
    for _ in range(20):
        clock.advance(5)
        assert a.hold("notifications") and not b.hold("notifications")
    clock.advance(25)                                       # a stopped: 30 s since its renewal
    assert not b.hold("notifications")
    clock.advance(5)
    assert b.hold("notifications") and not a.hold("notifications")
    assert a.holders()["notifications"][0] == "b"


def test_a_clean_stop_hands_the_job_over_at_once(backend, tmp_path, clock):
    """A node stopping cleanly lets its jobs go: the next node asking has them."""
    a, b = nodes(backend, tmp_path, clock, "a", "b")
    assert a.hold("notifications")
    a.stop()
    assert b.hold("notifications")


def test_on_sqlite_a_job_is_always_this_nodes(backend, tmp_path, clock):
    """On SQLite (one node) a process started again under a new name (host:pid) has the
    jobs at once, and does a purge its earlier life left cut off; on PostgreSQL it waits
    for the old leases to run out."""
    (old,) = nodes(backend, tmp_path, clock, "host:100")
    assert old.hold("notifications") and old.begin("purge", DAY) is not None
    (new,) = nodes(backend, tmp_path, clock, "host:200")
    alone = backend.name == "sqlite"
    assert new.hold("notifications") == alone
    assert (new.begin("purge", DAY) is not None) == alone


def test_the_daily_job_runs_once_a_day_over_all_nodes(backend, tmp_path, clock):
    """The purge runs on the first node that looks; not again on either node within the
    day; the next day once more; a failed run is not counted and runs again."""
    a, b = nodes(backend, tmp_path, clock, "a", "b")
    runs, outcome = [], {"fail": False}

    def work(name):
        def purge():
            runs.append(name)
            if outcome["fail"]:
                raise RuntimeError("store away")
        return purge
    purge_a, purge_b = (n.daily("purge", DAY, work(name)) for n, name in ((a, "a"), (b, "b")))
    purge_a()
    for _ in range(12):
        clock.advance(DAY / 12 - 1)
        purge_b()
        purge_a()
    assert runs == ["a"]
    clock.advance(12)
    purge_b()
    purge_a()
    assert runs == ["a", "b"]
    clock.advance(DAY)
    outcome["fail"] = True
    failed = purge_a()
    failed.addErrback(lambda failure: failure.trap(RuntimeError))
    outcome["fail"] = False
    purge_b()
    assert runs == ["a", "b", "a", "b"]
    assert a.holders()["purge"][2] == clock.seconds()


def test_a_daily_run_cut_off_is_done_by_another_node(pg_backend, tmp_path, clock):
    """A node that dies while its purge runs leaves no last run: another node purges once
    the lease ran out (not before, and not while the first one renews)."""
    a, b = nodes(pg_backend, tmp_path, clock, "a", "b")
    running = defer.Deferred()
    assert a.daily("purge", DAY, lambda: running)() is not None
    runs = []
    purge_b = b.daily("purge", DAY, lambda: runs.append("b"))
    for _ in range(10):
        clock.advance(10)
        a.renew()                                          # a's purge still runs
        assert purge_b() is None
    clock.advance(29)                                      # a dies: no more renewals
    assert purge_b() is None
    clock.advance(2)
    purge_b()
    assert runs == ["b"]


def test_the_job_moves_when_its_holder_is_killed(postgres, pg_backend, tmp_path):
    """Two node processes on one PostgreSQL database ask for a job every 0.1 s (lease 2 s):
    runs come from one node only; after kill -9 of that node the other runs it within the
    lease and a second, and never while the first still ran."""
    url = pg_backend.url(tmp_path / "spool")
    store = Store(tmp_path / "spool", time.time, RING, url=url)     # made before the nodes race
    store.db.execute("CREATE TABLE job_runs (node TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)")
    store.close()
    children = {name: subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.jobs_child", str(tmp_path / "spool"), url, name,
         "2"], cwd=ROOT, stdout=subprocess.PIPE, text=True) for name in ("a", "b")}
    try:
        for child in children.values():
            assert child.stdout.readline().strip() == "ready"
        time.sleep(3)
        (holder,) = {node for node, in postgres.run(f"SELECT node FROM "
                                                    f"{_schema(url)}.job_runs")}
        other = "b" if holder == "a" else "a"
        children[holder].send_signal(signal.SIGKILL)
        children[holder].wait(10)
        killed_at = time.time()
        time.sleep(4)
        runs = postgres.run(f"SELECT node, at FROM {_schema(url)}.job_runs ORDER BY at")
    finally:
        for child in children.values():
            child.kill()
            child.wait(10)
    last_of_holder = max(at for node, at in runs if node == holder)
    first_of_other = min(at for node, at in runs if node == other)
    assert last_of_holder < killed_at < first_of_other < killed_at + 3
    assert [node for node, _ in runs] == sorted([node for node, _ in runs],
                                                key=lambda node: node == other)
    assert sum(node == other for node, _ in runs) >= 5


def _schema(url: str) -> str:
    return url.rsplit("search_path%3D", 1)[1]
