"""The SSH layer under the SFTP drops (twisted.conch): what a connection may ask for,
and how much it may make the daemon hold.

Only modern algorithms are offered (curve25519/ECDH key exchange, AES-CTR, SHA-2
MACs). After login a client may open up to ``limits.sftp_channels_per_connection``
session channels and start the ``sftp`` subsystem in them — nothing else. Every
other request is refused with one log line, never a traceback: port forwarding
(``-L``, ``-R``, ``-W``: other channel types and global requests), and in a session
``env`` (OpenSSH's default ``SendEnv``), ``pty-req``, ``shell``, ``exec``,
``x11-req``, other subsystems, and data sent before a subsystem runs. OpenSSH's
keepalives (``keepalive@openssh.com``) are answered as OpenSSH's own server does
(a failure reply) without a line.

A connection may hold one partial SSH packet of at most ``MAX_PACKET`` bytes, before
login and after (RFC 4253 §6.1 asks for 35,000); one that announces a longer packet
is closed with one line (a few a minute per address: the listener's throttle).
While the client does not read what it is sent (the TCP
connection's send buffer is full), nothing more is read from it.

``Server`` is the SFTP subsystem of one session: requests of at most
``MAX_SFTP_PACKET`` bytes; at most ``limits.sftp_handles_per_session`` files and
folders open (``E-SFTP-HANDLES``); a malformed request — cut short, of an unknown
type, on a handle that is not open — is answered with an SFTP status where its
request id can be read and one WARNING line, and the ``MAX_MALFORMED``-th closes
the session. While the client does not take its answers (the channel's window is
spent), no further request is answered; requests received meanwhile, and any part
of a request over ``FREE_BYTES``, count against the account's SFTP memory limits,
and a session that would pass them is closed. A session that ends with uploads
still open discards them: the client never closed them, so they may be cut off.
"""

import struct

from twisted.conch.ssh import common, connection, filetransfer, session, transport
from twisted.logger import Logger

from gateway.transports.downloads import MAX_READ

log = Logger(namespace="gatewayd.sftp")
QUIET_REQUESTS = {b"env", b"window-change"}     # what OpenSSH sends by default: logged at info
QUIET_GLOBAL = {b"keepalive@openssh.com", b"no-more-sessions@openssh.com"}  # OpenSSH's: no line
MAX_PACKET = 64 * 1024               # bytes in one SSH packet
MAX_SFTP_PACKET = 256 * 1024         # bytes in one SFTP request (as OpenSSH's sftp-server)
MAX_UNSENT = 64 * 1024               # answers waiting for the client's window before we pause
FREE_BYTES = 4096                    # of a session's unanswered requests, not counted
MAX_MALFORMED = 3                    # malformed SFTP requests that close the session
LIMITS_EXTENSION = b"limits@openssh.com"
_HANDLES = {filetransfer.FXP_READ: "openFiles", filetransfer.FXP_WRITE: "openFiles",
            filetransfer.FXP_FSTAT: "openFiles", filetransfer.FXP_FSETSTAT: "openFiles",
            filetransfer.FXP_READDIR: "openDirs", filetransfer.FXP_CLOSE: None}
_MALFORMED = (struct.error, AssertionError, IndexError, ValueError)


def limits_reply(handles: int) -> bytes:
    """The answer to OpenSSH's ``limits@openssh.com``: packet, read and write lengths and
    open handles (OpenSSH's sftp sizes its requests by it)."""
    return struct.pack(">4Q", MAX_SFTP_PACKET, MAX_READ, MAX_READ, handles)


