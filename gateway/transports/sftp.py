"""SFTP drops (twisted.conch): key-only accounts, each confined to its own folder.

An account's folder holds ``inbox/`` (uploads), ``outbox/`` (messages for this
system, in its format) and ``errors/`` (a ``.err`` text file for each rejected
upload); deleting a file from ``outbox/`` confirms its pickup. An upload is
ingested when the client closes its file — or renames it from a ``.part`` or
``.tmp`` name. A session that ends with files still open (a dropped connection,
a killed client) discards them: a cut-off upload is never taken for a whole one
(logged and audited, no ``.err`` file, since nothing was read). An upload over the
cap, or a write that would leave a gap, is refused and nothing of it is kept.
Uploads are held in memory until the store committed them,
so no patient data reaches ``inbox/`` in plain text; outbox files are sealed
(``gateway.keys``) and opened as the client reads them, sizes shown as opened.
Paths are resolved and compared component by component; ``..``, absolute paths
outside the account, and links are refused and logged;
there is no shell and no exec. Uploads are capped. Only modern algorithms are
offered: curve25519/ECDH key exchange, AES-CTR ciphers, SHA-2 MACs.
"""

import os
import stat
from pathlib import Path, PurePosixPath

from twisted.conch import avatar
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser, ISFTPFile, ISFTPServer
from twisted.conch.ssh import factory, filetransfer, session, transport
from twisted.conch.ssh.keys import Key as SSHKey
from twisted.cred import portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway import audit, keys
from gateway.errors import DecodeError
from gateway.intake import REFUSALS, Envelope

FOLDERS = ("inbox", "outbox", "errors")
STAGING_SUFFIXES = (".part", ".tmp")
log = Logger(namespace="gatewayd.sftp")


class Refused(filetransfer.SFTPError):
    def __init__(self, message: str):
        super().__init__(filetransfer.FX_PERMISSION_DENIED, message)


class Server(filetransfer.FileTransferServer):
    """The SFTP subsystem: a session that ends with uploads still open discards them
    (conch would close — and so ingest — them)."""

    def connectionLost(self, reason):
        for handle in self.openFiles.values():
            if isinstance(handle, Upload):
                handle.abandon()
        super().connectionLost(reason)


class Transport(transport.SSHServerTransport):
    """Only modern algorithms: no CBC, no SHA-1 or MD5 MACs, no SHA-1 key exchange."""

    supportedCiphers = [b"aes256-ctr", b"aes192-ctr", b"aes128-ctr"]
    supportedMACs = [b"hmac-sha2-512", b"hmac-sha2-256"]
    supportedKeyExchanges = [b"curve25519-sha256", b"curve25519-sha256@libssh.org",
                             b"ecdh-sha2-nistp256", b"ecdh-sha2-nistp384"]


