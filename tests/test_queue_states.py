"""A hypothesis state machine over the queue: messages arrive, deliveries succeed or
fail, time passes, administrators hold, release and retry. No message is ever lost
or in two states, and every recorded transition is an allowed one."""

from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet import task

from gateway import config, routes
from gateway.errors import DeliveryError
from gateway.intake import Envelope, Intake
from gateway.spool import delivery, states
from gateway.spool.store import StateError, Store
from tests.helpers.fakes import RING, PendingDestination, numbered_referral, write_tables



class QueueMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile
        self.folder = Path(tempfile.mkdtemp())
        routes_dir = write_tables(self.folder / "routes", "06005678,Eemland,hl7,mllp://127.0.0.1:2575,"
                                  "\n06009876,Zuid,xml,pull,\n", "01234567,V,*,\n")
        self.clock = task.Clock()
        self.store = Store(self.folder / "spool", self.clock.seconds, RING)
        self.intake = Intake(self.store, routes.load(routes_dir), 1 << 24)
        self.destination = PendingDestination()
        self.dispatcher = delivery.Dispatcher(self.store, config.defaults(self.folder),
                                              self.destination, self.clock.seconds)
        self.settled: list = []
        self.accepted: set[int] = set()
        self.count = 0

    @rule(pull=st.booleans())
    def arrive(self, pull):
        self.count += 1
        data = numbered_referral(self.count, "Q")
        if pull:
            data = data.replace(b"06005678^VEKTIS", b"06009876^VEKTIS")
        for receipt in self.intake.accept(data, Envelope("admin", "test")):
            self.accepted.add(receipt.id)

    @rule()
    def tick(self):
        for attempt in self.dispatcher.tick():
            attempt.addBoth(self.settled.append)

    @rule(ok=st.booleans())
    def settle_one(self, ok):
        if self.destination.open:
            attempt = self.destination.open.pop(0)
            attempt.callback(None) if ok else attempt.errback(DeliveryError("refused"))

    @rule(seconds=st.sampled_from([60, 3600, 86400, 3 * 86400]))
    def time_passes(self, seconds):
        self.clock.advance(seconds)

    @rule(data=st.data(), action=st.sampled_from(["hold", "release", "retry_now"]))
    def administrator(self, data, action):
        if not self.accepted:
            return
        message_id = data.draw(st.sampled_from(sorted(self.accepted)))
        try:
            getattr(delivery, action)(self.store, message_id, "admin")
        except StateError:
            pass

    @invariant()
    def no_delivery_ends_in_an_error(self):
        assert not [r for r in self.settled if hasattr(r, "value")], self.settled

    @invariant()
    def nothing_lost_and_every_transition_allowed(self):
        rows = {row["id"]: row for row in self.store.listing(limit=10_000)}
        assert set(rows) == self.accepted
        for message_id, row in rows.items():
            path = [h["state"] for h in self.store.history(message_id)]
            assert path[-1] == row["state"]
            assert all(states.allowed(a, b) for a, b in zip(path, path[1:])), path

    def teardown(self):
        self.store.close()
        import shutil
        shutil.rmtree(self.folder, ignore_errors=True)


QueueMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
test_queue_state_machine = QueueMachine.TestCase
