"""Group commit on the reactor: inputs that arrive in the same reactor turn are
stored together by ``Intake.accept_many`` — one payload file, one transaction —
so that concurrent senders share the syncs. Each caller gets a Deferred firing
with its own receipts or failing with its own error.
"""

from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.errors import GatewayError
from gateway.intake import Envelope, Intake


class GroupCommit:
    def __init__(self, intake: Intake, reactor, max_batch: int = 256):
        self.intake, self.reactor, self.max_batch = intake, reactor, max_batch
        self.queue: list[tuple[bytes, Envelope, defer.Deferred]] = []
        self.call = None

    def accept(self, raw: bytes, envelope: Envelope) -> defer.Deferred:
        waiting = defer.Deferred()
        self.queue.append((raw, envelope, waiting))
        if self.call is None:
            self.call = self.reactor.callLater(0, self.flush)
        return waiting

    def flush(self) -> None:
        self.call = None
        items, self.queue = self.queue[:self.max_batch], self.queue[self.max_batch:]
        if self.queue:
            self.call = self.reactor.callLater(0, self.flush)
        try:
            outcomes = self.intake.accept_many([(raw, envelope) for raw, envelope, _ in items])
        except Exception:
            failure = Failure()            # nothing of this batch was stored: no one gets a receipt
            for _, _, waiting in items:
                waiting.errback(failure)
            return
        for (_, _, waiting), outcome in zip(items, outcomes):
            if isinstance(outcome, GatewayError):
                waiting.errback(outcome)
            else:
                waiting.callback(outcome)
