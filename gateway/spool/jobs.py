"""Once-only jobs: work that one node of a store does at a time, and the daily ones' last run.

The retention purge (with the daily audit head line) and the notifications (which
also look for long-unpulled messages) must not run on two nodes at once: two purges
would race, two notifiers would send every notification twice. Each such job has a
row in ``jobs`` (name, node, ``until``, ``last_run``): the node named in it holds the
job until ``until`` (a lease of ``node.job_lease_seconds``). ``hold`` takes a job
that is free or whose lease ran out, or renews this node's own lease, in one
``UPDATE ... WHERE`` (atomic on both backends: on PostgreSQL a second node's UPDATE
waits for the first and then finds the lease taken). The holder renews every few
seconds while it lives, so it keeps the job; when it dies another node takes the
job over within one lease plus one round (5 s). A node that stops cleanly lets its
jobs go at once (``stop``).

Daily jobs (``begin``/``finish``): a node begins the job only when its ``last_run``
is at least a day old, and records the start time as ``last_run`` when the run ends,
so the purge never runs twice within a day on any node; a run cut off (its node died)
is done again by another node once the lease ran out.

Why lease rows and not PostgreSQL session advisory locks: the same SQL works on both
backends and on a test's clock; the last run lives in the same row; and the time to
take over is the lease, whatever the server's TCP keepalive settings (a session lock
of a node cut off by the network stays held until the server notices the connection
is gone, two hours with the default ``tcp_keepalives_idle``), with no extra
connection per node. Leases compare the nodes' clocks: keep them in sync (NTP); a
skew well under the lease is harmless. On SQLite (one node) a job is always this
node's: a lease left by an earlier life of the process does not hold it up.
"""

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import StoreError
from gateway.spool.claims import ONE_NODE

log = Logger(namespace="gatewayd.jobs")
TAKE = ("UPDATE jobs SET node = ?, until = ? WHERE name = ? AND (node = ? OR until <= ? OR ?)")


class Jobs:
    """This node's (``node``) leases on the once-only jobs of ``store``, on ``clock``."""

    def __init__(self, store, node: str, clock: Callable[[], float], lease: float):
        self.db, self.node, self.clock, self.lease = store.db, node, clock, lease
        self.alone = ONE_NODE[self.db.backend]
        self.running: set[str] = set()        # daily jobs under way on this node

    def hold(self, name: str) -> bool:
        """Take the job ``name`` when it is free or its lease ran out, or renew this node's
        lease on it; whether this node holds it now."""
        return self._take(name, "")

    def begin(self, name: str, every: float) -> float | None:
        """Take the job ``name`` if its last run began ``every`` seconds ago or longer (or
        never): the start time to pass to ``finish``, or None (not due, or another node
        holds it)."""
        now = self.clock()
        return now if self._take(name, " AND (last_run IS NULL OR last_run <= ?)",
                                 now - every) else None

    def _take(self, name: str, condition: str, *values) -> bool:
        now = self.clock()
        with self.db.transaction():
            self.db.execute("INSERT INTO jobs (name) VALUES (?) ON CONFLICT DO NOTHING", (name,))
            return self.db.execute(TAKE + condition, (self.node, now + self.lease, name,
                                                      self.node, now, self.alone, *values)
                                   ).rowcount > 0

    def finish(self, name: str, started: float | None) -> None:
        """Let the job ``name`` go; with ``started``, record it as its last run (when this
        node still holds it: otherwise the node that took it over records its own)."""
        self.db.execute("UPDATE jobs SET until = 0, last_run = coalesce(?, last_run) WHERE "
                        "name = ? AND node = ?", (started, name, self.node))

    def renew(self) -> None:
        """Extend this node's leases on the daily jobs under way (call every few seconds)."""
        until = self.clock() + self.lease
        for name in sorted(self.running):
            if not self.db.execute("UPDATE jobs SET until = ? WHERE name = ? AND node = ?",
                                   (until, name, self.node)).rowcount:
                log.error("job {name}: lease lost while it runs (another node may run it too)",
                          name=name)

    def stop(self) -> None:
        """Let every job this node holds go at once (a clean stop); with the database away,
        the leases run out instead."""
        try:
            self.db.execute("UPDATE jobs SET until = 0 WHERE node = ?", (self.node,))
        except StoreError as exc:
            log.warn("jobs not let go at stop ({error}): another node takes them over when "
                     "their leases run out", error=str(exc))

    def holders(self) -> dict[str, tuple[str, float, float | None]]:
        """Each job's (node, until, last run)."""
        return {row["name"]: (row["node"], row["until"], row["last_run"])
                for row in self.db.execute("SELECT * FROM jobs ORDER BY name")}

    def only(self, name: str, work: Callable) -> Callable:
        """``work`` made to run only while this node holds the job ``name``."""
        def run():
            return work() if self.hold(name) else None
        return run

    def daily(self, name: str, every: float, work: Callable) -> Callable:
        """``work`` (which may return a Deferred) made to run only when the job ``name`` is
        due (``begin``), its lease renewed while it runs and its run recorded when it ends
        well (a failed run is tried again at the next call)."""
        def run():
            if name in self.running:
                return None
            started = self.begin(name, every)
            if started is None:
                return None
            self.running.add(name)

            def ended(result):
                self.running.discard(name)
                self.finish(name, None if isinstance(result, Failure) else started)
                return result
            return defer.maybeDeferred(work).addBoth(ended)
        return run
