"""SFTP uploads held in memory until the store takes them, within bounds.

An ``Upload`` is a file written into ``inbox/``: its bytes stay in memory, and
it is handed to the account's intake when the client closes it (a ``.part`` or
``.tmp`` file is staged instead, and taken when renamed to its final name). A
write must follow on from the bytes already written (no gaps) and keep the file
within ``limits.max_upload_bytes``. ``Holdings`` bounds what all uploads hold
together: per account at most ``limits.sftp_uploads_per_account`` open or staged
files and ``limits.sftp_bytes_per_account`` bytes, for all accounts
``limits.sftp_bytes_total`` (decrypted downloads and requests in transit count
against the same bytes: see ``gateway.transports.downloads`` and ``ssh.Server``).
A staged file not renamed within ``limits.sftp_staged_seconds`` of its first close
is discarded (renaming it to another staged name keeps that deadline); one
replaced by another of its name is logged and audited (``Shelf.replaced``); one
whose rename to its final name cannot be stored is staged again under its old
name, so the rename can be retried. A size set on an open upload (truncate) shortens it; a
larger size would leave a gap and is refused. A refused upload keeps nothing and
leaves ``errors/<name>.err`` saying why; every upload not taken is audited. Log
lines and audit records name a client's file by ``name_tag`` only, never by name.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

from twisted.conch.interfaces import ISFTPFile
from twisted.conch.ssh import filetransfer
from twisted.logger import Logger
from zope.interface import implementer

STAGING_SUFFIXES = (".part", ".tmp")
log = Logger(namespace="gatewayd.sftp")


class Refused(filetransfer.SFTPError):
    def __init__(self, message: str):
        super().__init__(filetransfer.FX_PERMISSION_DENIED, message)


@dataclass(frozen=True)
class Limits:
    max_bytes: int                   # one upload
    files: int                       # open and staged, per account
    account_bytes: int               # held in memory, per account
    total_bytes: int                 # held in memory, all accounts
    staged_seconds: float            # a staged file not renamed by then is discarded
    handles: int = 64                # files and folders open, per SFTP session
    channels: int = 4                # SSH session channels, per connection
    error_files: int = 1000          # .err files kept, per account

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.limits_max_upload_bytes, settings.limits_sftp_uploads_per_account,
                   settings.limits_sftp_bytes_per_account, settings.limits_sftp_bytes_total,
                   settings.limits_sftp_staged_seconds, settings.limits_sftp_handles_per_session,
                   settings.limits_sftp_channels_per_connection, settings.limits_sftp_error_files)


class Holdings:
    """Bytes held by every account's uploads together, and the clock staged files
    expire by."""

    def __init__(self, limits: Limits, clock):
        self.limits, self.clock, self.held = limits, clock, 0


@dataclass(eq=False)
class Staged:
    data: bytes
    deadline: float                  # the clock's time it is discarded at
    expiry: object = None            # the clock's call that discards it


@dataclass(eq=False)
class Shelf:
    """One account's SFTP files in memory: open uploads, staged ones (by name), staged
    ones being stored after their rename, decrypted downloads, and their bytes."""

    holdings: Holdings
    open: set = field(default_factory=set)
    staged: dict = field(default_factory=dict)
    storing: int = 0                 # renamed staged uploads the store has not answered yet
    reads: dict = field(default_factory=dict)      # see gateway.transports.downloads
    held: int = 0
    replaced: object = None          # told (name, bytes) when a staged file is replaced

    def room_for(self, growth: int) -> str | None:
        """Why ``growth`` more bytes may not be held, or None."""
        limits = self.holdings.limits
        if self.held + growth > limits.account_bytes:
            return (f"files of this account held in memory pass {limits.account_bytes} bytes; "
                    "finish or remove staged files")
        if self.holdings.held + growth > limits.total_bytes:
            return (f"the gateway holds more than {limits.total_bytes} bytes of SFTP files; "
                    "try again later")
        return None

    def grow(self, count: int) -> None:
        self.held += count
        self.holdings.held += count

    def uploads(self) -> int:
        """Uploads open, staged or being stored after a rename."""
        return len(self.open) + len(self.staged) + self.storing

    def stage(self, name: str, data: bytes, expire, deadline: float | None = None) -> None:
        """Keep ``data`` as the staged file ``name`` until ``deadline`` (by default
        limits.sftp_staged_seconds from now), then call ``expire(name)``. A staged file of
        that name is replaced, and ``replaced`` told."""
        old = self.unstage(name)
        if old is not None and self.replaced is not None:
            self.replaced(name, len(old))
        self.grow(len(data))
        clock = self.holdings.clock
        if deadline is None:
            deadline = clock.seconds() + self.holdings.limits.staged_seconds
        self.staged[name] = Staged(data, deadline, clock.callLater(
            max(0.0, deadline - clock.seconds()), expire, name))

    def unstage(self, name: str) -> bytes | None:
        """Take a staged file off the shelf (its bytes no longer count); None if absent."""
        staged = self.take(name)
        if staged is None:
            return None
        self.settle(staged)
        return staged.data

    def take(self, name: str) -> Staged | None:
        """Take a staged file off the shelf to be stored: its bytes still count until
        ``settle``; None if absent."""
        staged = self.staged.pop(name, None)
        if staged is None:
            return None
        if staged.expiry.active():
            staged.expiry.cancel()
        self.storing += 1
        return staged

    def settle(self, staged: Staged, back: str | None = None, expire=None) -> None:
        """The store answered for ``staged`` (from ``take``): its bytes no longer count —
        or, with ``back``, it is staged again under that name with its first deadline."""
        self.storing -= 1
        self.grow(-len(staged.data))
        if back is not None:
            self.stage(back, staged.data, expire, staged.deadline)


@implementer(ISFTPFile)
class Upload:
    """A file written into inbox/ by ``account`` (an sftp.Account)."""

    def __init__(self, account, path: Path):
        self.account, self.path, self.data = account, path, bytearray()
        self.done = False          # closed, refused or abandoned: nothing more is taken
        self.counted = 0           # bytes this upload counts against the limits
        account.shelf.open.add(self)

    def writeChunk(self, offset, data):
        if self.done:
            raise Refused("upload refused")
        end = offset + len(data)
        limits = self.account.shelf.holdings.limits
        if end > limits.max_bytes:
            self._refuse(f"E-TOO-LARGE: upload larger than {limits.max_bytes} bytes")
        if offset > len(self.data):
            self._refuse(f"E-UPLOAD-GAP: write at byte {offset} after {len(self.data)} bytes; "
                         "writes must follow on from the bytes written")
        growth = max(0, end - len(self.data))
        full = self.account.shelf.room_for(growth)
        if full:
            self._refuse(f"E-UPLOAD-LIMIT: {full}")
        self.data[offset:end] = data
        self.account.shelf.grow(growth)
        self.counted += growth

    def readChunk(self, offset, length):
        raise Refused("write-only")

    def getAttrs(self):
        return {"size": len(self.data), "permissions": 0o100600}

    def setAttrs(self, attrs):
        """A size (truncate) shortens the upload; a larger one would leave a gap and is
        refused like a write past the end. Permissions and times are ignored."""
        size = attrs.get("size")
        if size is None:
            return None
        if self.done:
            raise Refused("upload refused")
        if size > len(self.data):
            self._refuse(f"E-UPLOAD-GAP: size {size} set after {len(self.data)} bytes; a file "
                         "may not be grown but by writing")
        shrink = len(self.data) - size
        del self.data[size:]
        self.account.shelf.grow(-shrink)
        self.counted -= shrink
        return None

    def close(self):
        """Stage a .part/.tmp file, or hand the upload to the intake; it counts against
        the limits until the store has it."""
        if self.done:
            return None
        data, self.data, self.done = bytes(self.data), bytearray(), True
        if self.path.suffix in STAGING_SUFFIXES:
            self._release()
            self.account.shelf.stage(self.path.name, data, self.account.expire)
            return None
        return self.account.ingest(self.path, data).addBoth(self._stored)

    def _stored(self, result):
        self._release()
        return result

    def abandon(self) -> None:
        """The session ended before the client closed the file: the upload may be cut
        off, so nothing of it is taken."""
        if not self.done:
            what = f"upload {self.account.tag(self.path.name)} cut off after {len(self.data)} " \
                   "bytes (session ended before close)"
            log.warn("SFTP {account} {what}: discarded", account=self.account.name, what=what)
            self.account.audit("discarded", what)
            self._release()

    def _refuse(self, why: str):
        """Keep nothing, say why in errors/<name>.err, and fail the client's write."""
        self._release()
        tag = self.account.tag(self.path.name)
        self.account.audit("refused", f"{why} ({tag})")
        self.account.leave_error(self.path.name, why)
        self.account.refuse(f"upload {tag}: {why}", why)

    def _release(self) -> None:
        shelf = self.account.shelf
        shelf.open.discard(self)
        shelf.grow(-self.counted)
        self.done, self.data, self.counted = True, bytearray(), 0


_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,8})$")


def name_tag(key: bytes, name: str) -> str:
    """What stands for a client's file name in log lines and audit records: ``#`` and the
    first 8 hex digits of its HMAC-SHA256 under ``key`` (the audit key), then its extension
    if that is short and plain — ``#1f3a9c0b.hl7``. The name itself (often a patient's
    name or BSN) never appears; the same name always gets the same tag, and the .err file
    the client sees carries it too."""
    digest = hmac.new(key, b"sftp-name:" + name.encode("utf-8", "surrogateescape"),
                      hashlib.sha256).hexdigest()[:8]
    extension = _EXTENSION.search(name)
    return f"#{digest}" + (f".{extension.group(1)}" if extension else "")
