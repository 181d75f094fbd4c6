"""Payload files: sealed, then written durably (temporary name, fsync, rename, fsync folder).

One intake writes one file holding all its parts (the raw input and each
converted output, back to back), so a message costs one file sync and one folder
sync however many parts it has. Each part is sealed on its own (AES-256-GCM, a
fresh nonce, bound to its message id; see ``gateway.keys``), so no byte of
patient data reaches the disk in plain text. A part is addressed as (file name,
offset, length, SHA-256 of the sealed bytes); reading checks the SHA-256 and the
tag, so a corrupted, truncated or altered file is detected rather than
delivered. Files are named by a fresh random id under ``<2 hex>/``; temporary
files end in ``.tmp`` and any left by a crash are removed by ``sweep``.
"""

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.keys import Keyring, SealBroken


class PayloadCorrupt(Exception):
    """A payload is missing, truncated, altered or another message's."""


@dataclass(frozen=True)
class Part:
    name: str
    offset: int
    length: int
    sha256: str


def write(root: Path, ring: Keyring, parts: list[tuple[int, bytes]]) -> list[Part]:
    """Seal each (message id, bytes) of ``parts`` and store them durably in one new file
    under ``root``; return where each is."""
    name = uuid.uuid4().hex
    folder = root / name[:2]
    temporary = folder / f"{name}.tmp"
    found, offset = [], 0
    with open(temporary, "wb") as handle:
        for message_id, plain in parts:
            data = ring.seal(plain, message_id)
            handle.write(data)
            found.append(Part(f"{name[:2]}/{name}", offset, len(data), hashlib.sha256(data).hexdigest()))
            offset += len(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, folder / name)
    _fsync_dir(folder)
    return found


def read(root: Path, ring: Keyring, part: Part, message_id: int) -> bytes:
    """The plain bytes of ``part``, sealed for ``message_id``; raise PayloadCorrupt when
    they are gone, altered or another message's."""
    try:
        with open(root / part.name, "rb") as handle:
            handle.seek(part.offset)
            data = handle.read(part.length)
    except OSError as exc:
        raise PayloadCorrupt(f"payload {part.name} cannot be read: {exc.strerror}") from None
    if len(data) != part.length or hashlib.sha256(data).hexdigest() != part.sha256:
        raise PayloadCorrupt(f"payload {part.name} does not match its recorded SHA-256")
    try:
        return ring.open(data, message_id)
    except SealBroken as exc:
        raise PayloadCorrupt(f"payload {part.name}: {exc}") from None


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


def sweep(root: Path, older_than: float = 3600) -> int:
    """Remove temporary files a crash left behind (older than ``older_than`` seconds, so a
    file another process is writing right now stays); return how many."""
    removed, limit = 0, time.time() - older_than
    for path in root.glob("*/*.tmp"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