@implementer(ISFTPServer)
class Account(avatar.ConchUser):
    """One SFTP account: the folder it is confined to and how uploads are ingested."""

    def __init__(self, name: str, root: Path, mandates: frozenset[str], accept, max_upload: int,
                 outbox: "Outbox"):
        super().__init__()
        self.name, self.root, self.mandates = name, root.resolve(), mandates
        self.accept, self.max_upload, self.outbox = accept, max_upload, outbox
        self.staged: dict[str, bytes] = {}      # closed .part/.tmp uploads awaiting their rename
        self.channelLookup[b"session"] = session.SSHSession   # no ISession: no shell, no exec
        self.subsystemLookup[b"sftp"] = Server
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def resolve(self, path: bytes | str) -> Path:
        """The real path for a client path, refused unless it stays inside the account."""
        text = path.decode("utf-8") if isinstance(path, bytes) else path
        parts: list[str] = []
        for part in PurePosixPath("/", text).parts[1:]:
            if part == "..":
                if not parts:
                    self._refuse(f"'..' above the account folder: {text[:80]!r}")
                parts.pop()
            elif part != ".":
                parts.append(part)
        real = self.root.joinpath(*parts)
        if real.is_symlink():
            self._refuse(f"link: {text[:80]!r}")
        resolved = real.resolve()
        if resolved.parts[:len(self.root.parts)] != self.root.parts:
            self._refuse(f"outside the account: {text[:80]!r}")
        return resolved

    def _refuse(self, what: str, told: str = "permission denied"):
        log.warn("SFTP {account} refused: {what}", account=self.name, what=what)
        raise Refused(told)

    def audit(self, result: str, detail: str) -> None:
        """Record an upload that was not taken (no message id: nothing was stored)."""
        self.outbox.store.record([audit.Event(f"sftp:{self.name}", "receive", result,
                                              detail=detail)])

    def gotVersion(self, otherVersion, extData):
        return {}

    def openFile(self, filename, flags, attrs):
        path = self.resolve(filename)
        writing = flags & (filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_APPEND)
        if writing and path.parent != self.root / "inbox":
            self._refuse(f"upload outside inbox/: {path.name!r}")
        if writing:
            return Upload(self, path)
        if path.parent == self.root / "errors":
            return Download(path.read_bytes())
        if path.parent != self.root / "outbox":
            self._refuse(f"read outside outbox/ and errors/: {path.name!r}")
        try:
            return Download(self.outbox.open(self.name, path))
        except keys.SealBroken:
            raise filetransfer.SFTPError(filetransfer.FX_FAILURE, "file unavailable") from None

    def removeFile(self, filename):
        path = self.resolve(filename)
        if path.parent == self.root / "inbox" and path.name in self.staged:
            del self.staged[path.name]
            return
        if path.parent not in (self.root / "outbox", self.root / "errors"):
            self._refuse(f"delete outside outbox/ and errors/: {path.name!r}")
        path.unlink()
        if path.parent == self.root / "outbox":
            self.outbox.picked_up(self.name, path.name)   # reading and deleting confirms pickup

    def renameFile(self, oldpath, newpath):
        old, new = self.resolve(oldpath), self.resolve(newpath)
        if old.parent != self.root / "inbox" or new.parent != self.root / "inbox":
            self._refuse("rename outside inbox/")
        if old.name not in self.staged:
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file")
        data = self.staged.pop(old.name)
        if new.suffix in STAGING_SUFFIXES:
            self.staged[new.name] = data
            return None
        return ingest(self, new, data)

    def makeDirectory(self, path, attrs):
        self._refuse("making folders")

    def removeDirectory(self, path):
        self._refuse("removing folders")

    def openDirectory(self, path):
        return Listing(self.resolve(path))

    def getAttrs(self, path, followLinks):
        path = self.resolve(path)
        if path.parent == self.root / "inbox" and path.name in self.staged:
            return {"size": len(self.staged[path.name]), "permissions": 0o100600}
        return _attrs(os.lstat(path))

    def setAttrs(self, path, attrs):
        return None

    def readLink(self, path):
        self._refuse("reading links")

    def makeLink(self, linkPath, targetPath):
        self._refuse("making links")

    def realPath(self, path):
        return "/" + "/".join(self.resolve(path).parts[len(self.root.parts):])

    def extendedRequest(self, extendedName, extendedData):
        raise NotImplementedError

    def logout(self):
        pass


