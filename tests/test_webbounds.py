"""The web bounds on StringTransport and task.Clock: pipelined requests are answered one
a reactor turn, and none while the client leaves the answers unread."""

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.web import resource

from gateway.transports.guard import Budget
from gateway.transports.webbounds import bounded_site


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class Turns(task.Clock):
    """A clock that, like the reactor, runs in one turn only the calls that were due when
    the turn began (task.Clock would also run those they schedule for now)."""

    def turn(self) -> None:
        due = [call for call in self.getDelayedCalls() if call.getTime() <= self.seconds()]
        for call in due:
            if call.active():
                self.calls.remove(call)
                call.func(*call.args, **call.kw)


def connect():
    clock = Turns()
    channel = bounded_site(Hello(), 0, 60, 60, Budget(1 << 20)).buildProtocol(None)
    channel.callLater = clock.callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


def answers(transport) -> int:
    return transport.value().count(b"HTTP/1.1 200")


def test_pipelined_requests_are_answered_one_a_turn():
    """Fifty requests in one read: the first is answered at once, each next one a reactor
    turn later — the reactor is never held by one client's pipeline."""
    channel, transport, clock = connect()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
    assert answers(transport) == 1
    for turn in range(2, 51):
        clock.turn()
        assert answers(transport) == turn


def test_no_pipelined_request_is_answered_while_answers_go_unread():
    """When the transport says its buffer is full (the client reads nothing), the requests
    read ahead wait; once it drains they are answered."""
    channel, transport, clock = connect()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
    channel.pauseProducing()                       # what a full write buffer does
    clock.turn()
    clock.turn()
    assert answers(transport) == 1
    channel.resumeProducing()
    for _ in range(5):
        clock.turn()
    assert answers(transport) == 5


def test_answers_count_apart_and_a_pull_past_their_budget_is_refused_unopened(tmp_path):
    """An answer being written counts in the answers' budget, not the incoming one; while
    answers left unread hold more than it allows, a pull is 503 before its message is
    opened (and the incoming budget stays free for senders)."""
    import time

    from gateway import routes
    from gateway.identities import Identity
    from gateway.intake import Intake
    from gateway.reading import Envelope
    from gateway.spool.store import Store
    from gateway.transports import http
    from tests.helpers.fakes import RING, ROOT, numbered_referral

    intake = Intake(Store(tmp_path, time.time, RING),
                    routes.load(ROOT / "gateway" / "routes" / "samples"), 1 << 24)
    (receipt,) = intake.accept(numbered_referral(1), Envelope("admin", "test"))
    peer = "192.168.1.1:54321"                     # StringTransport's peer, as its identity
    api = http.Api(intake, {peer: Identity(peer, "institution", frozenset({"06005678"}),
                                           pull="06005678")}, 1 << 20)
    incoming = Budget(1000)
    site = http.site(api, 60, 60, incoming)
    clock = Turns()

    def pull() -> bytes:
        channel = site.buildProtocol(None)
        channel.callLater = clock.callLater
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /v1/messages/%d HTTP/1.1\r\nHost: x\r\n\r\n" % receipt.id)
        clock.turn()
        return transport.value()
    assert b"200 OK" in pull()
    site.answers.set("unread elsewhere", 5000)     # answers nobody reads hold the budget
    refused = pull()
    assert b" 503 " in refused.split(b"\r\n")[0] and b'"code": "E-BUSY"' in refused
    assert incoming.held == 0
