"""MLLP framing on StringTransport and task.Clock: split and batched frames, garbage,
oversize frames, idle timeout, ACKs in order."""

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from gateway.errors import DecodeError, StoreError
from gateway.transports.guard import Budget
from gateway.transports.mllp import END, START, MLLPFactory
from tests.helpers.fakes import RING


class Echo:
    """Acknowledges each message with b'ACK:' + the message, optionally later."""

    def __init__(self, delayed: bool = False):
        self.delayed = delayed
        self.waiting: list[tuple[defer.Deferred, bytes]] = []
        self.seen: list[bytes] = []

    def handle(self, message, peer):
        self.seen.append(message)
        if not self.delayed:
            return b"ACK:" + message
        result = defer.Deferred()
        self.waiting.append((result, message))
        return result


def connect(handler, max_frame=1000, idle=30.0, clock=None):
    protocol = MLLPFactory(handler, max_frame, idle).buildProtocol(None)
    if clock is not None:
        protocol.callLater = clock.callLater
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def fired(result: defer.Deferred):
    """The result of a Deferred that has already fired."""
    found = []
    result.addBoth(found.append)
    assert found, "the Deferred has not fired"
    return found[0]


def frame(message: bytes) -> bytes:
    return START + message + END


def acks(transport) -> list[bytes]:
    return [part[1:] for part in transport.value().split(END) if part]


def test_hundred_messages_in_one_write_are_acknowledged_in_order():
    """100 frames in one write get 100 ACKs, in order."""
    handler = Echo()
    protocol, transport = connect(handler)
    protocol.dataReceived(b"".join(frame(b"M%03d" % i) for i in range(100)))
    assert acks(transport) == [b"ACK:M%03d" % i for i in range(100)]


def test_one_byte_writes_give_the_same_result():
    """The same stream fed one byte at a time gives the same ACKs; garbage between frames is dropped."""
    stream = b"noise" + frame(b"FIRST") + b"\r\n junk \x1c" + frame(b"SECOND")
    handler = Echo()
    protocol, transport = connect(handler)
    for byte in stream:
        protocol.dataReceived(bytes([byte]))
    assert handler.seen == [b"FIRST", b"SECOND"]
    assert acks(transport) == [b"ACK:FIRST", b"ACK:SECOND"]


def test_oversize_frame_without_end_closes_with_bounded_buffer():
    """A frame that never ends is cut off once it passes the cap; the buffer never grows past it."""
    protocol, transport = connect(Echo(), max_frame=1000)
    protocol.dataReceived(START)
    for _ in range(20):
        if transport.disconnecting:
            break
        protocol.dataReceived(b"x" * 300)
        assert len(protocol.buffer) <= 1000 + 300
    assert transport.disconnecting and protocol.buffer == bytearray()


def test_next_message_waits_for_the_previous_ack():
    """ACKs leave in arrival order even when the first takes longer."""
    handler = Echo(delayed=True)
    protocol, transport = connect(handler)
    protocol.dataReceived(frame(b"A") + frame(b"B"))
    assert handler.seen == [b"A"]
    first, _ = handler.waiting.pop(0)
    first.callback(b"ACK:A")
    assert handler.seen == [b"A", b"B"]
    handler.waiting.pop(0)[0].callback(b"ACK:B")
    assert acks(transport) == [b"ACK:A", b"ACK:B"]


def test_handler_failure_closes_without_ack():
    """When the handler fails (nothing was stored), no ACK is sent and the connection closes."""
    class Broken:
        def handle(self, message, peer):
            raise OSError("disk full")

    protocol, transport = connect(Broken())
    protocol.dataReceived(frame(b"A"))
    assert transport.value() == b"" and transport.disconnecting


def test_refusal_to_store_is_one_log_line():
    """A store that refuses with a GatewayError (a retired key) closes without an ACK and
    logs one line naming the error, not a traceback."""
    from twisted.logger import Logger

    from gateway.errors import GatewayError

    class Refusing:
        def handle(self, message, peer):
            raise GatewayError("key 'k1' was retired", code="E-KEYS")

    events = []
    protocol, transport = connect(Refusing())
    protocol.log = Logger(observer=events.append)
    protocol.dataReceived(frame(b"A"))
    assert transport.value() == b"" and transport.disconnecting
    (event,) = events
    assert "log_failure" not in event and event["error"] == "E-KEYS: key 'k1' was retired"


