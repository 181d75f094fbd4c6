"""Limits in front of every listener: how many connections, from whom, for how long,
and how many bytes of incoming messages the daemon holds at once.

``Guard`` wraps a listener's protocol factory (inside TLS, so it sees the
handshake end): at most ``max_connections`` open connections per listener, at
most ``per_client`` from one client address — and, once a TLS handshake names
it, from one identity; the TLS handshake (or, for SSH, the login) must finish
within ``handshake_seconds``; optionally, a connection silent for ``idle_seconds``
is closed (for protocols that have no idle timeout of their own). Every refusal
and timeout is one log line with the peer's address — a few a minute per address at
most (``gateway.logs.Throttle``), so a flood cannot flood the log.

``Budget`` counts the bytes of messages being received or waiting for their
answer (MLLP frames, HTTPS bodies) across all connections; a connection whose
bytes push it past ``limits.max_buffered_bytes`` is closed.
"""

from collections import Counter
from typing import Callable

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from gateway.logs import Throttle
from gateway.transports.tls import certificate_name

log = Logger(namespace="gatewayd.limits")


class Budget:
    """Bytes held for incoming messages by all connections together. A holder (an MLLP
    connection, an HTTPS request) reports what it holds with ``set``; when the total passes
    the limit, ``relieve`` evicts the holders with the most bytes that eviction frees (not
    what the store is already working on) — a few slow clients hoarding the budget lose
    their connections, not the sender whose small message came last."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self.holders: dict = {}          # holder -> bytes it holds

    def set(self, holder, amount: int) -> None:
        self.held += amount - self.holders.pop(holder, 0)
        if amount:
            self.holders[holder] = amount

    def over(self) -> bool:
        return self.held > self.limit

    def relieve(self) -> None:
        """Evict the largest evictable holders until the total is within the limit."""
        for holder in sorted(self.holders, key=lambda h: h.evictable(), reverse=True):
            if not self.over() or not holder.evictable():
                return
            holder.evict(f"incoming messages hold more than {self.limit} bytes "
                         f"(limits.max_buffered_bytes); this connection held the most")


@implementer(IHandshakeListener)
class Guarded(ProtocolWrapper):
    """One connection under its listener's limits."""

    address = ""
    identity: str | None = None
    deadline = idle = None

    def connectionMade(self):
        guard: Guard = self.factory
        peer = self.transport.getPeer()
        self.address = getattr(peer, "host", "?")
        refusal = guard.admit(self)
        if refusal:
            guard.throttle.warn(log, self.address, "{listener} connection from {peer} refused: "
                                "{why}", listener=guard.name, peer=self.address, why=refusal)
            self.transport.abortConnection()
            return
        self.deadline = guard.clock.callLater(guard.handshake_seconds, self._handshake_late)
        self._touch()
        super().connectionMade()

    def handshakeCompleted(self):
        """TLS is up: the certificate names an identity, which has its own limit."""
        guard: Guard = self.factory
        self.identity = certificate_name(self.transport)
        if guard.count_identity(self):
            guard.throttle.warn(log, self.address, "{listener} connection from {peer} refused: "
                                "more than {limit} open for {identity!r}", listener=guard.name,
                                peer=self.address, limit=guard.per_client, identity=self.identity)
            self.transport.abortConnection()
            return
        self._cancel("deadline")
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def dataReceived(self, data):
        self._touch()
        if self.deadline is not None and self.factory.ready(self.wrappedProtocol):
            self._cancel("deadline")
        super().dataReceived(data)

    def _handshake_late(self):
        self.deadline = None
        if not self.factory.ready(self.wrappedProtocol):
            self.factory.throttle.warn(
                log, self.address, "{listener} connection from {peer} closed: handshake or "
                "login not done within {seconds} s", listener=self.factory.name,
                peer=self.address, seconds=self.factory.handshake_seconds)
            self.transport.abortConnection()

    def _touch(self):
        seconds = self.factory.idle_seconds
        if seconds is None:
            return
        if self.idle is not None and self.idle.active():
            self.idle.reset(seconds)
        else:
            self.idle = self.factory.clock.callLater(seconds, self._idle)

    def _idle(self):
        self.idle = None
        log.info("{listener} connection from {peer} idle {seconds} s; closed",
                 listener=self.factory.name, peer=self.address, seconds=self.factory.idle_seconds)
        self.transport.abortConnection()

    def _cancel(self, which: str):
        call = getattr(self, which)
        if call is not None and call.active():
            call.cancel()
        setattr(self, which, None)

    def connectionLost(self, reason):
        if self.deadline is not None and reason is not None and reason.check(SSL.Error) \
                and "certificate verify failed" not in _tls_reason(reason.value):   # logged
            self.factory.throttle.warn(log, self.address, "{listener} TLS handshake from {peer} "
                                       "refused: {why}", listener=self.factory.name,
                                       peer=self.address, why=_tls_reason(reason.value))
        self._cancel("deadline")
        self._cancel("idle")
        super().connectionLost(reason)


