"""What SFTP clients read: folder listings and downloads, within the SFTP memory limits.

A listing holds no open folder and no list of names between requests: each
READDIR reads the folder again (``os.scandir``; for outbox/, the store) for the
next entries after the last name sent, in name order, so an open folder handle
costs the same for ten entries as for ten thousand. A download is served from
one plain copy per file, shared by every handle the account has open on it
(``Shelf.reads``); that copy
counts against ``limits.sftp_bytes_per_account`` and ``limits.sftp_bytes_total``
like an upload, so an open that would pass them is refused (``E-DOWNLOAD-LIMIT``),
and the copy is dropped when its last handle closes. A READ answers at most
``MAX_READ`` bytes.
"""

import heapq
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from twisted.conch.interfaces import ISFTPFile
from zope.interface import implementer

from gateway.transports.uploads import Refused

MAX_READ = 64 * 1024        # bytes in one READ answer (and the writes we ask for)
BATCH = 250                 # entries read per READDIR: what conch's server asks for at once


@dataclass(eq=False)
class Held:
    data: bytes
    users: int = 0


def download(shelf, key: tuple, size: int, load, pulled=None) -> "Download":
    """A handle on the file ``key`` of ``size`` plain bytes, made by ``load()`` unless a
    handle of the account has it open already; ``pulled`` is called by the session the
    first time it opens the file. Return the reason instead if holding it would pass the
    SFTP memory limits."""
    held = shelf.reads.get(key)
    if held is None:
        full = shelf.room_for(size)
        if full:
            return f"E-DOWNLOAD-LIMIT: {full}"
        held = shelf.reads[key] = Held(load())
        shelf.grow(len(held.data))
    held.users += 1
    return Download(shelf, key, held, pulled)


@implementer(ISFTPFile)
class Download:
    """A file read from outbox/ (opened from the store) or errors/."""

    def __init__(self, shelf, key: tuple, held: Held, pulled=None):
        self.shelf, self.key, self.held, self.pulled = shelf, key, held, pulled

    def readChunk(self, offset, length):
        data = self.held.data
        if offset >= len(data):
            raise EOFError()
        return data[offset:offset + min(length, MAX_READ)]

    def writeChunk(self, offset, data):
        raise Refused("read-only")

    def getAttrs(self):
        return {"size": len(self.held.data), "permissions": 0o100400}

    def setAttrs(self, attrs):
        if "size" in attrs:
            raise Refused("read-only: its size cannot be changed")
        return None

    def close(self):
        """Let go of the plain copy; the last handle on it drops it from memory."""
        held, self.held = self.held, Held(b"")
        held.users -= 1
        if held.users == 0 and self.shelf.reads.get(self.key) is held:
            del self.shelf.reads[self.key]
            self.shelf.grow(-len(held.data))
        return None


class Listing:
    """A folder's entries in name order, read a batch at a time; in inbox/, the staged
    uploads (held in memory, ``staged`` maps their names to sizes) too."""

    def __init__(self, path: Path, staged: dict[str, int]):
        self.path, self.staged = path, dict(staged)
        self.after: str | None = None        # the last name handed out
        self.batch: list[str] = []           # the next names, last first

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if not self.batch:
                self.batch = sorted(heapq.nsmallest(BATCH, self._names_after()), reverse=True)
                if not self.batch:
                    raise StopIteration
            name = self.after = self.batch.pop()
            entry = self._entry(name)
            if entry is not None:
                return entry

    def _names_after(self) -> set[str]:
        with os.scandir(self.path) as entries:
            names = {entry.name for entry in entries} | set(self.staged)
        return {name for name in names if self.after is None or name > self.after}

    def _entry(self, name: str):
        if name in self.staged:
            return name, name, staged_attrs(self.staged[name])
        path = self.path / name
        try:
            info = attrs(os.lstat(path))
        except FileNotFoundError:
            return None                       # gone since the folder was read
        return name, name, info

    def close(self):
        pass


class Files:
    """The files the store lists in an account's outbox/, in name order, a batch at a
    time: ``fetch(after, limit)`` gives (name, attributes) after the name ``after``."""

    def __init__(self, fetch):
        self.fetch = fetch
        self.after: str | None = None
        self.batch: list = []                # the next entries, last first

    def __iter__(self):
        return self

    def __next__(self):
        if not self.batch:
            self.batch = list(reversed(self.fetch(self.after, BATCH)))
            if not self.batch:
                raise StopIteration
        name, info = self.batch.pop()
        self.after = name
        return name, name, info

    def close(self):
        pass


def staged_attrs(size: int) -> dict:
    return {"size": size, "permissions": stat.S_IFREG | 0o600}


def attrs(info: os.stat_result) -> dict:
    return {"size": info.st_size, "uid": 0, "gid": 0, "permissions": stat.S_IMODE(info.st_mode)
            | stat.S_IFMT(info.st_mode), "atime": int(info.st_atime), "mtime": int(info.st_mtime)}