def test_idle_connection_is_closed():
    """A connection that sends nothing for the idle timeout is closed."""
    clock = task.Clock()
    protocol, transport = connect(Echo(), idle=30, clock=clock)
    clock.advance(29)
    protocol.dataReceived(b"\x0b")
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


def test_acks_from_the_intake(tmp_path):
    """Over MLLP: AA after storing (and again for a resend, one copy), AE for bad content,
    AR for an unmandated sender; MSA-2 is always the MSH-10."""
    import time
    from pathlib import Path

    from gateway import routes
    from gateway.intake import Envelope, Intake
    from gateway.spool.store import Store
    from gateway.transports.hl7handler import AckingHandler
    from tests.helpers.fakes import numbered_referral

    samples = Path(__file__).parent.parent / "gateway" / "routes" / "samples"
    intake = Intake(Store(tmp_path, time.time, RING), routes.load(samples), 1 << 24)
    mandates = {"brink": frozenset({"01234567"}), "other": frozenset({"01765432"})}
    handler = AckingHandler(intake.accept, lambda peer: Envelope(peer, "mllp", mandates[peer]))
    message = numbered_referral(1, "MLLP")
    bad = message.replace(b"123456782^^^NLMINBIZA", b"123456789^^^NLMINBIZA")
    replies = [fired(handler.handle(m, peer)) for m, peer in
               ((message, "brink"), (message, "brink"), (bad.replace(b"MLLP-000001", b"MLLP-2"), "brink"),
                (numbered_referral(3, "MLLP"), "other"))]
    msa = [reply.split(b"\r")[1].split(b"|")[:3] for reply in replies]
    assert msa == [[b"MSA", b"AA", b"MLLP-000001"], [b"MSA", b"AA", b"MLLP-000001"],
                   [b"MSA", b"AE", b"MLLP-2"], [b"MSA", b"AR", b"MLLP-000003"]]
    assert b"ERR|" in replies[2] and b"E-HL7-BSN" in replies[2]
    assert [row["state"] for row in intake.store.listing()] == ["rejected", "ready"]


def test_push_counts_only_an_aa_naming_our_control_id():
    """A push ACK must be AA with MSA-2 = our MSH-10; AE, AR or another MSA-2 is a failure."""
    import pytest

    from gateway.codecs import hl7v2
    from gateway.errors import DeliveryError
    from gateway.transports.mllp_client import _check_ack
    from tests.helpers.fakes import numbered_referral

    ours, theirs = numbered_referral(1, "PUSH"), numbered_referral(2, "PUSH")
    _check_ack(hl7v2.ack(ours, "AA"), "PUSH-000001")
    for ack, code in ((hl7v2.ack(theirs, "AA"), "E-DELIVERY-ACK"),
                      (hl7v2.ack(ours, "AE", "bad"), "E-DELIVERY-REFUSED"),
                      (hl7v2.ack(ours, "AR", "no"), "E-DELIVERY-REFUSED"),
                      (b"MSH|^~\\&|x", "E-DELIVERY-ACK")):
        with pytest.raises(DeliveryError) as caught:
            _check_ack(ack, "PUSH-000001")
        assert caught.value.code == code


def test_group_commit_stores_one_turn_together(tmp_path):
    """Inputs queued in one reactor turn are stored in one batch, each answered on its own;
    when storing fails, every caller of that batch gets the failure and no receipt."""
    import time
    from pathlib import Path

    from gateway import routes
    from gateway.intake import Envelope, Intake
    from gateway.spool.store import Store
    from gateway.transports.batch import GroupCommit
    from tests.helpers.fakes import numbered_referral

    samples = Path(__file__).parent.parent / "gateway" / "routes" / "samples"
    intake = Intake(Store(tmp_path, time.time, RING), routes.load(samples), 1 << 24)
    clock = task.Clock()
    group = GroupCommit(intake, clock)
    admin = Envelope("admin", "test")
    answers = [group.accept(numbered_referral(i, "G"), admin) for i in range(3)]
    bad = group.accept(b"garbage", admin)
    clock.advance(0)
    receipts = [fired(answer)[0] for answer in answers]
    assert len({r.id for r in receipts}) == 3
    assert len({row["received_at"] for row in intake.store.listing()}) == 1    # one transaction
    assert fired(bad).check(DecodeError)

    def broken(prepared, events):
        raise OSError("disk full")
    intake.commit = broken
    failed = group.accept(numbered_referral(9, "G"), admin)
    clock.advance(0)
    assert fired(failed).check(StoreError)          # one line logged, no receipt


