"""SFTP drops (twisted.conch): key-only accounts, each confined to its own folder.

An account's folder holds ``inbox/`` (uploads), ``outbox/`` (messages for this
system, in its format) and ``errors/`` (a ``.err`` text file for each rejected
upload); deleting a file from ``outbox/`` confirms its pickup. An upload is ingested when its file is closed — or when it is renamed
from a ``.part`` or ``.tmp`` name — and removed from ``inbox/`` only after the
store committed it. Paths are resolved and compared component by component;
``..``, absolute paths outside the account, and links are refused and logged;
there is no shell and no exec. Uploads are capped. Only modern algorithms are
offered: curve25519/ECDH key exchange, AES-CTR ciphers, SHA-2 MACs.
"""

import os
import stat
from pathlib import Path, PurePosixPath

from twisted.conch import avatar
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser, ISFTPFile, ISFTPServer
from twisted.conch.ssh import factory, filetransfer, keys, session, transport
from twisted.cred import portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.errors import DecodeError
from gateway.intake import DuplicateConflict, Envelope, NotMandated

FOLDERS = ("inbox", "outbox", "errors")
STAGING_SUFFIXES = (".part", ".tmp")
log = Logger(namespace="gatewayd.sftp")


class Refused(filetransfer.SFTPError):
    def __init__(self, message: str):
        super().__init__(filetransfer.FX_PERMISSION_DENIED, message)


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
                 on_pickup=lambda account, file_name: None):
        super().__init__()
        self.name, self.root, self.mandates = name, root.resolve(), mandates
        self.accept, self.max_upload, self.on_pickup = accept, max_upload, on_pickup
        self.channelLookup[b"session"] = session.SSHSession   # no ISession: no shell, no exec
        self.subsystemLookup[b"sftp"] = filetransfer.FileTransferServer
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

    def _refuse(self, what: str):
        log.warn("SFTP {account} refused: {what}", account=self.name, what=what)
        raise Refused("permission denied")

    def gotVersion(self, otherVersion, extData):
        return {}

    def openFile(self, filename, flags, attrs):
        path = self.resolve(filename)
        writing = flags & (filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_APPEND)
        if writing and path.parent != self.root / "inbox":
            self._refuse(f"upload outside inbox/: {path.name!r}")
        if not writing and path.parent not in (self.root / "outbox", self.root / "errors"):
            self._refuse(f"read outside outbox/ and errors/: {path.name!r}")
        return Upload(self, path) if writing else Download(self, path)

    def removeFile(self, filename):
        path = self.resolve(filename)
        if path.parent not in (self.root / "outbox", self.root / "errors"):
            self._refuse(f"delete outside outbox/ and errors/: {path.name!r}")
        path.unlink()
        if path.parent == self.root / "outbox":
            self.on_pickup(self.name, path.name)        # reading and deleting confirms pickup

    def renameFile(self, oldpath, newpath):
        old, new = self.resolve(oldpath), self.resolve(newpath)
        if old.parent != self.root / "inbox" or new.parent != self.root / "inbox":
            self._refuse("rename outside inbox/")
        os.rename(old, new)
        if old.suffix in STAGING_SUFFIXES and new.suffix not in STAGING_SUFFIXES:
            return ingest(self, new)

    def makeDirectory(self, path, attrs):
        self._refuse("making folders")

    def removeDirectory(self, path):
        self._refuse("removing folders")

    def openDirectory(self, path):
        return Listing(self.resolve(path))

    def getAttrs(self, path, followLinks):
        return _attrs(os.lstat(self.resolve(path)))

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
class _OpenFile:
    """An open file: attributes from the handle; reading and writing refused unless a
    subclass allows them."""

    def __init__(self, path: Path, mode: str):
        self.path, self.handle = path, open(path, mode)

    def readChunk(self, offset, length):
        raise Refused("write-only")

    def writeChunk(self, offset, data):
        raise Refused("read-only")

    def getAttrs(self):
        return _attrs(os.fstat(self.handle.fileno()))

    def setAttrs(self, attrs):
        return None

    def close(self):
        self.handle.close()


class Upload(_OpenFile):
    """A file written into inbox/: capped, and ingested when closed."""

    def __init__(self, account: Account, path: Path):
        super().__init__(path, "wb")
        self.account = account

    def writeChunk(self, offset, data):
        if offset + len(data) > self.account.max_upload:
            self.handle.close()
            self.path.unlink(missing_ok=True)
            self.account._refuse(f"upload larger than {self.account.max_upload} bytes")
        self.handle.seek(offset)
        self.handle.write(data)

    def close(self):
        self.handle.close()
        if self.path.suffix in STAGING_SUFFIXES or not self.path.exists():
            return None
        return ingest(self.account, self.path)


class Download(_OpenFile):
    """A file read from outbox/ or errors/."""

    def __init__(self, account: Account, path: Path):
        super().__init__(path, "rb")

    def readChunk(self, offset, length):
        self.handle.seek(offset)
        data = self.handle.read(length)
        if not data:
            raise EOFError()
        return data


class Listing:
    def __init__(self, path: Path):
        self.entries = iter(sorted(path.iterdir()))

    def __iter__(self):
        return self

    def __next__(self):
        entry = next(self.entries)
        info = os.lstat(entry)
        return entry.name, f"{entry.name}", _attrs(info)

    def close(self):
        pass


def ingest(account: Account, path: Path) -> defer.Deferred:
    """Hand a closed upload to the intake; remove it once stored, or leave a .err file."""
    data = path.read_bytes()
    result = defer.maybeDeferred(account.accept, data, Envelope(account.name, "sftp",
                                                                account.mandates))

    def stored(receipts):
        path.unlink(missing_ok=True)
        for receipt in receipts:
            log.info("accepted id={id} zd={zd} state={state} from sftp:{account}",
                     id=receipt.id, zd=receipt.zd_number, state=receipt.state, account=account.name)

    def refused(failure):
        failure.trap(DecodeError, NotMandated, DuplicateConflict)
        (account.root / "errors" / f"{path.name}.err").write_text(f"{failure.value}\n")
        path.unlink(missing_ok=True)
        log.warn("upload from sftp:{account} refused: {error}", account=account.name,
                 error=str(failure.value))

    return result.addCallbacks(stored, refused)


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


def server_factory(host_key: keys.Key, accounts: dict[str, Account],
                   authorized: dict[str, list[keys.Key]]) -> factory.SSHFactory:
    """An SSH factory that offers only SFTP, to these accounts, with these keys."""
    ssh = factory.SSHFactory()
    ssh.protocol = Transport
    ssh.publicKeys = {host_key.sshType(): host_key.public()}
    ssh.privateKeys = {host_key.sshType(): host_key}
    ssh.portal = portal.Portal(Realm(accounts), [SSHPublicKeyChecker(InMemorySSHKeyDB(
        {name.encode(): found for name, found in authorized.items()}))])
    return ssh


EXTENSIONS = {"edifact": "edi", "hl7": "hl7", "xml": "xml"}


class OutboxDeliverer:
    """Delivers to ``sftp:ACCOUNT``: the payload is written durably into the account's
    ``outbox/`` as ``<ZD number>.<format>`` (temporary name, fsync, rename)."""

    def __init__(self, root: Path):
        self.root = root

    def deliver(self, row, payload: bytes) -> defer.Deferred:
        account = row["delivery"].removeprefix("sftp:")
        outbox = self.root / account / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        target = outbox / f"{row['zd_number'] or row['id']}.{EXTENSIONS.get(row['format'], 'dat')}"
        temporary = target.with_suffix(target.suffix + ".tmp")
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, target)
        return defer.succeed(None)