@implementer(ISFTPFile)
class Upload:
    """A file written into inbox/: held in memory, capped, and ingested when the client
    closes it. Writes must follow on from what was written (no gaps: SFTP clients write
    in order); a refused or abandoned upload keeps nothing."""

    def __init__(self, account: Account, path: Path):
        self.account, self.path, self.data = account, path, bytearray()
        self.done = False          # closed, refused or abandoned: nothing more is taken

    def writeChunk(self, offset, data):
        if self.done:
            raise Refused("upload refused")
        end = offset + len(data)
        if end > self.account.max_upload:
            self._refuse(f"E-TOO-LARGE: upload larger than {self.account.max_upload} bytes")
        if offset > len(self.data):
            self._refuse(f"E-UPLOAD-GAP: write at byte {offset} after {len(self.data)} bytes; "
                         "writes must follow on from the bytes written")
        self.data[offset:end] = data

    def readChunk(self, offset, length):
        raise Refused("write-only")

    def getAttrs(self):
        return {"size": len(self.data), "permissions": 0o100600}

    def setAttrs(self, attrs):
        return None

    def close(self):
        if self.done:
            return None
        self.done = True
        data, self.data = bytes(self.data), bytearray()
        if self.path.suffix in STAGING_SUFFIXES:
            self.account.staged[self.path.name] = data
            return None
        return ingest(self.account, self.path, data)

    def abandon(self) -> None:
        """The session ended before the client closed the file: the upload may be cut
        off, so nothing of it is taken."""
        if not self.done:
            log.warn("SFTP {account} upload {name} cut off after {size} bytes (session ended "
                     "before close): discarded", account=self.account.name,
                     name=_shown(self.path.name), size=len(self.data))
            self._discard("discarded", f"upload cut off after {len(self.data)} bytes "
                                       "(session ended before close)")

    def _refuse(self, why: str):
        """Keep nothing, say why in errors/<name>.err, and fail the client's write."""
        self._discard("refused", why)
        (self.account.root / "errors" / f"{self.path.name}.err").write_text(f"{why}\n")
        self.account._refuse(f"{why}: {_shown(self.path.name)}", why)

    def _discard(self, result: str, detail: str) -> None:
        self.done, self.data = True, bytearray()
        self.account.audit(result, detail)


@implementer(ISFTPFile)
class Download:
    """A file read from outbox/ (opened from its seal) or errors/."""

    def __init__(self, data: bytes):
        self.data = data

    def readChunk(self, offset, length):
        if offset >= len(self.data):
            raise EOFError()
        return self.data[offset:offset + length]

    def writeChunk(self, offset, data):
        raise Refused("read-only")

    def getAttrs(self):
        return {"size": len(self.data), "permissions": 0o100400}

    def setAttrs(self, attrs):
        return None

    def close(self):
        return None


class Listing:
    def __init__(self, path: Path):
        self.entries = iter(sorted(path.iterdir()))
        self.outbox = path.name == "outbox"

    def __iter__(self):
        return self

    def __next__(self):
        entry = next(self.entries)
        info = _attrs(os.lstat(entry))
        if self.outbox and entry.suffix != ".tmp":
            info["size"] = sealed_size(entry)
        return entry.name, f"{entry.name}", info

    def close(self):
        pass


def sealed_size(path: Path) -> int:
    """The size a sealed outbox file opens to."""
    found = keys.file_header(path)
    return keys.plain_size(path.stat().st_size, found[0]) if found else 0


def ingest(account: Account, path: Path, data: bytes) -> defer.Deferred:
    """Hand a closed upload to the intake, or leave a .err file saying why not."""
    result = defer.maybeDeferred(account.accept, data, Envelope(account.name, "sftp",
                                                                account.mandates))

    def stored(receipts):
        for receipt in receipts:
            log.info("accepted id={id} zd={zd} state={state} from sftp:{account}",
                     id=receipt.id, zd=receipt.zd_number, state=receipt.state, account=account.name)

    def refused(failure):
        failure.trap(DecodeError, *REFUSALS)
        (account.root / "errors" / f"{path.name}.err").write_text(f"{failure.value}\n")
        log.warn("upload from sftp:{account} refused: {error}", account=account.name,
                 error=str(failure.value))

    return result.addCallbacks(stored, refused)


def _shown(name: str) -> str:
    """A client's file name as it may appear in a log line: quoted, escaped, bounded."""
    return repr(name[:80])


def _attrs(info: os.stat_result) -> dict:
    return {"size": info.st_size, "uid": 0, "gid": 0, "permissions": stat.S_IMODE(info.st_mode)
            | stat.S_IFMT(info.st_mode), "atime": int(info.st_atime), "mtime": int(info.st_mtime)}


@implementer(portal.IRealm)
class Realm:
    def __init__(self, accounts: dict[str, Account]):
        self.accounts = accounts

    def requestAvatar(self, avatarId, mind, *interfaces):
        account = self.accounts[avatarId.decode()]
        return IConchUser, account, account.logout


