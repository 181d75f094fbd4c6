"""Sealed payload parts inside the database (table ``payloads``: BLOB on SQLite, bytea on PostgreSQL).

A part is a message's raw input (``raw``) or its converted output (``out``),
sealed with AES-256-GCM to the message id it belongs to (``gateway.keys``: key
id and message id in the authenticated header) and stored under that (message
id, which) in the caller's transaction, so a part is committed with its rows
or not at all. The raw input of an interchange that holds several messages is
one part, under the first message's id (its ``raw_owner``). Opening a part
checks its tag: a part that was altered, truncated, moved to another message or
is missing raises PayloadCorrupt, and is never delivered.

On SQLite, parts above STREAM_ABOVE bytes are sealed in pieces into a blob of
their final size (``zeroblob`` + incremental blob I/O), so a large message is
not held sealed in full, nor copied once more by the binding, next to its plain
bytes; PostgreSQL takes a part as one bytea value (plain and sealed bytes are
both in memory for a moment: 32 MB for a 16 MB message). Reading takes the
sealed value once and opens it. Walks over every part go a page at a time.
"""

from typing import Iterator

from gateway import keys
from gateway.keys import Keyring, SealBroken
from gateway.spool.db import Database

STREAM_ABOVE = 256 * 1024
HEAD = 5 + 255 + 8          # the longest header before the nonce
PAGE = 500


class PayloadCorrupt(Exception):
    """A payload is missing, truncated, altered or another message's."""


def put(db: Database, ring: Keyring, parts: list[tuple[int, str, bytes]],
        replace: bool = False) -> None:
    """Seal each (message id, ``raw``|``out``, plain bytes) to its message id and store it;
    call inside the caller's write transaction. ``replace`` overwrites a part stored before
    (in place: re-sealing keeps its row)."""
    upsert = " ON CONFLICT (message_id, which) DO UPDATE SET sealed = excluded.sealed" \
        if replace else ""
    streamed = STREAMED.get(db.backend)
    large = [part for part in parts if streamed and len(part[2]) > STREAM_ABOVE]
    db.executemany(f"INSERT INTO payloads (message_id, which, sealed) VALUES (?, ?, ?){upsert}",
                   [(message_id, which, ring.seal(plain, message_id))
                    for message_id, which, plain in parts
                    if not (streamed and len(plain) > STREAM_ABOVE)])
    for message_id, which, plain in large:
        streamed(db, ring, message_id, which, plain, upsert)


def _put_streamed(db, ring: Keyring, message_id: int, which: str, plain: bytes,
                  upsert: str) -> None:
    """SQLite: a blob of the sealed size, then the sealed pieces written into it."""
    db.execute(f"INSERT INTO payloads (message_id, which, sealed) VALUES (?, ?, zeroblob(?))"
               f"{upsert}", (message_id, which, ring.sealed_size(len(plain))))
    with db.raw.blobopen("payloads", "sealed", _rowid(db, message_id, which)) as blob:
        for piece in ring.seal_chunks(plain, message_id):
            blob.write(piece)


def _read_sqlite(db, message_id: int, which: str) -> bytes | None:
    row = _rowid(db, message_id, which)
    if row is None:
        return None
    with db.raw.blobopen("payloads", "sealed", row, readonly=True) as blob:
        return blob.read()


def _read_value(db, message_id: int, which: str) -> bytes | None:
    return db.value("SELECT sealed FROM payloads WHERE message_id = ? AND which = ?",
                    (message_id, which))


STREAMED = {"sqlite": _put_streamed}
READ = {"sqlite": _read_sqlite, "postgresql": _read_value}


def get(db: Database, ring: Keyring, message_id: int, which: str) -> bytes:
    """The plain bytes of a part; raise PayloadCorrupt when it is missing or does not
    open as ``message_id``'s."""
    try:
        return ring.open(sealed(db, message_id, which), message_id)
    except SealBroken as exc:
        raise PayloadCorrupt(f"the {which} payload of message {message_id}: {exc}") from None


def sealed(db: Database, message_id: int, which: str) -> bytes:
    """The sealed bytes of a part as stored; raise PayloadCorrupt when there is none."""
    found = READ[db.backend](db, message_id, which)
    if found is None:
        raise PayloadCorrupt(f"the {which} payload of message {message_id} is missing")
    return bytes(found)


def _rowid(db, message_id: int, which: str) -> int | None:
    return db.value("SELECT rowid FROM payloads WHERE message_id = ? AND which = ?",
                    (message_id, which))


def has(db: Database, message_id: int, which: str) -> bool:
    return db.one("SELECT 1 FROM payloads WHERE message_id = ? AND which = ?",
                  (message_id, which)) is not None


def parts(db: Database, after: tuple[int, str] = (0, "")) -> Iterator[tuple[int, str, str | None]]:
    """(message id, which, key id from its header or None) of every part after ``after``,
    in order, a page at a time; the header is read, not the whole part."""
    while True:
        rows = db.execute("SELECT message_id, which, substr(sealed, 1, ?) FROM payloads WHERE "
                          "(message_id, which) > (?, ?) ORDER BY message_id, which LIMIT ?",
                          (HEAD, *after, PAGE)).fetchall()
        for message_id, which, head in rows:
            yield message_id, which, _key_id(bytes(head))
        if len(rows) < PAGE:
            return
        after = (rows[-1][0], rows[-1][1])


def _key_id(head: bytes) -> str | None:
    """The key id in a part's header (None when it has no header)."""
    try:
        return keys.header(head + bytes(12 + keys.TAG))[0]
    except SealBroken:
        return None


def census(db: Database) -> dict[str, int]:
    """How many parts each key id seals, from the parts' own headers."""
    counts: dict[str, int] = {}
    for _, _, found in parts(db):
        found = found or "(unreadable)"
        counts[found] = counts.get(found, 0) + 1
    return counts


def problems(db: Database, ring: Keyring) -> Iterator[tuple[int, str, str]]:
    """(message id, ``raw``|``out``, what is wrong) for every part that does not open and
    every raw input that is missing; the text names no patient data."""
    for message_id, which, _ in parts(db):
        try:
            get(db, ring, message_id, which)
        except PayloadCorrupt as exc:
            yield message_id, which, str(exc)
    for (owner,) in db.execute(
            "SELECT DISTINCT raw_owner FROM messages m WHERE NOT EXISTS (SELECT 1 FROM payloads "
            "p WHERE p.message_id = m.raw_owner AND p.which = 'raw') ORDER BY raw_owner"):
        yield owner, "raw", f"the raw payload of message {owner} is missing"


def count(db: Database) -> int:
    return db.value("SELECT count(*) FROM payloads")
