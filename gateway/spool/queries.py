"""Questions asked of the queue: listings, selections for bulk actions, ages, gauges.

Plain SELECTs (portable SQL for both backends) on ``messages``, ``history`` and the
counts; every change still goes through the store's own methods. A listing is in one stable order — oldest first (received
time, then id) — filtered by state, destination, received time, ZD number and
sender AGB, a page at a time (``after``: the last id of the previous page).
``ages`` counts the queued messages per destination in ``qshape``'s buckets
(minutes: 5, 10, 20, 40, … 1280, and older).
"""

from dataclasses import dataclass

QUEUED = ("received", "ready", "outbound", "deferred", "fallback", "held", "expired")
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)      # minutes, as qshape


@dataclass(frozen=True)
class Filter:
    """Which messages: states (empty: any), destination, received since/until (Unix
    seconds, until exclusive), ZD number (also the answer to it), sender AGB."""

    states: tuple[str, ...] = QUEUED
    destination: str | None = None
    since: float | None = None
    until: float | None = None
    zd: str | None = None
    sender: str | None = None

    def where(self) -> tuple[str, list]:
        conditions, values = [], []
        if self.states:
            conditions.append(f"state IN ({', '.join('?' * len(self.states))})")
            values += list(self.states)
        for column, value, test in (("destination", self.destination, "destination = ?"),
                                    ("since", self.since, "received_at >= ?"),
                                    ("until", self.until, "received_at < ?"),
                                    ("sender", self.sender, "sender_agb = ?")):
            if value is not None:
                conditions.append(test)
                values.append(value)
        if self.zd is not None:
            conditions.append("(zd_number = ? OR in_reply_to = ?)")
            values += [self.zd, self.zd]
        return " AND ".join(conditions) or "1 = 1", values


def listing(db, which: Filter, limit: int = 100, after: int | None = None) -> tuple[list, bool]:
    """One page of the messages ``which`` selects, oldest first, starting after message
    ``after``; and whether more follow."""
    where, values = which.where()
    if after is not None:
        where += " AND (received_at, id) > (SELECT received_at, id FROM messages WHERE id = ?)"
        values.append(after)
    rows = db.execute(f"SELECT * FROM messages WHERE {where} ORDER BY received_at, id LIMIT ?",
                      [*values, limit + 1]).fetchall()
    return rows[:limit], len(rows) > limit


def ids(db, which: Filter) -> list[int]:
    """Every message id ``which`` selects, oldest first (for a bulk action)."""
    where, values = which.where()
    return [row[0] for row in db.execute(
        f"SELECT id FROM messages WHERE {where} ORDER BY received_at, id", values)]


def ages(db, now: float, destination: str | None = None) -> list[dict]:
    """Per destination: the queued messages, in total and per age bucket (qshape)."""
    cases = " ".join(f"WHEN ? - received_at < {m * 60} THEN {i}"
                     for i, m in enumerate(AGE_BUCKETS))
    which = Filter(destination=destination)
    where, values = which.where()
    rows = db.execute(
        f"SELECT destination, CASE {cases} ELSE {len(AGE_BUCKETS)} END AS bucket, count(*) "
        f"FROM messages WHERE {where} GROUP BY destination, bucket ORDER BY destination",
        [now] * len(AGE_BUCKETS) + values).fetchall()
    found: dict[str, list[int]] = {}
    for name, bucket, count in rows:
        found.setdefault(name or "unrouted", [0] * (len(AGE_BUCKETS) + 1))[bucket] += count
    return [{"destination": name, "total": sum(counts), "buckets": dict(zip(BUCKET_NAMES, counts))}
            for name, counts in sorted(found.items())]


BUCKET_NAMES = tuple(str(m) for m in AGE_BUCKETS) + (f"{AGE_BUCKETS[-1]}+",)


def ever_delivered(db, message_id: int) -> bool:
    """Whether the message was ever delivered (picked up or acknowledged)."""
    return db.execute("SELECT 1 FROM history WHERE message_id = ? AND state = 'delivered' "
                      "LIMIT 1", (message_id,)).fetchone() is not None


def never_pulled(db, case_numbers: list[str]) -> list:
    """The messages of these cases (case ZD numbers) still waiting for their institution."""
    found = []
    for start in range(0, len(case_numbers), 500):
        chunk = case_numbers[start:start + 500]
        found += db.execute(
            f"SELECT * FROM messages WHERE case_zd IN ({', '.join('?' * len(chunk))}) AND state IN "
            "('ready', 'outbound', 'deferred', 'held', 'fallback') ORDER BY received_at, id",
            chunk).fetchall()
    return found


def stats(db) -> list:
    """Per destination and state of the messages not finished: depth and oldest received."""
    return db.execute(
        "SELECT destination, state, count(*) AS depth, min(received_at) AS oldest FROM messages "
        "WHERE state NOT IN ('delivered', 'cancelled', 'discarded') GROUP BY destination, state "
        "ORDER BY destination, state").fetchall()


def ready_for(db, destination: str, limit: int = 1000, after: int = 0) -> list:
    """What an institution's spool offers for pickup, oldest first, from after message id
    ``after`` (no patient data: ids, kinds, times)."""
    return db.execute("SELECT id, zd_number, kind, format, received_at FROM messages "
                      "WHERE destination = ? AND state = 'ready' AND id > ? ORDER BY id LIMIT ?",
                      (destination, after, limit)).fetchall()


def received_between(db, low: float, high: float) -> list:
    """Messages received in [low, high), readable ones only, oldest first."""
    return db.execute("SELECT * FROM messages WHERE received_at >= ? AND received_at < ? AND "
                      "state != 'rejected' ORDER BY received_at, id", (low, high)).fetchall()


def cases(db, teleconsult_kinds: tuple[str, ...]) -> list:
    """Per case (its ZD number, or ``#id`` for a message without one): when its last message
    came, whether it is a teleconsultation, how many messages; oldest first."""
    kinds = ", ".join("?" * len(teleconsult_kinds))
    return db.execute(
        "SELECT CASE WHEN case_zd = '' THEN '#' || id ELSE case_zd END AS grp, "
        "max(received_at) AS last, "
        f"max(CASE WHEN kind IN ({kinds}) THEN 1 ELSE 0 END) AS teleconsult, "
        "count(*) AS messages FROM messages GROUP BY 1 ORDER BY last",
        teleconsult_kinds).fetchall()


GAUGES = {
    "notifications_pending": "SELECT count(*) FROM notifications WHERE sent_at IS NULL",
    "audit_records": "SELECT coalesce(max(seq), 0) - (SELECT seq FROM audit_anchor) FROM audit",
    "purged_messages": "SELECT coalesce(sum(messages), 0) FROM purge_counts",
}


def gauges(db) -> dict[str, int]:
    """Notifications waiting, audit records, messages purged (all time)."""
    return {name: int(db.value(sql) or 0) for name, sql in GAUGES.items()}
