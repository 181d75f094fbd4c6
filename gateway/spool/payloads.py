"""Payload files: written durably (temporary name, fsync, rename, fsync folder).

One intake writes one file holding all its parts (the raw input and each
converted output, back to back), so a message costs one file sync and one folder
sync however many parts it has. A part is addressed as (file name, offset,
length, SHA-256); the SHA-256 is checked on every read, so a corrupted or
truncated file is detected rather than delivered. Files are named by a fresh
random id under ``<2 hex>/``; temporary files end in ``.tmp`` and any left by a
crash are removed by ``sweep``.
"""

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path


class PayloadCorrupt(Exception):
    """A payload is missing, truncated or altered (its SHA-256 no longer matches)."""


@dataclass(frozen=True)
class Part:
    name: str
    offset: int
    length: int
    sha256: str


def write(root: Path, parts: list[bytes]) -> list[Part]:
    """Store ``parts`` durably in one new file under ``root``; return where each is."""
    name = uuid.uuid4().hex
    folder = root / name[:2]
    temporary = folder / f"{name}.tmp"
    found, offset = [], 0
    with open(temporary, "wb") as handle:
        for data in parts:
            handle.write(data)
            found.append(Part(f"{name[:2]}/{name}", offset, len(data), hashlib.sha256(data).hexdigest()))
            offset += len(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, folder / name)
    _fsync_dir(folder)
    return found


def read(root: Path, part: Part) -> bytes:
    """The bytes of ``part``; raise PayloadCorrupt when they are gone or altered."""
    try:
        with open(root / part.name, "rb") as handle:
            handle.seek(part.offset)
            data = handle.read(part.length)
    except OSError as exc:
        raise PayloadCorrupt(f"payload {part.name} cannot be read: {exc.strerror}") from None
    if len(data) != part.length or hashlib.sha256(data).hexdigest() != part.sha256:
        raise PayloadCorrupt(f"payload {part.name} does not match its recorded SHA-256")
    return data


def remove(root: Path, name: str) -> None:
    (root / name).unlink(missing_ok=True)


def prepare(root: Path) -> None:
    """Create the 256 payload folders once (and make them durable), so that no write
    has to create a folder."""
    missing = [root / f"{i:02x}" for i in range(256) if not (root / f"{i:02x}").is_dir()]
    for folder in missing:
        folder.mkdir(parents=True, exist_ok=True)
    if missing:
        _fsync_dir(root)


def sweep(root: Path) -> int:
    """Remove temporary files a crash left behind; return how many."""
    removed = 0
    for path in root.glob("*/*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