def test_group_commit_reads_the_next_batch_while_one_commits(tmp_path):
    """While a batch is being committed the next one is read and waits for the store (one
    commit at a time, in order; no third batch is read meanwhile); after a batch of three,
    one input waits up to ``gather`` for two more, and goes at once when they come."""
    import time
    from pathlib import Path

    from gateway import routes
    from gateway.intake import Envelope, Intake
    from gateway.spool.store import Store
    from gateway.transports.batch import GroupCommit
    from tests.helpers.fakes import numbered_referral

    samples = Path(__file__).parent.parent / "gateway" / "routes" / "samples"
    intake = Intake(Store(tmp_path, time.time, RING), routes.load(samples), 1 << 24)
    clock, storing, batches, reads = task.Clock(), [], [], []

    def run(function, prepared, events):
        batches.append(len(prepared.outcomes))
        storing.append(defer.Deferred())
        return storing[-1].addCallback(lambda _: function(prepared, events))

    def read(function, items):
        reads.append(len(items))
        return defer.maybeDeferred(function, items)

    group = GroupCommit(intake, clock, run, gather=0.005, read=read)
    admin = Envelope("admin", "test")
    first = [group.accept(numbered_referral(i, "W"), admin) for i in range(3)]
    clock.advance(0)
    assert reads == [3] and batches == [3]
    later = group.accept(numbered_referral(3, "W"), admin)
    clock.advance(0.004)
    assert reads == [3]                              # gathering: one waits, three went last
    more = [group.accept(numbered_referral(i, "W"), admin) for i in (4, 5)]
    clock.advance(0)
    assert reads == [3, 3] and batches == [3]        # read while the first commits
    final = group.accept(numbered_referral(6, "W"), admin)
    clock.advance(1)
    assert reads == [3, 3] and not any(d.called for d in [later, *more, final])
    storing[0].callback(None)
    assert all(fired(answer) for answer in first) and batches == [3, 3]
    clock.advance(0.005)
    assert reads == [3, 3, 1] and batches == [3, 3]  # the third read, waiting for the store
    storing[1].callback(None)
    assert all(fired(answer) for answer in [later, *more]) and batches == [3, 3, 1]
    storing[2].callback(None)
    assert [r.id for r in fired(final)] == [7]
    assert [(row["id"], row["control_id"]) for row in intake.store.listing()][::-1] == \
        [(i + 1, f"W-{i:06d}") for i in range(7)]             # committed in arrival order


def test_a_trickled_frame_is_closed_at_its_deadline():
    """A byte every 10 s keeps the connection from idling out, but a frame must be whole
    within frame_seconds of its first byte."""
    clock = task.Clock()
    factory = MLLPFactory(Echo(), 1000, 30.0, frame_seconds=60)
    protocol = factory.buildProtocol(None)
    protocol.callLater = clock.callLater
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(START)
    for _ in range(5):
        clock.advance(10)
        protocol.dataReceived(b"x")
    assert not transport.disconnecting
    clock.advance(10)
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert factory.budget.held == 0


def test_partial_frames_share_one_budget_and_the_largest_holder_is_closed():
    """Connections holding partial frames within a 2,500-byte budget: when a small frame
    pushes the total over, the connection holding the most is closed — not the newcomer —
    and its share is freed."""
    factory = MLLPFactory(Echo(), 1000, 30.0, budget=Budget(2500))
    connections = []
    for _ in range(3):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        connections.append((protocol, transport))
    connections[0][0].dataReceived(START + b"x" * 990)
    connections[1][0].dataReceived(START + b"x" * 800)
    assert factory.budget.held == 1790
    connections[2][0].dataReceived(START + b"x" * 750)
    assert [t.disconnecting for _, t in connections] == [True, False, False]
    connections[0][0].connectionLost(None)
    assert factory.budget.held == 1550
    connections[2][0].dataReceived(b"y" + END)
    assert acks(connections[2][1]) == [b"ACK:" + b"x" * 750 + b"y"]
    assert factory.budget.held == 800


def test_reading_pauses_while_frames_wait_for_their_turn():
    """A client that sends frames without waiting for ACKs is not read further until the
    waiting frames are answered (TCP holds the rest)."""
    handler = Echo(delayed=True)
    protocol, transport = connect(handler)
    protocol.dataReceived(frame(b"ONE") + frame(b"TWO"))
    assert transport.producerState == "paused"
    handler.waiting[0][0].callback(b"ACK:ONE")
    assert transport.producerState == "paused"
    handler.waiting[1][0].callback(b"ACK:TWO")
    assert transport.producerState == "producing"
    assert acks(transport) == [b"ACK:ONE", b"ACK:TWO"]


