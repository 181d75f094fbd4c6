"""Group commit: what arrives while the store is busy is stored together.

Inputs are queued; the queue is handed to the intake as one batch — one
transaction — whenever no batch is being read, in two stages that overlap: the
reading stage (``Intake.prepare``: decode, route, write the output format; no
store) of a batch runs while the batch before it is committed (``Intake.commit``:
placed against what is stored, one transaction and its sync), so a core reads
while the disk syncs. Audit records the transports make (reads of patient data,
refused reads) ride along in the next batch's transaction. ``read`` and ``run``
run those calls and return Deferreds: in the daemon, each on a thread of its own
(the writer with its own SQLite connection), so the reactor goes on reading,
decrypting and answering meanwhile, and batches grow with the load. When fewer
inputs wait than the last batch held, the next batch waits up to ``gather``
seconds for as many (senders that wait for their ACK come back together). Each
caller gets a Deferred firing with its own receipts or failing with its own error.
"""

from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.errors import GatewayError, StoreError
from gateway.intake import Envelope, Intake


class GroupCommit:
    def __init__(self, intake: Intake, reactor, run=defer.maybeDeferred, max_batch: int = 256,
                 gather: float = 0.0, read=defer.maybeDeferred):
        self.intake, self.reactor, self.run, self.max_batch = intake, reactor, run, max_batch
        self.read = read            # where the reading stage runs
        self.gather = gather        # wait this long for a batch as large as the last one
        self.queue: list[tuple[bytes, Envelope, defer.Deferred]] = []
        self.events: list[tuple[list, defer.Deferred]] = []     # audit records to add
        self.call = None
        self.reading = False        # a batch is in the reading stage
        self.ready = None           # a batch read, waiting for the store: (waiting, prepared, events)
        self.storing = False        # a batch is being committed
        self.last = 1

    def record(self, events: list) -> defer.Deferred:
        """Commit audit ``events`` with the next batch (no transaction, no sync of their
        own: a flood of audited reads costs the store little); fires once committed."""
        waiting = defer.Deferred()
        self.events.append((events, waiting))
        self._schedule()
        return waiting

    def accept(self, raw: bytes, envelope: Envelope) -> defer.Deferred:
        waiting = defer.Deferred()
        self.queue.append((raw, envelope, waiting))
        if self.call is not None and self.call.active() and len(self.queue) >= self.last \
                and self.call.getTime() > self.reactor.seconds():
            self.call.reset(0)
        self._schedule()
        return waiting

    def _schedule(self) -> None:
        if (self.queue or self.events) and not self.reading and self.ready is None \
                and self.call is None:
            short = len(self.queue) < self.last
            self.call = self.reactor.callLater(self.gather if short else 0, self.flush)

    def flush(self) -> None:
        """Take the next batch into the reading stage."""
        self.call = None
        if self.reading or self.ready is not None or not (self.queue or self.events):
            return
        items, self.queue = self.queue[:self.max_batch], self.queue[self.max_batch:]
        records, self.events = self.events, []
        self.reading, self.last = True, max(len(items), 1)
        waiting = items + [(None, None, done) for _, done in records]
        events = [event for events, _ in records for event in events]
        read = self.read(self.intake.prepare, [(raw, envelope) for raw, envelope, _ in items])
        read.addCallbacks(lambda prepared: self._read(waiting, prepared, events),
                          lambda failure: _fail(waiting, failure))
        read.addBoth(self._reading_done)

    def _read(self, waiting: list, prepared, events: list) -> None:
        self.ready = (waiting, prepared, events)

    def _reading_done(self, _) -> None:
        self.reading = False
        self._store()
        self._schedule()

    def _store(self) -> None:
        """Commit the batch that was read, when no other is being committed."""
        if self.storing or self.ready is None:
            return
        (waiting, prepared, events), self.ready = self.ready, None
        self.storing = True
        records = len(waiting) - len(prepared.outcomes)
        stored = self.run(self.intake.commit, prepared, events)
        stored.addCallbacks(lambda outcomes: _answer(waiting, outcomes + [None] * records),
                            lambda failure: _fail(waiting, failure))
        stored.addBoth(self._stored)

    def _stored(self, _) -> None:
        self.storing = False
        self._store()
        self._schedule()


def _answer(items, outcomes) -> None:
    for (_, _, waiting), outcome in zip(items, outcomes):
        if isinstance(outcome, GatewayError):
            waiting.errback(outcome)
        else:
            waiting.callback(outcome)


def _fail(items, failure: Failure) -> None:
    """Nothing of this batch was stored: no one gets a receipt. A failure that is not a
    GatewayError (a full disk, an I/O error) becomes a StoreError naming the cause, which
    the daemon logs as one line per input, never as a traceback."""
    if not failure.check(GatewayError):
        problem = failure.value
        reason = getattr(problem, "strerror", None) or str(problem)[:200]
        failure = Failure(StoreError(f"not stored ({type(problem).__name__}: {reason}); "
                                     "send again", where="store"))
    for _, _, waiting in items:
        waiting.errback(failure)
