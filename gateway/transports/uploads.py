"""SFTP uploads held in memory until the store takes them, within bounds.

An ``Upload`` is a file written into ``inbox/``: its bytes stay in memory, and
it is handed to the account's intake when the client closes it (a ``.part`` or
``.tmp`` file is staged instead, and taken when renamed to its final name). A
write must follow on from the bytes already written (no gaps) and keep the file
within ``limits.max_upload_bytes``. ``Holdings`` bounds what all uploads hold
together: per account at most ``limits.sftp_uploads_per_account`` open or staged
files and ``limits.sftp_bytes_per_account`` bytes, for all accounts
``limits.sftp_bytes_total``; a staged file not renamed within
``limits.sftp_staged_seconds`` is discarded. A refused upload keeps nothing and
leaves ``errors/<name>.err`` saying why; every upload not taken is audited.
"""

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

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.limits_max_upload_bytes, settings.limits_sftp_uploads_per_account,
                   settings.limits_sftp_bytes_per_account, settings.limits_sftp_bytes_total,
                   settings.limits_sftp_staged_seconds)


class Holdings:
    """Bytes held by every account's uploads together, and the clock staged files
    expire by."""

    def __init__(self, limits: Limits, clock):
        self.limits, self.clock, self.held = limits, clock, 0


@dataclass(eq=False)
class Staged:
    data: bytes
    expiry: object                   # the clock's call that discards it


@dataclass(eq=False)
class Shelf:
    """One account's uploads: open ones and staged ones (by name), and their bytes."""

    holdings: Holdings
    open: set = field(default_factory=set)
    staged: dict = field(default_factory=dict)
    held: int = 0

    def room_for(self, growth: int) -> str | None:
        """Why ``growth`` more bytes may not be held, or None."""
        limits = self.holdings.limits
        if self.held + growth > limits.account_bytes:
            return (f"E-UPLOAD-LIMIT: uploads of this account hold more than "
                    f"{limits.account_bytes} bytes; finish or remove staged files")
        if self.holdings.held + growth > limits.total_bytes:
            return (f"E-UPLOAD-LIMIT: the gateway holds more than {limits.total_bytes} bytes of "
                    "uploads; try again later")
        return None

    def grow(self, count: int) -> None:
        self.held += count
        self.holdings.held += count

    def stage(self, name: str, data: bytes, expire) -> None:
        self.unstage(name)
        self.grow(len(data))
        self.staged[name] = Staged(data, self.holdings.clock.callLater(
            self.holdings.limits.staged_seconds, expire, name))

    def unstage(self, name: str) -> bytes | None:
        """Take a staged file off the shelf (its bytes no longer count); None if absent."""
        staged = self.staged.pop(name, None)
        if staged is None:
            return None
        if staged.expiry.active():
            staged.expiry.cancel()
        self.grow(-len(staged.data))
        return staged.data


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
            self._refuse(full)
        self.data[offset:end] = data
        self.account.shelf.grow(growth)
        self.counted += growth

    def readChunk(self, offset, length):
        raise Refused("write-only")

    def getAttrs(self):
        return {"size": len(self.data), "permissions": 0o100600}

    def setAttrs(self, attrs):
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
            log.warn("SFTP {account} upload {name} cut off after {size} bytes (session ended "
                     "before close): discarded", account=self.account.name,
                     name=shown(self.path.name), size=len(self.data))
            self.account.audit("discarded", f"upload cut off after {len(self.data)} bytes "
                                            "(session ended before close)")
            self._release()

    def _refuse(self, why: str):
        """Keep nothing, say why in errors/<name>.err, and fail the client's write."""
        self._release()
        self.account.audit("refused", why)
        (self.account.root / "errors" / f"{self.path.name}.err").write_text(f"{why}\n")
        self.account.refuse(f"{why}: {shown(self.path.name)}", why)

    def _release(self) -> None:
        shelf = self.account.shelf
        shelf.open.discard(self)
        shelf.grow(-self.counted)
        self.done, self.data, self.counted = True, bytearray(), 0


def shown(name: str) -> str:
    """A client's file name as it may appear in a log line: quoted, escaped, bounded."""
    return repr(name[:80])
