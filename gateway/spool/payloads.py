"""Sealed payload parts inside the database (table ``payloads``, SQLite).

A part is a message's raw input (``raw``) or its converted output (``out``),
sealed with AES-256-GCM to the message id it belongs to (``gateway.keys``: key
id and message id in the authenticated header) and stored under that (message
id, which) in the caller's transaction, so a part is committed with its rows
or not at all. The raw input of an interchange that holds several messages is
one part, under the first message's id (its ``raw_owner``). Opening a part
checks its tag: a part that was altered, truncated, moved to another message or
is missing raises PayloadCorrupt, and is never delivered.

Parts above STREAM_ABOVE bytes are sealed in pieces into a blob of their final
size (``zeroblob`` + incremental blob I/O), so a large message is not held
sealed in full, nor copied once more by the SQLite binding, next to its plain
bytes. Reading takes the sealed blob once and opens it.
"""

import sqlite3
from typing import Iterator

from gateway import keys
from gateway.keys import Keyring, SealBroken

STREAM_ABOVE = 256 * 1024
HEAD = 5 + 255 + 8          # the longest header before the nonce


class PayloadCorrupt(Exception):
    """A payload is missing, truncated, altered or another message's."""


def put(db: sqlite3.Connection, ring: Keyring, parts: list[tuple[int, str, bytes]],
        replace: bool = False) -> None:
    """Seal each (message id, ``raw``|``out``, plain bytes) to its message id and store it;
    call inside the caller's write transaction. ``replace`` overwrites a part stored before
    (in place: re-sealing keeps its row)."""
    upsert = " ON CONFLICT (message_id, which) DO UPDATE SET sealed = excluded.sealed" \
        if replace else ""
    large = [(message_id, which, plain) for message_id, which, plain in parts
             if len(plain) > STREAM_ABOVE]
    db.executemany(f"INSERT INTO payloads (message_id, which, sealed) VALUES (?, ?, ?){upsert}",
                   [(message_id, which, ring.seal(plain, message_id))
                    for message_id, which, plain in parts if len(plain) <= STREAM_ABOVE])
    for message_id, which, plain in large:
        db.execute(f"INSERT INTO payloads (message_id, which, sealed) VALUES (?, ?, zeroblob(?))"
                   f"{upsert}", (message_id, which, ring.sealed_size(len(plain))))
        with db.blobopen("payloads", "sealed", _row(db, message_id, which)) as blob:
            for piece in ring.seal_chunks(plain, message_id):
                blob.write(piece)


def get(db: sqlite3.Connection, ring: Keyring, message_id: int, which: str) -> bytes:
    """The plain bytes of a part; raise PayloadCorrupt when it is missing or does not
    open as ``message_id``'s."""
    try:
        return ring.open(sealed(db, message_id, which), message_id)
    except SealBroken as exc:
        raise PayloadCorrupt(f"the {which} payload of message {message_id}: {exc}") from None


def sealed(db: sqlite3.Connection, message_id: int, which: str) -> bytes:
    """The sealed bytes of a part as stored; raise PayloadCorrupt when there is none."""
    row = _row(db, message_id, which)
    if row is None:
        raise PayloadCorrupt(f"the {which} payload of message {message_id} is missing")
    with db.blobopen("payloads", "sealed", row, readonly=True) as blob:
        return blob.read()


def _row(db: sqlite3.Connection, message_id: int, which: str) -> int | None:
    found = db.execute("SELECT rowid FROM payloads WHERE message_id = ? AND which = ?",
                       (message_id, which)).fetchone()
    return found and found[0]



def has(db: sqlite3.Connection, message_id: int, which: str) -> bool:
    return _row(db, message_id, which) is not None


def key_id(db: sqlite3.Connection, row: int) -> str | None:
    """The key id in the header of the part at ``row`` (None when it has no header),
    read without loading the whole blob."""
    with db.blobopen("payloads", "sealed", row, readonly=True) as blob:
        head = blob.read(HEAD)
    try:
        return keys.header(head + bytes(12 + keys.TAG))[0]
    except SealBroken:
        return None


def census(db: sqlite3.Connection) -> dict[str, int]:
    """How many parts each key id seals, from the parts' own headers."""
    counts: dict[str, int] = {}
    for (row,) in db.execute("SELECT rowid FROM payloads"):
        found = key_id(db, row) or "(unreadable)"
        counts[found] = counts.get(found, 0) + 1
    return counts


def problems(db: sqlite3.Connection, ring: Keyring) -> Iterator[tuple[int, str, str]]:
    """(message id, ``raw``|``out``, what is wrong) for every part that does not open and
    every raw input that is missing; the text names no patient data."""
    for message_id, which in db.execute("SELECT message_id, which FROM payloads "
                                        "ORDER BY message_id, which"):
        try:
            get(db, ring, message_id, which)
        except PayloadCorrupt as exc:
            yield message_id, which, str(exc)
    for (owner,) in db.execute(
            "SELECT DISTINCT raw_owner FROM messages m WHERE NOT EXISTS (SELECT 1 FROM payloads "
            "p WHERE p.message_id = m.raw_owner AND p.which = 'raw') ORDER BY raw_owner"):
        yield owner, "raw", f"the raw payload of message {owner} is missing"


def count(db: sqlite3.Connection) -> int:
    return db.execute("SELECT count(*) FROM payloads").fetchone()[0]
