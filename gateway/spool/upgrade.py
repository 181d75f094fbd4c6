"""Upgrades of an older store, one version at a time (versions: ``gateway.spool.schema``).

1 -> 2: payload files into the database. A version 1 store kept each intake's
sealed parts back to back in one file under ``spool/payloads/``, named from the
message row by (file, offset, length, SHA-256). The upgrade copies every part,
still sealed and unchanged (same key, same message id), into the ``payloads``
table: a batch of messages per transaction, with the id of the last message done
(``upgrade_progress``) in the same transaction, so a process killed half-way
resumes where it stopped. Each part is opened before it is copied. One that no
longer opens (altered, truncated, its file gone) is copied as it is, or not at
all when there is nothing to copy, and named in the report: delivery
quarantines it, as before. When every message is done, every copied part is
opened again from the database; only then does one last transaction drop the
file columns and record version 2. The payload folder is removed after that
commit (``remove_files``, also at every start, finishes a removal cut short).
Version 1 stores were SQLite files only; a PostgreSQL store starts at version 2.
"""

import shutil
from pathlib import Path
from typing import Callable

from gateway.keys import Keyring, SealBroken
from gateway.spool import payloads, schema
from gateway.spool.db import Database

FILE_COLUMNS = ("raw_name", "raw_offset", "raw_length", "raw_sha256", "out_name", "out_offset",
                "out_length", "out_sha256")


def run(db: Database, ring: Keyring, root: Path, progress: Callable[[str], None],
        batch_rows: int = 500, batch_bytes: int = 32 << 20) -> None:
    """Bring the store behind ``db`` (folder ``root``) to the latest version, telling
    ``progress`` how it goes; raise StoreProblem when a step cannot be finished."""
    if schema.version(db) == 1:
        progress(f"upgrading the store in {root} from version 1 to 2: "
                 "payload files into the database")
        _files_to_database(db, ring, root, progress, batch_rows, batch_bytes)


def remove_files(root: Path) -> None:
    """Remove the payload folder of a version 1 store once the upgrade has committed."""
    folder = root / "payloads"
    if folder.exists():
        shutil.rmtree(folder)


def _files_to_database(db, ring, root: Path, progress, batch_rows: int, batch_bytes: int) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS upgrade_progress "
               "(version INTEGER PRIMARY KEY, done INTEGER NOT NULL)")
    db.execute("INSERT INTO upgrade_progress VALUES (2, 0) ON CONFLICT DO NOTHING")
    (total,) = db.execute("SELECT count(*) FROM messages").fetchone()
    (done,) = db.execute("SELECT count(*) FROM messages WHERE id <= (SELECT done FROM "
                         "upgrade_progress WHERE version = 2)").fetchone()
    more = True
    while more:
        with db.transaction():
            rows, parts, more = _move_batch(db, ring, root / "payloads", batch_rows, batch_bytes)
        done += rows
        progress(f"moved the payloads of {done} of {total} messages ({parts} parts)")
    _finish(db, ring, root / "payloads", progress)


def _move_batch(db, ring, folder: Path, batch_rows: int,
                batch_bytes: int) -> tuple[int, int, bool]:
    """Copy the parts of the next messages (inside the caller's transaction); return
    (messages done, parts copied, whether messages remain)."""
    (after,) = db.execute("SELECT done FROM upgrade_progress WHERE version = 2").fetchone()
    rows = db.execute("SELECT id, raw_owner, raw_name, raw_offset, raw_length, out_name, "
                      "out_offset, out_length FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                      (after, batch_rows)).fetchall()
    copied = size = 0
    for done, (message_id, raw_owner, *places) in enumerate(rows, 1):
        parts = [(raw_owner, "raw", *places[:3])]
        if places[3]:
            parts.append((message_id, "out", *places[3:]))
        for owner, which, name, offset, length in parts:
            if payloads.has(db, owner, which):
                continue          # an interchange's raw input, copied with its first message
            data, _ = _read(ring, folder, name, offset, length, owner)
            if data:
                db.execute("INSERT INTO payloads (message_id, which, sealed) VALUES (?, ?, ?)",
                           (owner, which, data))
                copied, size = copied + 1, size + len(data)
        db.execute("UPDATE upgrade_progress SET done = ? WHERE version = 2", (message_id,))
        if size >= batch_bytes:
            return done, copied, True
    return len(rows), copied, len(rows) == batch_rows


def _read(ring: Keyring, folder: Path, name: str, offset: int, length: int,
          owner: int) -> tuple[bytes, str]:
    """The sealed bytes of a version 1 part and what is wrong with them ('' when they open)."""
    try:
        with open(folder / name, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
    except OSError as exc:
        return b"", f"its file cannot be read ({exc.strerror})"
    try:
        ring.open(data, owner)
    except SealBroken as exc:
        return data, str(exc)
    return data, ""


def _finish(db, ring, folder: Path, progress) -> None:
    """Check every part opens from the database (or did not open from its file either),
    then drop the file columns and record version 2 in one transaction."""
    broken = list(payloads.problems(db, ring))
    for owner, which, problem in broken:
        if not _read(ring, folder, *_place(db, owner, which), owner)[1]:
            raise schema.StoreProblem(f"upgrade stopped: {problem}, though its file opens; the "
                                      "payload files are kept")
    progress(f"verified: every part copied opens from the database, except {len(broken)} that "
             "did not open from their files either (delivery quarantines them)"
             + "".join(f"\n  {problem}" for _, _, problem in broken[:20]))
    with db.transaction():
        if schema.version(db) == 1:
            db.execute("DROP INDEX IF EXISTS messages_raw_name")
            db.execute("DROP INDEX IF EXISTS messages_out_name")
            for column in FILE_COLUMNS:
                db.execute(f"ALTER TABLE messages DROP COLUMN {column}")
            db.execute("DROP TABLE upgrade_progress")
            schema.record(db, 2)
    progress("store upgraded to version 2; removing the payload folder")


def _place(db, owner: int, which: str) -> tuple[str, int, int]:
    """(file name, offset, length) of a version 1 part."""
    if which == "raw":
        return db.execute("SELECT raw_name, raw_offset, raw_length FROM messages WHERE "
                          "raw_owner = ? LIMIT 1", (owner,)).fetchone()
    return db.execute("SELECT out_name, out_offset, out_length FROM messages WHERE id = ?",
                      (owner,)).fetchone()
