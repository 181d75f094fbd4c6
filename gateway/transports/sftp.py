"""SFTP drops (twisted.conch): key-only accounts, each confined to its own folder.

An account's folder holds ``inbox/`` (uploads), ``outbox/`` (messages for this
system, in its format) and ``errors/`` (a ``.err`` text file for each rejected
upload); deleting a file from ``outbox/`` confirms its pickup. An upload is
ingested when the client closes its file — or renames it from a ``.part`` or
``.tmp`` name; until then it is held in memory within bounds (see
``gateway.transports.uploads``), so no patient data reaches ``inbox/`` in plain
text, and a session that ends with files still open discards them (a cut-off
upload is never taken for a whole one). Outbox files are sealed
(``gateway.keys``) and opened as the client reads them, sizes shown as opened.
Paths are resolved and compared component by component; ``..``, absolute paths
outside the account, links, names that are not UTF-8, hold a NUL or are over-long
are refused and logged; there is no shell, no exec and no forwarding (see
``gateway.transports.ssh``). A file-system error is one log line and an SFTP
status, never a traceback.
"""

import errno
import functools
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from twisted.conch import avatar
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser, ISFTPFile, ISFTPServer
from twisted.conch.ssh import factory, filetransfer
from twisted.conch.ssh.keys import Key as SSHKey
from twisted.cred import portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway import audit, keys
from gateway.errors import DecodeError, StoreError
from gateway.intake import REFUSALS, Envelope
from gateway.transports import ssh
from gateway.transports.uploads import STAGING_SUFFIXES, Refused, Shelf, Upload, shown

FOLDERS = ("inbox", "outbox", "errors")
MAX_NAME, MAX_PATH = 255, 1024          # bytes in one path component, in a whole path
log = Logger(namespace="gatewayd.sftp")


def _clean(method):
    """A file-system error in ``method`` is one log line and an SFTP status, not conch's
    traceback ("no such file" is no news: no line)."""
    @functools.wraps(method)
    def checked(self, *args):
        try:
            return method(self, *args)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file") from None
            log.warn("SFTP {account} {operation} failed: {error}", account=self.name,
                     operation=method.__name__, error=exc.strerror)
            raise filetransfer.SFTPError(filetransfer.FX_FAILURE, exc.strerror or "failed") \
                from None
    return checked


