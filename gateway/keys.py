"""Keys for data at rest: AES-256-GCM payload keys and the audit key.

The key file (JSON, 0600, outside the spool) holds the payload keys by id, the
id of the current one (used for new files), and one audit key. The audit key
makes the patient hash (HMAC-SHA256 of the BSN) and chains the audit log; it is
never rotated, or old audit records could no longer be searched or verified.

A sealed payload is ``GWE1 | key id length | key id | message id (8 bytes) |
nonce (12) | ciphertext and tag``. Everything before the nonce — the key id and
the message id — is authenticated as associated data, so a payload moved to
another message, or given another key id, fails its tag like an edited one.
"""

import base64
import functools
import hmac
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.document import normalize_bsn
from gateway.errors import ConfigError

MAGIC = b"GWE1"
TAG = 16
CHUNK = 1 << 20
FORMAT = "gatewayd-keys 1"
CHECK = b"gatewayd key check"


class KeyProblem(ConfigError):
    """The key file is missing, unreadable, or does not fit the data it must open."""

    code = "E-KEYS"


class SealBroken(Exception):
    """A sealed payload is truncated, altered, or not the message it should be."""


@dataclass(frozen=True)
class Keyring:
    keys: dict            # key id -> 32 bytes
    current: str
    audit_key: bytes

    def seal(self, data: bytes, message_id: int, key_id: str | None = None) -> bytes:
        """``data`` encrypted under the current key (or ``key_id``), bound to ``message_id``."""
        key_id = key_id or self.current
        header = _header(key_id, message_id)
        nonce = os.urandom(12)
        return header + nonce + _aead(self.keys[key_id]).encrypt(nonce, data, header)

    def sealed_size(self, size: int) -> int:
        """How many bytes ``seal`` makes of ``size`` plain bytes under the current key."""
        return 5 + len(self.current) + 8 + 12 + size + TAG

    def seal_chunks(self, data: bytes, message_id: int) -> Iterator[bytes]:
        """The same sealed bytes as ``seal`` (current key), in pieces of about a MB, so that
        a large payload is never held sealed in full next to its plain copy."""
        header, nonce = _header(self.current, message_id), os.urandom(12)
        sealing = Cipher(algorithms.AES(self.keys[self.current]), modes.GCM(nonce)).encryptor()
        sealing.authenticate_additional_data(header)
        yield header + nonce
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            yield sealing.update(view[start:start + CHUNK])
        yield sealing.finalize() + sealing.tag

    def open(self, blob: bytes, message_id: int) -> bytes:
        """The plaintext of ``blob``; raise SealBroken unless it is intact and ``message_id``'s."""
        key_id, found_id, start = header(blob)
        if found_id != message_id:
            raise SealBroken(f"sealed for message {found_id}, not {message_id}")
        if key_id not in self.keys:
            raise SealBroken(f"sealed with key {key_id!r}, which the key file does not hold")
        try:
            return _aead(self.keys[key_id]).decrypt(blob[start:start + 12], blob[start + 12:],
                                                    blob[:start])
        except InvalidTag:
            raise SealBroken("authentication tag does not match (altered or wrong key)") from None

    def patient(self, bsn: str) -> str:
        """The keyed hash that stands for a patient in the audit log (empty without a BSN)."""
        if not bsn:
            return ""
        value = normalize_bsn(bsn.strip()).encode()
        return hmac.digest(self.audit_key, b"bsn:" + value, "sha256").hex()[:32]

    def chain(self, previous: str, record: bytes) -> str:
        """The audit hash of ``record`` following the record whose hash is ``previous``."""
        return hmac.digest(self.audit_key, previous.encode() + b"\n" + record, "sha256").hex()

    def check_value(self, key_id: str) -> bytes:
        """A value sealed under ``key_id`` that the store keeps, to tell a wrong key at start."""
        return self.seal(CHECK, 0, key_id)

    def fits(self, key_id: str, check: bytes) -> bool:
        try:
            return self.open(check, 0) == CHECK and header(check)[0] == key_id
        except SealBroken:
            return False


@functools.lru_cache(maxsize=64)
def _aead(key: bytes) -> AESGCM:
    """The AES-GCM cipher of ``key``, made once (making it costs more than sealing 1 KB)."""
    return AESGCM(key)


def _header(key_id: str, message_id: int) -> bytes:
    return MAGIC + bytes([len(key_id)]) + key_id.encode() + struct.pack(">Q", message_id)


def header(blob: bytes) -> tuple[str, int, int]:
    """(key id, message id, offset of the nonce) of a sealed payload."""
    if blob[:4] != MAGIC or len(blob) < 5:
        raise SealBroken("not a sealed payload")
    start = 5 + blob[4]
    if len(blob) < start + 8 + 12 + TAG:
        raise SealBroken("sealed payload is truncated")
    return blob[5:start].decode("ascii", "replace"), struct.unpack(">Q", blob[start:start + 8])[0], \
        start + 8


def file_header(path: Path, offset: int = 0) -> tuple[str, int] | None:
    """(key id, message id) of the sealed part at ``offset`` in ``path``; None when there
    is no sealed part there."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            head = handle.read(5 + 255 + 8)
        return header(head + bytes(12 + TAG))[:2]
    except (OSError, SealBroken):
        return None


def generate() -> Keyring:
    """A fresh keyring with one payload key (for ``keys init`` and for tests)."""
    return Keyring({"k1": AESGCM.generate_key(256)}, "k1", os.urandom(32))


def load(path: Path) -> Keyring:
    """Read the key file; raise KeyProblem with one line saying what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="ascii"))
        if data.get("format") != FORMAT:
            raise ValueError("not a gatewayd key file")
        ring = Keyring({k: _bytes(v) for k, v in data["payload_keys"].items()}, data["current"],
                       _bytes(data["audit_key"]))
    except FileNotFoundError:
        raise KeyProblem(f"key file {path} is missing (gatewayctl keys init makes one)") from None
    except OSError as exc:
        raise KeyProblem(f"key file {path} cannot be read: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyProblem(f"key file {path} is not valid: {exc}") from None
    if ring.current not in ring.keys:
        raise KeyProblem(f"key file {path}: current key {ring.current!r} is not in it")
    return ring


def _bytes(text: str) -> bytes:
    value = base64.b64decode(text, validate=True)
    if len(value) != 32:
        raise ValueError("a key is not 32 bytes")
    return value


def save(ring: Keyring, path: Path) -> None:
    """Write the key file durably with 0600 permissions (temporary name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, "current": ring.current,
                       "payload_keys": {k: base64.b64encode(v).decode() for k, v in ring.keys.items()},
                       "audit_key": base64.b64encode(ring.audit_key).decode()}, indent=2)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def without(ring: Keyring, key_id: str) -> Keyring:
    """``ring`` less a payload key that is not the current one."""
    return Keyring({k: v for k, v in ring.keys.items() if k != key_id}, ring.current,
                   ring.audit_key)


def rotated(ring: Keyring) -> Keyring:
    """``ring`` with a new payload key that becomes current (old ones stay, to open old files)."""
    number = 1 + max((int(k[1:]) for k in ring.keys if k[1:].isdigit()), default=0)
    new_id = f"k{number}"
    return Keyring({**ring.keys, new_id: AESGCM.generate_key(256)}, new_id, ring.audit_key)