def _tls_reason(error: SSL.Error) -> str:
    """OpenSSL's reasons for a failed handshake, e.g. 'peer did not return a certificate'."""
    reasons = [part[2] for part in error.args[0] if isinstance(part, tuple) and len(part) == 3] \
        if error.args and isinstance(error.args[0], list) else []
    return "; ".join(reasons) or str(error)[:200]


class Guard(WrappingFactory):
    """Limits for one listener; ``ready(protocol)`` says whether a connection passed its
    handshake (for TLS listeners the TLS handshake decides, so it may answer False)."""

    protocol = Guarded
    noisy = False

    def __init__(self, wrapped, name: str, clock, max_connections: int, per_client: int,
                 handshake_seconds: float, idle_seconds: float | None = None,
                 ready: Callable = lambda protocol: False, throttle: Throttle | None = None):
        super().__init__(wrapped)
        self.name, self.clock, self.ready = name, clock, ready
        self.throttle = throttle or Throttle(clock.seconds)
        self.max_connections, self.per_client = max_connections, per_client
        self.handshake_seconds, self.idle_seconds = handshake_seconds, idle_seconds
        self.addresses: Counter = Counter()
        self.identities: Counter = Counter()

    def admit(self, connection: Guarded) -> str | None:
        """Count a new connection in, or say why not. A full listener makes room by closing
        its oldest connection that has not finished its handshake (a flood of bare
        connections cannot keep clients that would authenticate out)."""
        if len(self.protocols) >= self.max_connections:
            waiting = next((c for c in self.protocols if c.deadline is not None), None)
            if waiting is None:
                return f"listener full ({self.max_connections} connections)"
            self.throttle.warn(log, waiting.address, "{listener} connection from {peer} closed "
                               "to make room: listener full and its handshake not done",
                               listener=self.name, peer=waiting.address)
            waiting.deadline.cancel()
            waiting.deadline = None
            waiting.transport.abortConnection()
        if self.addresses[connection.address] >= self.per_client:
            return f"more than {self.per_client} open from this address"
        self.addresses[connection.address] += 1
        connection.counted = True
        return None

    def count_identity(self, connection: Guarded) -> bool:
        """Count a connection's identity in; True when that makes one too many."""
        if connection.identity is None:
            return False
        self.identities[connection.identity] += 1
        return self.identities[connection.identity] > self.per_client

    def unregisterProtocol(self, connection: Guarded):
        super().unregisterProtocol(connection)
        if getattr(connection, "counted", False):
            self.addresses[connection.address] -= 1
            if not self.addresses[connection.address]:
                del self.addresses[connection.address]
        if connection.identity is not None:
            self.identities[connection.identity] -= 1
            if not self.identities[connection.identity]:
                del self.identities[connection.identity]
