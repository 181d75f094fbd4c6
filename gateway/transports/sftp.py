"""SFTP drops (twisted.conch): key-only accounts, each confined to its own folder.

An account's folder holds ``inbox/`` (uploads), ``outbox/`` (messages for this
system, in its format) and ``errors/`` (a ``.err`` text file for each rejected
upload, at most ``limits.sftp_error_files`` of them: the oldest go, and the
retention purge removes those older than ``retention.sftp_error_days``);
deleting a file from ``outbox/`` confirms its pickup. ``outbox/`` is served from
the store (``gateway.transports.outbox``): every node on one database lists the
same files and sees a pickup at once; ``inbox/`` and ``errors/`` are this
node's. An upload is ingested when the client closes its file — or renames it
from a ``.part`` or ``.tmp`` name; until then it is held in memory within bounds
(see ``gateway.transports.uploads``), so no patient data reaches ``inbox/`` in
plain text, and a session that ends with files still open discards them (a cut-off
upload is never taken for a whole one); a staged file replaced by another of
its name is one log line and an audit record. Outbox files are the messages'
sealed payloads, opened as the client reads them, within the same memory bounds
(``gateway.transports.downloads``), sizes shown as opened. Audit records of
refused or discarded uploads and of reads go with the next group commit.
Paths are resolved and compared component by component; ``..``, absolute paths
outside the account, links, names that are not UTF-8, hold a character that is
not printable (a NUL, a line break, an escape, U+2028) or are over-long are
refused and logged; a client's file name is never written to a log line or an
audit record, only its tag (``uploads.name_tag``). There is no shell, no exec and
no forwarding (see ``gateway.transports.ssh``). A file-system error is one log
line and an SFTP status, never a traceback.
"""

import errno
import functools
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from twisted.conch import avatar
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser, ISFTPServer
from twisted.conch.ssh import factory, filetransfer
from twisted.conch.ssh.keys import Key as SSHKey
from twisted.cred import portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import audit, keys
from gateway.errors import DecodeError, StoreError
from gateway.reading import REFUSALS, Envelope
from gateway.transports import ssh
from gateway.transports.downloads import Files, Listing, attrs, download, staged_attrs
from gateway.transports.outbox import attrs as outbox_attrs
from gateway.transports.outbox import Outbox
from gateway.transports.uploads import STAGING_SUFFIXES, Refused, Shelf, Upload, name_tag

__all__ = ["Account", "Listing", "Outbox", "server_factory"]
FOLDERS = ("inbox", "outbox", "errors")
MAX_NAME, MAX_PATH = 255, 1024          # bytes in one path component, in a whole path
ERR = ".err"                            # an upload's name plus this must be a file name too
log = Logger(namespace="gatewayd.sftp")


class NotStored(filetransfer.SFTPError):
    """The store failed (a full disk): nothing was judged, the client may send again."""