def test_a_frame_counts_in_the_budget_until_its_ack_is_written():
    """The bytes of a message being stored stay in the budget until its ACK leaves."""
    handler = Echo(delayed=True)
    factory = MLLPFactory(handler, 1000, 30.0, budget=Budget(2500))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(frame(b"x" * 900))
    assert factory.budget.held == 900
    handler.waiting[0][0].callback(b"ACK")
    assert factory.budget.held == 0


def test_a_client_that_reads_no_acks_is_not_read_either():
    """When the transport's write buffer is full (the client reads no ACKs), the connection
    stops handling frames and reading; once drained, it goes on in order."""
    handler = Echo()
    protocol, transport = connect(handler)
    protocol.pauseProducing()                      # what a full write buffer does
    protocol.dataReceived(frame(b"ONE") + frame(b"TWO"))
    assert handler.seen == [] and transport.producerState == "paused"
    protocol.resumeProducing()
    assert acks(transport) == [b"ACK:ONE", b"ACK:TWO"]
    assert transport.producerState == "producing"


def test_no_idle_timeout_while_the_store_works_on_the_clients_message():
    """The idle clock does not run out on a client waiting for its own ACK; it starts again
    once the ACK is written."""
    clock, handler = task.Clock(), Echo(delayed=True)
    protocol, transport = connect(handler, idle=30, clock=clock)
    protocol.dataReceived(frame(b"SLOW"))
    clock.advance(45)
    assert not transport.disconnecting
    handler.waiting[0][0].callback(b"ACK")
    clock.advance(31)
    assert transport.disconnecting


def test_bytes_outside_frames_do_not_keep_a_connection_alive():
    """Garbage every 10 s between frames does not reset the idle clock."""
    clock = task.Clock()
    protocol, transport = connect(Echo(), idle=30, clock=clock)
    for _ in range(3):
        clock.advance(10)
        protocol.dataReceived(b"noise")
    assert transport.disconnecting


def test_audit_records_ride_along_with_the_next_batch(tmp_path):
    """Audit records handed to the group commit are stored in the next batch's transaction
    (no transaction of their own), and their Deferred fires once committed."""
    import time
    from pathlib import Path

    from gateway import audit, routes
    from gateway.intake import Envelope, Intake
    from gateway.spool.store import Store
    from gateway.transports.batch import GroupCommit
    from tests.helpers.fakes import numbered_referral

    samples = Path(__file__).parent.parent / "gateway" / "routes" / "samples"
    intake = Intake(Store(tmp_path, time.time, RING), routes.load(samples), 1 << 24)
    clock, runs = task.Clock(), []

    def run(function, prepared, events):
        runs.append((len(prepared.outcomes), len(events)))
        return defer.maybeDeferred(function, prepared, events)
    group = GroupCommit(intake, clock, run)
    read = group.record([audit.Event("https:zis", "pull", detail="one")])
    stored = group.accept(numbered_referral(1, "R"), Envelope("admin", "test"))
    clock.advance(0)
    assert runs == [(1, 1)] and fired(read) is None and fired(stored)
    assert [r["detail"] for r in audit.query(intake.store.db, who="https:zis")] == ["one"]


def test_a_push_without_an_answer_in_time_is_closed_not_left_open():
    """The institution accepts the connection and never answers: after the timeout the push
    fails with E-DELIVERY-TIMEOUT and the connection is aborted; an over-long answer and a
    real ACK also end the connection."""
    from gateway.errors import DeliveryError
    from gateway.transports.mllp_client import MAX_ACK, _OneShot
    for answer, expected in ((None, "E-DELIVERY-TIMEOUT"), (b"x" * (MAX_ACK + 1), "E-DELIVERY-ACK"),
                             (frame(b"MSH|ack"), b"MSH|ack")):
        clock, done = task.Clock(), defer.Deferred()
        shot = _OneShot(b"MSH|x", done, 30)
        shot.callLater = clock.callLater
        transport = StringTransport()
        shot.makeConnection(transport)
        if answer is None:
            clock.advance(31)
        else:
            shot.dataReceived(answer)
        outcome = fired(done)
        assert transport.disconnecting
        if isinstance(expected, str):
            assert outcome.check(DeliveryError) and outcome.value.code == expected
        else:
            assert outcome == expected