class Transport(transport.SSHServerTransport):
    """Only modern algorithms: no CBC, no SHA-1 or MD5 MACs, no SHA-1 key exchange. Also
    the producer for its TCP connection: a full send buffer stops reading."""

    supportedCiphers = [b"aes256-ctr", b"aes192-ctr", b"aes128-ctr"]
    supportedMACs = [b"hmac-sha2-512", b"hmac-sha2-256"]
    supportedKeyExchanges = [b"curve25519-sha256", b"curve25519-sha256@libssh.org",
                             b"ecdh-sha2-nistp256", b"ecdh-sha2-nistp384"]
    paused = False

    def connectionMade(self):
        super().connectionMade()
        self.transport.registerProducer(self, True)

    def pauseProducing(self):
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.paused = False
        self.transport.resumeProducing()
        for channel in list(getattr(self.service, "channels", {}).values()):
            if getattr(channel, "server", None) is not None:
                channel.server.resume()

    def stopProducing(self):
        pass

    def getPacket(self):
        packet = super().getPacket()
        first = getattr(self, "first", None)
        if packet is None and first is not None and not self._closing():
            (length,) = struct.unpack(">L", first[:4])
            if length > MAX_PACKET:
                self._warn("{who} from {peer} closed: an SSH packet of {length} bytes (at most "
                           "{limit}) {when}", length=length, limit=MAX_PACKET,
                           when="after login" if logged_in(self) else "before login")
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"packet too long")
        return packet

    def _warn(self, format: str, **fields) -> None:
        """One line about this connection, through its listener's throttle when it has one
        (a flood of connections from one address cannot flood the log)."""
        peer = self.transport.getPeer().host
        throttle = getattr(getattr(self.transport, "factory", None), "throttle", None)
        fields.update(who=_who(self), peer=peer)
        if throttle is None:
            log.warn(format, **fields)
        else:
            throttle.warn(log, peer, format, **fields)

    def _closing(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False))

    def dispatchMessage(self, messageNum, payload):
        try:
            super().dispatchMessage(messageNum, payload)
        except _MALFORMED:
            self._warn("{who} from {peer} closed: malformed SSH message {number}",
                       number=messageNum)
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"malformed message")


def logged_in(protocol) -> bool:
    """Whether an SSH connection has passed its login (its service is the connection)."""
    return getattr(getattr(protocol, "service", None), "name", None) == b"ssh-connection"


def _who(transport_) -> str:
    account = getattr(getattr(transport_, "avatar", None), "name", None)
    return f"sftp:{account}" if account else "sftp client"


def _shown(name: bytes) -> str:
    return repr(name[:40].decode("ascii", "replace"))


class Connection(connection.SSHConnection):
    """Session channels only, at most limits.sftp_channels_per_connection; any other
    channel type is refused with one line, and so is the first channel over the limit."""

    over_limit = False

    def ssh_CHANNEL_OPEN(self, packet):
        kind, rest = common.getNS(packet)
        (sender,) = struct.unpack(">L", rest[:4])
        if kind != b"session":
            log.warn("{who} refused: channel {kind} (forwarding is not offered)",
                     who=_who(self.transport), kind=_shown(kind))
            return self._refuse(sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED, b"not offered")
        limit = self.transport.avatar.limits.channels
        if len(self.channels) >= limit:
            if not self.over_limit:
                log.warn("{who} refused: more than {limit} sessions on one connection",
                         who=_who(self.transport), limit=limit)
                self.over_limit = True
            return self._refuse(sender, connection.OPEN_RESOURCE_SHORTAGE, b"too many sessions")
        return super().ssh_CHANNEL_OPEN(packet)

    def _refuse(self, sender: int, reason: int, text: bytes) -> None:
        self.transport.sendPacket(connection.MSG_CHANNEL_OPEN_FAILURE, struct.pack(
            ">2L", sender, reason) + common.NS(text) + common.NS(b""))

    def gotGlobalRequest(self, requestType, data):
        if requestType in QUIET_GLOBAL:
            log.debug("{who} global request {kind} answered: failure", who=_who(self.transport),
                      kind=_shown(requestType))
            return 0
        log.warn("{who} refused: global request {kind} (forwarding is not offered)",
                 who=_who(self.transport), kind=_shown(requestType))
        return 0


class Session(session.SSHSession):
    """A session that runs the sftp subsystem and refuses everything else."""

    server = None           # the sftp subsystem's Server, once it runs

    def requestReceived(self, requestType, data):
        if requestType == b"subsystem" and common.getNS(data)[0] == b"sftp" \
                and self.client is None:
            return super().requestReceived(requestType, data)
        what = requestType + (b" " + common.getNS(data)[0] if requestType == b"subsystem" else b"")
        if requestType in QUIET_REQUESTS:
            log.info("{who} session request {kind} ignored", who=_who(self.conn.transport),
                     kind=_shown(what))
        else:
            log.warn("{who} refused: session request {kind} (only the sftp subsystem is "
                     "offered)", who=_who(self.conn.transport), kind=_shown(what))
        return 0

    def dataReceived(self, data):
        if self.client is None:        # conch would buffer this without bound
            log.warn("{who} refused: session data before the sftp subsystem; closed",
                     who=_who(self.conn.transport))
            self.loseConnection()
            return
        super().dataReceived(data)

    def addWindowBytes(self, data):
        super().addWindowBytes(data)
        if self.server is not None:
            self.server.resume()

    def backlogged(self) -> bool:
        """Whether the client leaves its answers unread (window spent, or TCP full)."""
        return len(self.buf) > MAX_UNSENT or self.conn.transport.paused