def _clean(method):
    """A file-system error in ``method`` is one log line and an SFTP status, not conch's
    traceback ("no such file" is no news: no line)."""
    @functools.wraps(method)
    def checked(self, *args):
        try:
            return method(self, *args)
        except StoreError as exc:
            log.warn("SFTP {account} {operation} failed: {error}", account=self.name,
                     operation=method.__name__, error=exc.message)
            raise filetransfer.SFTPError(filetransfer.FX_FAILURE, "store unavailable; try "
                                         "again") from None
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
                 outbox: Outbox, shelf: Shelf):
        super().__init__()
        self.name, self.root, self.mandates = name, root.resolve(), mandates
        self.accept, self.outbox, self.shelf = accept, outbox, shelf
        self.limits = shelf.holdings.limits
        shelf.replaced = self.replaced
        self.channelLookup[b"session"] = ssh.Session
        self.subsystemLookup[b"sftp"] = ssh.Server
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def tag(self, name: str) -> str:
        """What stands for the client's file (or path) ``name`` in logs and audit records."""
        return name_tag(self.outbox.store.ring.audit_key, name)

    def resolve(self, path: bytes | str) -> Path:
        """The real path for a client path, refused unless it stays inside the account."""
        raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.refuse(f"file name not UTF-8: {self.tag(raw.decode('utf-8', 'replace'))}")
        if not text.isprintable() or len(raw) > MAX_PATH:
            self.refuse(f"file name with a character that is not printable (a NUL, a line "
                        f"break, an escape) or over {MAX_PATH} bytes: {self.tag(text)}")
        parts: list[str] = []
        for part in PurePosixPath("/", text).parts[1:]:
            if len(part.encode()) > MAX_NAME:
                self.refuse(f"file name over {MAX_NAME} bytes: {self.tag(part)}")
            if part == "..":
                if not parts:
                    self.refuse(f"'..' above the account folder: {self.tag(text)}")
                parts.pop()
            elif part != ".":
                parts.append(part)
        real = self.root.joinpath(*parts)
        if real.is_symlink():
            self.refuse(f"link: {self.tag(text)}")
        resolved = real.resolve()
        if resolved.parts[:len(self.root.parts)] != self.root.parts:
            self.refuse(f"outside the account: {self.tag(text)}")
        return resolved

    def upload_path(self, path: bytes | str, what: str = "upload") -> Path:
        """The real path of a file to be written into inbox/, or refused."""
        target = self.resolve(path)
        if target.parent != self.root / "inbox":
            self.refuse(f"{what} outside inbox/: {self.tag(target.name)}")
        if len(target.name.encode()) > MAX_NAME - len(ERR):
            self.refuse(f"{what} name over {MAX_NAME - len(ERR)} bytes: {self.tag(target.name)}",
                        f"file name over {MAX_NAME - len(ERR)} bytes")
        return target

    def refuse(self, what: str, told: str = "permission denied"):
        log.warn("SFTP {account} refused: {what}", account=self.name, what=what)
        raise Refused(told)

    def audit(self, result: str, detail: str) -> None:
        """Record an upload that was not taken (no message id: nothing was stored), with
        the next group commit (no write of its own on the reactor thread)."""
        self.outbox.audit([audit.Event(f"sftp:{self.name}", "receive", result, detail=detail)])

    def replaced(self, name: str, size: int) -> None:
        """A staged upload was replaced by another of the same name: say so."""
        what = f"staged upload {self.tag(name)} of {size} bytes replaced by another of its name"
        log.warn("SFTP {account} {what}", account=self.name, what=what)
        self.audit("replaced", what)

    def leave_error(self, name: str, why: str) -> None:
        """Write errors/<name>.err saying ``why`` (and the tag the log lines use), then
        remove the oldest .err files past limits.sftp_error_files."""
        folder = self.root / "errors"
        try:
            (folder / f"{name}{ERR}").write_text(f"{why}\nlogged as {self.tag(name)}\n")
            with os.scandir(folder) as entries:
                found = sorted((entry.stat().st_mtime_ns, entry.name) for entry in entries
                               if entry.name.endswith(ERR))
            for _, old in found[:max(0, len(found) - self.limits.error_files)]:
                (folder / old).unlink(missing_ok=True)
        except OSError as exc:
            log.warn("SFTP {account} .err file for {tag} not written: {error}",
                     account=self.name, tag=self.tag(name), error=exc.strerror)

    def gotVersion(self, otherVersion, extData):
        return {ssh.LIMITS_EXTENSION: b"1"}

    @_clean
    def openFile(self, filename, flags, attrs_):
        writing = flags & (filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_APPEND)
        if writing:
            path = self.upload_path(filename)
            if self.shelf.uploads() >= self.limits.files:
                why = f"E-UPLOAD-LIMIT: {self.limits.files} uploads open or staged"
                self.refuse(f"{why}: {self.tag(path.name)}",
                            f"{why}; rename or remove staged files first")
            return Upload(self, path)
        path = self.resolve(filename)
        if path.parent == self.root / "errors":
            return self._download(path, path.stat().st_size, path.read_bytes)
        if path.parent != self.root / "outbox":
            self.refuse(f"read outside outbox/ and errors/: {self.tag(path.name)}")
        return self._from_outbox(path.name)

    def _listed(self, name: str):
        """The outbox file ``name`` as the store lists it; raise "no such file"."""
        found = self.outbox.find(self.name, name)
        if found is None:
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file")
        return found

    def _from_outbox(self, name: str):
        """A handle on an outbox file: opened from the store (once for every handle of the
        account on it), a session's first read audited."""
        found, opened = self._listed(name), []

        def load():
            try:
                plain, row = self.outbox.plain(self.name, name)
            except keys.SealBroken:
                raise filetransfer.SFTPError(filetransfer.FX_FAILURE, "file unavailable") \
                    from None
            opened.append(row)
            return plain

        def pulled():
            row = opened[0] if opened else self.outbox.store.get(found["message_id"])
            if row is not None:
                self.outbox.pulled(self.name, row, name)
        key = ("outbox", name, found["message_id"], found["listed_at"], found["size"])
        return self._handle(key, found["size"], load, pulled)

    def _download(self, path: Path, size: int, load, pulled=None):
        info = path.stat()
        key = (str(path), info.st_ino, info.st_mtime_ns, info.st_size)
        return self._handle(key, size, load, pulled)

    def _handle(self, key: tuple, size: int, load, pulled=None):
        handle = download(self.shelf, key, size, load, pulled)
        if isinstance(handle, str):
            log.warn("SFTP {account} refused: {why}", account=self.name, why=handle)
            raise filetransfer.SFTPError(filetransfer.FX_FAILURE, handle)
        return handle

    @_clean
    def removeFile(self, filename):
        path = self.resolve(filename)
        if path.parent == self.root / "inbox" and self.shelf.unstage(path.name) is not None:
            return
        if path.parent not in (self.root / "outbox", self.root / "errors"):
            self.refuse(f"delete outside outbox/ and errors/: {self.tag(path.name)}")
        if path.parent == self.root / "errors":
            path.unlink()
        elif self.outbox.picked_up(self.name, path.name) is None:  # deleting confirms pickup
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file")

    @_clean
    def renameFile(self, oldpath, newpath):
        old, new = self.upload_path(oldpath, "rename"), self.upload_path(newpath, "rename")
        staged = self.shelf.take(old.name)
        if staged is None:
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "no such file")
        if new.suffix in STAGING_SUFFIXES:         # still staged: its first deadline holds
            self.shelf.settle(staged, new.name, self.expire)
            return None

        def settled(result):       # not stored (a full disk): staged again, to be retried
            again = isinstance(result, Failure) and result.check(NotStored)
            self.shelf.settle(staged, old.name if again else None, self.expire)
            return result
        return self.ingest(new, staged.data).addBoth(settled)

    def expire(self, name: str) -> None:
        """A staged upload was not renamed in time: discard it."""
        data = self.shelf.unstage(name)
        if data is not None:
            seconds = self.limits.staged_seconds
            what = f"staged upload {self.tag(name)} of {len(data)} bytes not renamed within " \
                   f"{seconds} s"
            log.warn("SFTP {account} {what}: discarded", account=self.name, what=what)
            self.audit("discarded", what)

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
                raise NotStored(filetransfer.FX_FAILURE, "not stored; send again")
            failure.trap(DecodeError, *REFUSALS)
            self.leave_error(path.name, str(failure.value))
            log.warn("upload {tag} from sftp:{account} refused: {error}", tag=self.tag(path.name),
                     account=self.name, error=str(failure.value))

        return result.addCallbacks(stored, refused)

    def makeDirectory(self, path, attrs_):
        self.refuse("making folders")

    def removeDirectory(self, path):
        self.refuse("removing folders")

    @_clean
    def openDirectory(self, path):
        folder = self.resolve(path)
        if not folder.is_dir():
            raise filetransfer.SFTPError(filetransfer.FX_NO_SUCH_FILE, "not a folder")
        if folder == self.root / "outbox":
            return Files(self._outbox_files)
        staged = self.shelf.staged if folder == self.root / "inbox" else {}
        return Listing(folder, {name: len(s.data) for name, s in staged.items()})

    @_clean
    def _outbox_files(self, after: str | None, limit: int) -> list:
        return self.outbox.files(self.name, after, limit)

    @_clean
    def getAttrs(self, path, followLinks):
        path = self.resolve(path)
        if path.parent == self.root / "inbox" and path.name in self.shelf.staged:
            return staged_attrs(len(self.shelf.staged[path.name].data))
        if path.parent == self.root / "outbox":
            return outbox_attrs(self._listed(path.name))
        return attrs(os.lstat(path))

    def setAttrs(self, path, attrs_):
        """Permissions and times are ignored; a size (truncate) is refused: only an open
        upload's own handle may shorten it."""
        if "size" in attrs_:
            self.refuse(f"size change of {self.tag(self.resolve(path).name)}",
                        "size cannot be changed but on an open upload")
        return None

    def readLink(self, path):
        self.refuse("reading links")

    def makeLink(self, linkPath, targetPath):
        self.refuse("making links")

    def realPath(self, path):
        return "/" + "/".join(self.resolve(path).parts[len(self.root.parts):])

    def extendedRequest(self, extendedName, extendedData):
        if extendedName == ssh.LIMITS_EXTENSION:
            return ssh.limits_reply(self.limits.handles)
        raise NotImplementedError

    def logout(self):
        pass


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
