"""The connection guard on StringTransport and task.Clock."""

from twisted.internet import protocol, task
from twisted.internet.testing import StringTransport

from gateway.transports.guard import Guard


def guard(clock, limit=2):
    return Guard(protocol.Factory.forProtocol(protocol.Protocol), "MLLP", clock, limit, 10, 30)


def connect(made: Guard, host: str):
    connection = made.buildProtocol(None)
    transport = StringTransport(peerAddress=type("Peer", (), {"host": host, "port": 1})())
    connection.makeConnection(transport)
    return connection, transport


def test_a_full_listener_closes_its_oldest_unauthenticated_connection_first():
    """With every slot taken, a new client gets in by closing the oldest connection that has
    not finished its handshake; once all have, the newcomer is refused."""
    clock = task.Clock()
    made = guard(clock)
    first, first_transport = connect(made, "10.0.0.1")
    second, second_transport = connect(made, "10.0.0.2")
    first.handshakeCompleted()
    third, third_transport = connect(made, "10.0.0.3")
    assert (first_transport.disconnecting, second_transport.disconnecting,
            third_transport.disconnecting) == (False, True, False)
    second.connectionLost(None)
    third.handshakeCompleted()
    _, fourth_transport = connect(made, "10.0.0.4")
    assert fourth_transport.disconnecting            # everyone in is authenticated: refused
