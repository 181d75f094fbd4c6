"""The running gatewayd next to its spool: the spool lock and the control socket.

One spool, one daemon: ``lock(spool)`` takes an exclusive ``flock`` on
``spool/gatewayd.pid`` and writes the holder's pid into it; a second daemon on
the same spool gets SpoolBusy naming that pid (gatewayd exits 75). The lock
belongs to the process that took it — the main daemon — and goes with it, also
after ``kill -9``. (The descriptor is not inherited by programs it starts.)

The control socket ``spool/gatewayd.sock`` (mode 0600: the daemon's user and root;
at most 16 connections, requests of 64 kB, 30 s of silence) speaks one JSON object
a line each way: a request ``{"command": …, "actor": …}``
and an answer ``{"ok": true, "pid": N, …}`` or ``{"ok": false, "code": "E-…",
"message": …}``. The daemon serves it on its reactor (``Server``), with the
commands the daemon registers; gatewayctl calls ``ask``, which answers None when
no gatewayd runs on that spool, so a command can say where its change took effect.
"""

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Callable

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin

from gateway.errors import GatewayError

LOCK_NAME, SOCKET_NAME = "gatewayd.pid", "gatewayd.sock"
MAX_LINE = 1024 * 1024         # an answer (the tables in force can be long)
MAX_REQUEST = 64 * 1024        # a request
MAX_CLIENTS = 16               # control connections at once
IDLE_SECONDS = 30              # a control connection silent this long is closed
log = Logger(namespace="gatewayd.control")


class SpoolBusy(GatewayError):
    """Another gatewayd holds this spool."""

    code = "E-SPOOL-BUSY"


class NoAnswer(GatewayError):
    """A gatewayd holds the spool but its control socket does not answer."""

    code = "E-CONTROL"


def lock(spool: Path) -> int:
    """Hold ``spool`` for this process (an open descriptor: keep it for the process's
    life); raise SpoolBusy naming the holder's pid."""
    spool = Path(spool)
    spool.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(spool / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(descriptor)
        raise SpoolBusy(f"spool {spool} is in use by gatewayd pid {holder}") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    os.fsync(descriptor)
    return descriptor


def holder(spool: Path) -> int | None:
    """The pid of the gatewayd holding ``spool``, or None when none does."""
    try:
        descriptor = os.open(Path(spool) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(descriptor)
    return None


def ask(spool: Path, request: dict, timeout: float = 60) -> dict | None:
    """Send ``request`` to the gatewayd on ``spool``; its answer, or None when no gatewayd
    runs there. Raise the daemon's refusal as a GatewayError (its code kept), NoAnswer
    when one holds the spool but does not answer."""
    path = Path(spool) / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            pid = holder(spool)
            if pid is None:
                return None
            raise NoAnswer(f"gatewayd pid {pid} holds {spool} but its control socket does not "
                           "answer") from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = _read_line(sock)
        except OSError as exc:
            raise NoAnswer(f"gatewayd's control socket failed: {exc}") from None
    if not answer.get("ok"):
        raise GatewayError(answer.get("message", "refused"), code=answer.get("code", "E-CONTROL"))
    return answer


def _read_line(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk or len(data) > MAX_LINE:
            raise OSError("connection closed before an answer")
        data += chunk
    return json.loads(data)


class _Line(LineOnlyReceiver, TimeoutMixin):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def connectionMade(self):
        self.factory.clients += 1
        if self.factory.clients > MAX_CLIENTS:
            log.warn("control connection refused: {count} open", count=MAX_CLIENTS)
            self.transport.abortConnection()
            return
        self.setTimeout(IDLE_SECONDS)

    def connectionLost(self, reason=None):
        self.factory.clients -= 1
        self.setTimeout(None)

    def timeoutConnection(self):
        self.transport.abortConnection()

    def lineReceived(self, line: bytes):
        self.resetTimeout()
        try:
            request = json.loads(line)
            handler = self.factory.commands[request["command"]]
        except (ValueError, KeyError, TypeError):
            self._send({"ok": False, "code": "E-CONTROL", "message": "unknown request"})
            return
        result = defer.maybeDeferred(handler, request)
        result.addCallbacks(lambda answer: self._send({"ok": True, "pid": os.getpid(),
                                                       **(answer or {})}), self._failed)

    def _failed(self, failure):
        if failure.check(GatewayError):
            error = failure.value
            self._send({"ok": False, "code": error.code, "message": str(error.message)})
        else:
            log.failure("control request failed", failure)
            self._send({"ok": False, "code": "E-INTERNAL", "message": "failed; see the log"})

    def _send(self, answer: dict):
        if self.transport is not None:
            self.sendLine(json.dumps(answer).encode())

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


class Server(protocol.Factory):
    """The control socket's factory: ``commands`` maps a command name to a function of the
    request that returns the answer's fields (or a Deferred of them)."""

    protocol = _Line
    noisy = False

    def __init__(self, commands: dict[str, Callable[[dict], dict]]):
        self.commands, self.clients = commands, 0


def listen(reactor, spool: Path, commands: dict):
    """Serve the control socket on ``spool`` (any old socket file is removed first: the
    caller holds the spool lock, so it is stale)."""
    path = Path(spool) / SOCKET_NAME
    path.unlink(missing_ok=True)
    mask = os.umask(0o177)          # no moment with a socket others could connect to
    try:
        return reactor.listenUNIX(str(path), Server(commands), mode=0o600)
    finally:
        os.umask(mask)
