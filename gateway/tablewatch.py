"""A running node and the tables in force in the store: following them, and rerouting.

``Watch`` asks the store every ``store.tables_poll_seconds`` for the version of the
tables in force (one cheap query, on a thread of its own with its own
connection, so a slow or unreachable database never holds up the reactor); when
it changed, the new parts are read and checked on that thread and handed to the
daemon's ``take`` on the reactor. A store whose copy does not load, or that
cannot be reached, is logged once per distinct problem; the tables in force stay.

``Rerouter`` routes the fallback queue again after a change — on the node that
made it only — on a thread with a store connection of its own, a page at a time,
one run after the other; the reactor goes on serving meanwhile.
"""

import time

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway import inforce
from gateway.errors import GatewayError
from gateway.intake import Intake
from gateway.spool import db as database
from gateway.spool import inforce as sql

log = Logger(namespace="gatewayd")


class Watch:
    """Polls ``target`` (the store's database) and calls ``take(snapshot)`` on the
    reactor with each version newer than ``known()``."""

    def __init__(self, reactor, target: str, seconds: float, known, take):
        self.reactor, self.target, self.seconds = reactor, target, seconds
        self.known, self.take = known, take
        self.pool = ThreadPool(1, 1, "tables")
        self.db = None            # opened on the pool's thread, used only there
        self.problem = ""
        self.loop = task.LoopingCall(self.poll)
        self.loop.clock = reactor

    def start(self) -> None:
        self.pool.start()
        self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        self.loop.start(self.seconds, now=False)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()
        self.pool.callInThread(self._close)
        self.pool.stop()

    def poll(self) -> defer.Deferred:
        """One round (the loop waits for it before the next): the version asked on the
        thread; a new snapshot taken on the reactor."""
        result = threads.deferToThreadPool(self.reactor, self.pool, self._check, self.known())
        result.addCallbacks(self._found, self._failed)
        return result.addErrback(lambda failure: log.failure("tables in force", failure))

    def _check(self, known: int):
        """On the thread: None when the version is ``known``, else the new Snapshot."""
        if self.db is None:
            self.db = database.connect(self.target, other_thread=True)
        if sql.version(self.db) == known:
            return None
        return inforce.load(self.db)

    def _found(self, found) -> None:
        if self.problem:
            log.info("tables in force: the store answers again")
            self.problem = ""
        if found is None or found.version <= self.known():
            return
        try:
            self.take(found)
        except GatewayError as exc:      # an identity's SSH key unusable: those kept
            log.error("tables in force (version {version}) not all taken: {error}",
                      version=found.version, error=str(exc))

    def _failed(self, failure) -> None:
        text = str(failure.value) if failure.check(GatewayError) else \
            f"{failure.type.__name__}: {failure.getErrorMessage()}"
        if text != self.problem:
            self.problem = text
            log.error("tables in force not read from the store, the ones in force kept: {error}",
                      error=text)

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class Rerouter:
    """Routes the fallback queue again on a thread, one run at a time: ``run(actor)``
    gives a Deferred of the receipts of the messages that moved."""

    def __init__(self, reactor, open_store, tables, limits: tuple[int, int]):
        self.reactor, self.open_store, self.tables, self.limits = \
            reactor, open_store, tables, limits
        self.lock = defer.DeferredLock()

    def run(self, actor: str) -> defer.Deferred:
        return self.lock.run(threads.deferToThread, self._work, actor).addCallback(self._done)

    def _work(self, actor: str) -> tuple[list, float]:
        started = time.monotonic()
        store = self.open_store()
        try:
            moved = inforce.reroute_all(Intake(store, self.tables(), *self.limits), actor)
        finally:
            store.close()
        return moved, time.monotonic() - started

    def _done(self, result: tuple[list, float]) -> list:
        moved, seconds = result
        log.info("fallback routed again in {seconds:.1f} s: {count} message(s) moved out of "
                 "fallback", seconds=seconds, count=len(moved))
        return moved
