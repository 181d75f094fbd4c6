"""The SFTP outboxes in the store (table ``outbox``): which file names each account sees.

A push to ``sftp:ACCOUNT`` adds one row (account, file name, message id, the size
it opens to, when it was listed: a listing reads no payload); the file's content
is the message's sealed ``out`` payload (table ``payloads``), so there is no copy
on any node's disk and every node on one database lists, opens and confirms the
same files. A file name is
``<ZD number>.<extension>`` — or, when the account has (or had) a file of that
name for another message, ``<ZD number>-2.<extension>``, ``-3`` and so on: the
UNIQUE (account, file_name) key decides, never a file system, so two answers
with one ZD number never overwrite each other. A name is never handed to
another message while its row lasts (a pickup only sets ``picked_up_at``); the
row goes when its message is purged. The same message delivered again (a resend)
gets its old name back, listed again. A pickup (the client deletes the file)
sets ``picked_up_at`` (``take``) and ``Store.picked_up`` notes "pickup confirmed"
in the message's history and audit log in the same transaction, so the file is
gone from every node at once.
"""

from gateway.spool.db import Database

ATTEMPTS = 1000          # names tried for one message (ZD, ZD-2, ... ZD-1000)
LISTED = ("SELECT file_name, message_id, size, listed_at FROM outbox WHERE account = ? AND "
          "picked_up_at IS NULL ")


def name(base: str, extension: str, number: int) -> str:
    """The ``number``-th name for a file of ``base`` (1: the plain one)."""
    return f"{base}.{extension}" if number == 1 else f"{base}-{number}.{extension}"


def add(db: Database, account: str, message_id: int, size: int, base: str, extension: str,
        now: float, again: bool = True) -> str:
    """List message ``message_id`` (its output: ``size`` bytes) in ``account``'s outbox
    under a free name and return it (one transaction). A message listed before keeps
    its name: listed again, or with ``again`` False left as it is (picked up or not)."""
    with db.transaction():
        for number in range(1, ATTEMPTS + 1):
            old = db.value("SELECT file_name FROM outbox WHERE account = ? AND message_id = ?",
                           (account, message_id))     # a node listed it first meanwhile?
            if old is not None:
                if again:
                    db.execute("UPDATE outbox SET size = ?, listed_at = ?, picked_up_at = NULL "
                               "WHERE account = ? AND message_id = ?",
                               (size, now, account, message_id))
                return old
            candidate = name(base, extension, number)
            added = db.execute("INSERT INTO outbox (account, file_name, message_id, size, "
                               "listed_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (account, candidate, message_id, size, now))
            if added.rowcount == 1:
                return candidate
    raise ValueError(f"no free outbox file name for message {message_id} after {ATTEMPTS}")


def files(db: Database, account: str, after: str | None, limit: int) -> list:
    """The files ``account`` sees, by name after ``after``: file_name, message_id, size
    and listed_at."""
    return db.execute(LISTED + "AND file_name > ? ORDER BY file_name LIMIT ?",
                      (account, after or "", limit)).fetchall()


def find(db: Database, account: str, file_name: str):
    """The file ``file_name`` of ``account``'s outbox as ``files`` gives it, or None."""
    return db.one(LISTED + "AND file_name = ?", (account, file_name))


def take(db: Database, account: str, file_name: str, now: float) -> int | None:
    """Mark the listed file picked up, inside the caller's transaction (``Store.picked_up``
    notes it); its message id, or None when no such file is listed."""
    taken = db.execute("UPDATE outbox SET picked_up_at = ? WHERE account = ? AND file_name = ? "
                       "AND picked_up_at IS NULL", (now, account, file_name))
    if taken.rowcount != 1:
        return None
    return db.value("SELECT message_id FROM outbox WHERE account = ? AND file_name = ?",
                    (account, file_name))


def forget(db: Database, message_ids: list[tuple[int]]) -> None:
    """Drop the outbox rows of purged messages (inside the purge's transaction)."""
    db.executemany("DELETE FROM outbox WHERE message_id = ?", message_ids)