def server_factory(host_key: SSHKey, accounts: dict[str, Account],
                   authorized: dict[str, list[SSHKey]]) -> factory.SSHFactory:
    """An SSH factory that offers only SFTP, to these accounts, with these keys."""
    ssh = factory.SSHFactory()
    ssh.protocol = Transport
    ssh.publicKeys = {host_key.sshType(): host_key.public()}
    ssh.privateKeys = {host_key.sshType(): host_key}
    ssh.portal = portal.Portal(Realm(accounts), [SSHPublicKeyChecker(InMemorySSHKeyDB(
        {name.encode(): found for name, found in authorized.items()}))])
    return ssh


EXTENSIONS = {"edifact": "edi", "hl7": "hl7", "xml": "xml"}


def _write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` durably (temporary name, fsync, rename)."""
    temporary = target.with_suffix(target.suffix + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, target)


class Outbox:
    """The SFTP outboxes. Push delivery to ``sftp:ACCOUNT`` writes the payload sealed and
    durably (temporary name, fsync, rename) as ``outbox/<ZD number>.<format>``; a read
    opens it for that account only, and is audited. A file that fails its seal (altered,
    or not this account's message) is moved to ``<spool>/quarantine/``, reported with an
    ALERT line, never served, and its message written out again from the store."""

    def __init__(self, root: Path, store):
        self.root, self.store = root, store

    def deliver(self, row, payload: bytes) -> defer.Deferred:
        account = row["delivery"].removeprefix("sftp:")
        outbox = self.root / account / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        target = outbox / f"{row['zd_number'] or row['id']}.{EXTENSIONS.get(row['format'], 'dat')}"
        self.store.check_current()
        _write(target, self.store.ring.seal(payload, row["id"]))
        return defer.succeed(None)

    def reseal(self, path: Path) -> int:
        """Seal an outbox file again under the current key (1), or leave it (0: current
        already, or unreadable — a read quarantines that)."""
        blob = path.read_bytes()
        try:
            key_id, message_id, _ = keys.header(blob)
            if key_id == self.store.ring.current:
                return 0
            _write(path, self.store.ring.seal(self.store.ring.open(blob, message_id), message_id))
        except keys.SealBroken:
            return 0
        return 1

    def open(self, account: str, path: Path) -> bytes:
        """The plain content of an outbox file read by ``account``; raise SealBroken."""
        blob, row = path.read_bytes(), None
        try:
            row = self.store.get(keys.header(blob)[1])
            if row is None or row["delivery"] != f"sftp:{account}":
                raise keys.SealBroken("not a message for this account")
            plain = self.store.ring.open(blob, row["id"])
        except keys.SealBroken as exc:
            self._quarantine(account, path, row, exc)
            raise
        self.store.record([audit.about(row, f"sftp:{account}", "pull", detail=path.name)])
        return plain

    def _quarantine(self, account: str, path: Path, row, problem: Exception) -> None:
        folder = self.store.root / "quarantine"
        folder.mkdir(exist_ok=True)
        os.replace(path, folder / f"{account}-{path.name}")
        log.critical("ALERT outbox file {name} of sftp:{account} failed its seal ({problem}): "
                     "quarantined, not served", name=path.name, account=account, problem=problem)
        if row is not None and row["delivery"] == f"sftp:{account}" and row["state"] == "delivered":
            self.store.transition(row["id"], "outbound", f"sftp:{account}",
                                  "outbox file failed its seal; written again", action="quarantine")

    def picked_up(self, account: str, file_name: str) -> None:
        """Record that ``account`` fetched and removed a file from its outbox."""
        zd_number = file_name.rsplit(".", 1)[0]
        for row in self.store.by_zd(zd_number):
            if row["delivery"] == f"sftp:{account}" and row["state"] == "delivered":
                self.store.note(row["id"], f"sftp:{account}", "pickup confirmed", "pickup")
                log.info("pickup confirmed id={id} by sftp:{account}", id=row["id"], account=account)
