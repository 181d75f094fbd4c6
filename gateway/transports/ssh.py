"""The SSH layer under the SFTP drops (twisted.conch): what a connection may ask for.

Only modern algorithms are offered (curve25519/ECDH key exchange, AES-CTR, SHA-2
MACs). After login a client may open session channels and start the ``sftp``
subsystem in them — nothing else. Every other request is refused with one log
line, never a traceback: port forwarding (``-L``, ``-R``, ``-W``: other channel
types and global requests), and in a session ``env`` (OpenSSH's default
``SendEnv``), ``pty-req``, ``shell``, ``exec``, ``x11-req``, other subsystems, and
data sent before a subsystem runs. A session that ends with SFTP uploads still
open discards them: the client never closed them, so they may be cut off.
"""

import struct

from twisted.conch.ssh import common, connection, filetransfer, session, transport
from twisted.logger import Logger

log = Logger(namespace="gatewayd.sftp")
QUIET_REQUESTS = {b"env", b"window-change"}     # what OpenSSH sends by default: logged at info


class Transport(transport.SSHServerTransport):
    """Only modern algorithms: no CBC, no SHA-1 or MD5 MACs, no SHA-1 key exchange."""

    supportedCiphers = [b"aes256-ctr", b"aes192-ctr", b"aes128-ctr"]
    supportedMACs = [b"hmac-sha2-512", b"hmac-sha2-256"]
    supportedKeyExchanges = [b"curve25519-sha256", b"curve25519-sha256@libssh.org",
                             b"ecdh-sha2-nistp256", b"ecdh-sha2-nistp384"]


def logged_in(protocol) -> bool:
    """Whether an SSH connection has passed its login (its service is the connection)."""
    return getattr(getattr(protocol, "service", None), "name", None) == b"ssh-connection"


def _who(transport_) -> str:
    account = getattr(getattr(transport_, "avatar", None), "name", None)
    return f"sftp:{account}" if account else "sftp client"


def _shown(name: bytes) -> str:
    return repr(name[:40].decode("ascii", "replace"))


class Connection(connection.SSHConnection):
    """Session channels only; any other channel type is refused with one line."""

    def ssh_CHANNEL_OPEN(self, packet):
        kind, rest = common.getNS(packet)
        if kind == b"session":
            return super().ssh_CHANNEL_OPEN(packet)
        (sender,) = struct.unpack(">L", rest[:4])
        log.warn("{who} refused: channel {kind} (forwarding is not offered)",
                 who=_who(self.transport), kind=_shown(kind))
        self.transport.sendPacket(connection.MSG_CHANNEL_OPEN_FAILURE, struct.pack(
            ">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + common.NS(b"not offered") + common.NS(b""))

    def gotGlobalRequest(self, requestType, data):
        log.warn("{who} refused: global request {kind} (forwarding is not offered)",
                 who=_who(self.transport), kind=_shown(requestType))
        return 0


class Session(session.SSHSession):
    """A session that runs the sftp subsystem and refuses everything else."""

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


class Server(filetransfer.FileTransferServer):
    """The SFTP subsystem: a session that ends with uploads still open discards them
    (conch would close — and so ingest — them)."""

    def connectionLost(self, reason):
        for handle in self.openFiles.values():
            abandon = getattr(handle, "abandon", None)
            if abandon is not None:
                abandon()
        super().connectionLost(reason)