@implementer(ISFTPServer)
class Account(avatar.ConchUser):
    """One SFTP account: the folder it is confined to and how uploads are ingested."""

    def __init__(self, name: str, root: Path, mandates: frozenset[str], accept,
                 outbox: "Outbox", shelf: Shelf):
        super().__init__()
        self.name, self.root, self.mandates = name, root.resolve(), mandates
        self.accept, self.outbox, self.shelf = accept, outbox, shelf
        self.channelLookup[b"session"] = ssh.Session
        self.subsystemLookup[b"sftp"] = ssh.Server
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def resolve(self, path: bytes | str) -> Path:
        """The real path for a client path, refused unless it stays inside the account."""
        raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.refuse(f"file name not UTF-8: {shown(raw.decode('utf-8', 'replace'))}")
        if "\0" in text or len(raw) > MAX_PATH:
            self.refuse(f"file name with a NUL or over {MAX_PATH} bytes: {shown(text)}")
        parts: list[str] = []
        for part in PurePosixPath("/", text).parts[1:]:
            if len(part.encode()) > MAX_NAME:
                self.refuse(f"file name over {MAX_NAME} bytes: {shown(part)}")
            if part == "..":
                if not parts:
                    self.refuse(f"'..' above the account folder: {shown(text)}")
                parts.pop()
            elif part != ".":
                parts.append(part)
        real = self.root.joinpath(*parts)
        if real.is_symlink():
            self.refuse(f"link: {shown(text)}")
        resolved = real.resolve()
        if resolved.parts[:len(self.root.parts)] != self.root.parts:
            self.refuse(f"outside the account: {shown(text)}")
        return resolved

    def refuse(self, what: str, told: str = "permission denied"):
        log.warn("SFTP {account} refused: {what}", account=self.name, what=what)
        raise Refused(told)

    def audit(self, result: str, detail: str) -> None:
        """Record an upload that was not taken (no message id: nothing was stored)."""
        self.outbox.store.record([audit.Event(f"sftp:{self.name}", "receive", result,
                                              detail=detail)])

    def gotVersion(self, otherVersion, extData):
        return {}

    @_clean
    def openFile(self, filename, flags, attrs):
        path = self.resolve(filename)
        writing = flags & (filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_APPEND)
        if writing and path.parent != self.root / "inbox":
            self.refuse(f"upload outside inbox/: {shown(path.name)}")
        if writing:
            files = self.shelf.holdings.limits.files
            if len(self.shelf.open) + len(self.shelf.staged) >= files:
                self.refuse(f"E-UPLOAD-LIMIT: {files} uploads open or staged: {shown(path.name)}",
                            f"E-UPLOAD-LIMIT: {files} uploads open or staged; rename or remove "
                            "staged files first")
            return Upload(self, path)
        if path.parent == self.root / "errors":
            return Download(path.read_bytes())
        if path.parent != self.root / "outbox":
            self.refuse(f"read outside outbox/ and errors/: {shown(path.name)}")
        try:
            return Download(self.outbox.open(self.name, path))
        except keys.SealBroken:
            raise filetransfer.SFTPError(filetransfer.FX_FAILURE, "file unavailable") from None

    @_clean
    def removeFile(self, filename):
        path = self.resolve(filename)
        if path.parent == self.root / "inbox" and self.shelf.unstage(path.name) is not None:
            return
        if path.parent not in (self.root / "outbox", self.root / "errors"):
            self.refuse(f"delete outside outbox/ and errors/: {shown(path.name)}")
        path.unlink()
        if path.parent == self.root / "outbox":
            self.outbox.picked_up(self.name, path.name)   # reading and deleting confirms pickup

    @_clean
    def renameFile(self, oldpath, newpath):
        old, new = self.resolve(oldpath), self.resolve(newpath)
        if old.parent != self.root / "inbox" or new.parent != self.root / "inbox":
            self.refuse("rename outside inbox/")
        data = self.shelf.unstage(old.name)
        if data is None:
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file")
        if new.suffix in STAGING_SUFFIXES:
            self.shelf.stage(new.name, data, self.expire)
            return None
        return self.ingest(new, data)

    def expire(self, name: str) -> None:
        """A staged upload was not renamed in time: discard it."""
        data = self.shelf.unstage(name)
        if data is not None:
            seconds = self.shelf.holdings.limits.staged_seconds
            log.warn("SFTP {account} staged upload {name} not renamed within {seconds} s: "
                     "discarded", account=self.name, name=shown(name), seconds=seconds)
            self.audit("discarded", f"staged upload of {len(data)} bytes not renamed within "
                                    f"{seconds} s")

    def ingest(self, path: Path, data: bytes) -> defer.Deferred:
        """Hand a closed upload to the intake, or leave a .err file saying why not."""
        result = defer.maybeDeferred(self.accept, data, Envelope(self.name, "sftp", self.mandates,
                                                                framed=False))

        def stored(receipts):
            for receipt in receipts:
                log.info("accepted id={id} zd={zd} state={state} from sftp:{account}",
                         id=receipt.id, zd=receipt.zd_number, state=receipt.state,
                         account=self.name)

        def refused(failure):
            if failure.check(StoreError):        # not judged, just not stored: no .err file
                raise filetransfer.SFTPError(filetransfer.FX_FAILURE, "not stored; send again")
            failure.trap(DecodeError, *REFUSALS)
            (self.root / "errors" / f"{path.name}.err").write_text(f"{failure.value}\n")
            log.warn("upload from sftp:{account} refused: {error}", account=self.name,
                     error=str(failure.value))

        return result.addCallbacks(stored, refused)

    def makeDirectory(self, path, attrs):
        self.refuse("making folders")

    def removeDirectory(self, path):
        self.refuse("removing folders")

    @_clean
    def openDirectory(self, path):
        folder = self.resolve(path)
        if not folder.is_dir():
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "not a folder")
        staged = self.shelf.staged if folder == self.root / "inbox" else {}
        return Listing(folder, {name: len(s.data) for name, s in staged.items()})

    @_clean
    def getAttrs(self, path, followLinks):
        path = self.resolve(path)
        if path.parent == self.root / "inbox" and path.name in self.shelf.staged:
            return _staged_attrs(len(self.shelf.staged[path.name].data))
        return _attrs(os.lstat(path))

    def setAttrs(self, path, attrs):
        return None

    def readLink(self, path):
        self.refuse("reading links")

    def makeLink(self, linkPath, targetPath):
        self.refuse("making links")

    def realPath(self, path):
        return "/" + "/".join(self.resolve(path).parts[len(self.root.parts):])

    def extendedRequest(self, extendedName, extendedData):
        raise NotImplementedError

    def logout(self):
        pass


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
    """A folder's entries; in inbox/, the staged uploads (held in memory) too."""

    def __init__(self, path: Path, staged: dict[str, int]):
        entries = [(entry.name, entry) for entry in path.iterdir()]
        entries += [(name, size) for name, size in staged.items()]
        self.entries = iter(sorted(entries, key=lambda pair: pair[0]))
        self.outbox = path.name == "outbox"

    def __iter__(self):
        return self

    def __next__(self):
        name, entry = next(self.entries)
        if isinstance(entry, int):
            return name, name, _staged_attrs(entry)
        info = _attrs(os.lstat(entry))
        if self.outbox and entry.suffix != ".tmp":
            info["size"] = sealed_size(entry)
        return name, name, info

    def close(self):
        pass


def sealed_size(path: Path) -> int:
    """The size a sealed outbox file opens to."""
    found = keys.file_header(path)
    return keys.plain_size(path.stat().st_size, found[0]) if found else 0


def _staged_attrs(size: int) -> dict:
    return {"size": size, "permissions": stat.S_IFREG | 0o600}


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
    built = factory.SSHFactory()
    built.protocol = ssh.Transport
    built.services = {**built.services, b"ssh-connection": ssh.Connection}
    built.publicKeys = {host_key.sshType(): host_key.public()}
    built.privateKeys = {host_key.sshType(): host_key}
    built.portal = portal.Portal(Realm(accounts), [SSHPublicKeyChecker(InMemorySSHKeyDB(
        _ByteNames(authorized)))])
    return built


class _ByteNames(Mapping):
    """``authorized`` looked up by byte user names, live: a reload that changes the dict
    changes who may log in."""

    def __init__(self, authorized: dict):
        self.authorized = authorized

    def __getitem__(self, name: bytes):
        return self.authorized[name.decode("utf-8", "replace")]

    def __iter__(self):
        return (name.encode() for name in self.authorized)

    def __len__(self):
        return len(self.authorized)


EXTENSIONS = {"edifact": "edi", "hl7": "hl7", "zd-hl7": "hl7", "xml": "xml"}


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
