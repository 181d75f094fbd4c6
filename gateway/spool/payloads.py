"""Payload files: written durably (temporary name, fsync, rename, fsync folder).

A payload is named by a fresh random id and kept under ``payloads/<2 hex>/``.
Temporary files end in ``.tmp``; any left by a crash are removed by ``sweep``.
Every file stores its SHA-256 next to it in the database, so a corrupted or
truncated file is detected when read.
"""

import hashlib
import os
import uuid
from pathlib import Path


class PayloadCorrupt(Exception):
    """A payload file is missing, truncated or altered (its hash no longer matches)."""


def write(root: Path, data: bytes) -> tuple[str, str]:
    """Store ``data`` durably under ``root``; return (relative name, sha256 hex)."""
    name = uuid.uuid4().hex
    folder = root / name[:2]
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        _fsync_dir(root)
    temporary = folder / f"{name}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, folder / name)
    _fsync_dir(folder)
    return f"{name[:2]}/{name}", hashlib.sha256(data).hexdigest()


def read(root: Path, name: str, sha256: str) -> bytes:
    """The payload ``name``; raise PayloadCorrupt when it is gone or its hash differs."""
    try:
        data = (root / name).read_bytes()
    except OSError as exc:
        raise PayloadCorrupt(f"payload {name} cannot be read: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PayloadCorrupt(f"payload {name} does not match its recorded SHA-256")
    return data


def remove(root: Path, name: str) -> None:
    (root / name).unlink(missing_ok=True)


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
