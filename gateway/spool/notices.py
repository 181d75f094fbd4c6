"""The notifications' tables: the audit cursor, the events found and what was sent.

``gateway.notify`` decides what an event is and sends it; this module keeps its
state in the store (tables ``notify_cursor`` and ``notifications``, created with
the others in ``gateway.spool.schema``), so a restart neither loses nor repeats one.
"""

from typing import Callable

# What ``mark`` may set on a notification once a channel took it, or a send failed.
MARKS = {"mailed": "mailed_at = ?", "posted": "posted_at = ?", "sent": "sent_at = ?",
         "failed": "attempts = attempts + 1, next_at = ?"}


def start(db, enabled: bool) -> None:
    """Put the cursor at the audit log's end when there is none; a notifier that is not
    enabled drops it first (enabled later, it notifies what happens from then on only)."""
    if not enabled:
        db.execute("DELETE FROM notify_cursor")
    db.execute("INSERT INTO notify_cursor VALUES (1, (SELECT coalesce(max(seq), (SELECT seq FROM "
               "audit_anchor)) FROM audit)) ON CONFLICT DO NOTHING")


def scan(db, now: float, event: Callable, unpulled_before: float | None) -> int:
    """In one transaction: the audit records after the cursor about a message that
    ``event(row)`` names an event, and (with ``unpulled_before``) the ready messages
    received before then, become notifications; the cursor moves on. How many were added."""
    with db.transaction():
        cursor = db.value("SELECT seq FROM notify_cursor")
        records = db.execute("SELECT a.seq, a.action, a.result, m.* FROM audit a JOIN messages m "
                             "ON m.id = a.message_id WHERE a.seq > ? ORDER BY a.seq LIMIT 1000",
                             (cursor,)).fetchall()
        found = [(name, row) for row in records if (name := event(row))]
        if unpulled_before is not None:
            found += [("unpulled", row) for row in db.execute(
                "SELECT * FROM messages WHERE state = 'ready' AND received_at < ? AND id NOT IN "
                "(SELECT message_id FROM notifications WHERE event = 'unpulled')",
                (unpulled_before,))]
        added = sum(db.execute(
            "INSERT INTO notifications (created, event, message_id, zd_number, destination, "
            "next_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (now, name, row["id"], row["zd_number"], row["destination"], now)).rowcount
            for name, row in found)
        if records:
            db.execute("UPDATE notify_cursor SET seq = ?", (records[-1]["seq"],))
        last = db.value("SELECT max(seq) FROM audit")
        if not records and last is not None and last > cursor:
            db.execute("UPDATE notify_cursor SET seq = ?", (last,))   # records about no message
    return added


def due(db, now: float, limit: int = 100) -> list:
    """Notifications not sent to every channel yet whose time has come, oldest first."""
    return db.execute("SELECT * FROM notifications WHERE sent_at IS NULL AND next_at <= ? "
                      "ORDER BY id LIMIT ?", (now, limit)).fetchall()


def mark(db, notification_id: int, what: str, value: float) -> None:
    """Record on a notification what happened (MARKS) at ``value`` (a time)."""
    db.execute(f"UPDATE notifications SET {MARKS[what]} WHERE id = ?", (value, notification_id))