class Server(filetransfer.FileTransferServer):
    """The SFTP subsystem of one session, within its limits (see the module)."""

    def __init__(self, data=None, avatar=None):
        super().__init__(data, avatar)
        self.account, self.channel = avatar, None
        self.malformed = self.counted = 0
        self.closing = self.over_handles = False
        self.pulled: set = set()          # files whose read this session has audited

    def connectionMade(self):
        self.channel = getattr(self.transport, "session", None)
        if self.channel is not None:
            self.channel.server = self

    def dataReceived(self, data):
        if not self.closing:
            self.buf += data
            self.resume()

    def resume(self):
        """Answer the requests received whole while the client takes its answers; count
        what waits against the account's memory limits."""
        while len(self.buf) >= 9 and not self.closing and not self._backlogged():
            length, kind = struct.unpack(">LB", self.buf[:5])
            if length < 5 or length > MAX_SFTP_PACKET:
                return self._close(f"SFTP request of {length} bytes (at most {MAX_SFTP_PACKET})")
            if len(self.buf) < 4 + length:
                break
            packet, self.buf = self.buf[5:4 + length], self.buf[4 + length:]
            self._dispatch(kind, packet)
        if not self.closing:
            self._count(max(0, len(self.buf) - FREE_BYTES))

    def _backlogged(self) -> bool:
        return self.channel is not None and self.channel.backlogged()

    def _count(self, held: int) -> None:
        growth, shelf = held - self.counted, self.account.shelf
        if growth > 0 and shelf.room_for(growth):
            return self._close(f"unanswered SFTP requests over the memory limit: "
                               f"{shelf.room_for(growth)}")
        shelf.grow(growth)
        self.counted = held

    def _dispatch(self, kind: int, packet: bytes) -> None:
        request, name = packet[:4], self.packetTypes.get(kind, str(kind))
        method = getattr(self, f"packet_{name}", None)
        if method is None or (kind == filetransfer.FXP_INIT and hasattr(self, "version")):
            return self._malformed(request, filetransfer.FX_OP_UNSUPPORTED,
                                   f"request of type {kind} not understood")
        if kind in _HANDLES:
            try:
                handle = common.getNS(packet[4:])[0]
            except _MALFORMED:
                return self._malformed(request, filetransfer.FX_BAD_MESSAGE, f"{name} cut short")
            tables = [_HANDLES[kind]] if _HANDLES[kind] else ["openFiles", "openDirs"]
            if not any(handle in getattr(self, table) for table in tables):
                return self._malformed(request, filetransfer.FX_FAILURE,
                                       f"{name} on a handle that is not open")
        if kind in (filetransfer.FXP_OPEN, filetransfer.FXP_OPENDIR) and self._full(request):
            return None
        try:
            method(packet)
        except _MALFORMED:
            self._malformed(request, filetransfer.FX_BAD_MESSAGE, f"{name} malformed")

    def _full(self, request: bytes) -> bool:
        """Refuse an open past limits.sftp_handles_per_session (logged once a session)."""
        limit = self.account.limits.handles
        if len(self.openFiles) + len(self.openDirs) < limit:
            return False
        why = f"E-SFTP-HANDLES: {limit} files and folders open in this session; close one first"
        if not self.over_handles:
            log.warn("SFTP {account} refused: {why}", account=self.account.name, why=why)
            self.over_handles = True
        self._sendStatus(request, filetransfer.FX_FAILURE, why.encode())
        return True

    def _malformed(self, request: bytes, code: int, what: str) -> None:
        self.malformed += 1
        closing = self.malformed >= MAX_MALFORMED
        log.warn("SFTP {account} malformed request ({what}): answered with status {code}{end}",
                 account=self.account.name, what=what, code=code,
                 end=f"; session closed after {self.malformed}" if closing else "")
        self._sendStatus(request, code, what.encode())
        if closing:
            self.closing = True
            self.transport.loseConnection()

    def _close(self, why: str) -> None:
        log.warn("SFTP {account} session closed: {why}", account=self.account.name, why=why)
        self.closing = True
        self.transport.loseConnection()

    def _cbOpenFile(self, fileObj, requestId):
        pulled = getattr(fileObj, "pulled", None)
        if pulled is not None and fileObj.key not in self.pulled:   # audited once a session
            self.pulled.add(fileObj.key)
            pulled()
        return super()._cbOpenFile(fileObj, requestId)

    def connectionLost(self, reason):
        """Uploads still open are discarded (conch would close — and so ingest — them);
        what the session held is let go."""
        for handle in self.openFiles.values():
            abandon = getattr(handle, "abandon", None)
            if abandon is not None:
                abandon()
        self.closing, self.buf = True, b""
        self._count(0)
        super().connectionLost(reason)
