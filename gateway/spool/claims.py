"""Delivery claims: which node pushes which message right now, and until when (a lease).

Several nodes on one PostgreSQL database start pushes from the same queue. Before a
node pushes a message it claims it: a row in ``claims`` (message id, node, destination,
``until``). ``take`` claims the due pushes in one transaction:

- the expired claims go first (their node died, hung or lost the database for a
  whole lease): their messages are still outbound or deferred, so they are due again;
- the due messages without a claim are chosen oldest first, at most
  ``delivery.max_in_flight`` per destination counted with the live claims of ALL
  nodes;
- the chosen rows are locked with ``SELECT ... FOR UPDATE SKIP LOCKED`` and checked
  again (a row another transaction is changing right now, such as an administrator's
  hold, is left for the next round instead of waited for), and a claim row is
  inserted for each with ``until = now + delivery.lease_seconds``.

Why one lock for all claiming: row locks keep two nodes from claiming the same
message, but the per-destination limit is a count over other rows. Under READ
COMMITTED two nodes could each count three live claims for a destination and each
add one (write skew). So ``take`` first takes the transaction-level advisory lock
``claims`` (``Database.lock``; released at COMMIT, also when the node's connection
drops): claiming is serialised across nodes, and each claimer counts what the
previous one committed. Per-destination advisory locks would let nodes claim for
different destinations in parallel, but need every destination of a round locked in
one order; claiming is one short transaction per node a second, so one lock costs
nothing measurable and is easy to see correct. On SQLite ``BEGIN IMMEDIATE`` already
serialises every writer (and SQLite is one node).

Leases: the Dispatcher renews the claims of its running pushes every quarter lease
(``renew``), and the default lease (60 s) is also longer than the push timeout
(30 s), so a missed renewal does not lose a claim. A push settles (delivered,
deferred, fallback) in the same transaction that deletes its claim
(``Store.settle``). So no message is pushed by two live nodes at once; a repeat push
happens only when a node died (or stalled for a whole lease) mid-push, or could not
record the outcome: another node then pushes it again after the lease, and the
receiver drops the repeat by its MSH-10 control id.

A node restarting under the same ``node.name`` drops its own claims at start (its
pushes died with the old process), so they are due at once. On SQLite, one node by
definition, every claim found at start is this node's earlier life and goes.
"""

import os
import socket

# SQLite serves one node: the claims found at start are all its own earlier life's.
ONE_NODE = {"sqlite": True, "postgresql": False}
# How the chosen rows are locked: SQLite's BEGIN IMMEDIATE holds the whole database.
LOCK_ROWS = {"sqlite": "", "postgresql": " FOR UPDATE SKIP LOCKED"}
# Destinations with pushes waiting (the messages_queue index); then, for each with room
# under the in-flight limit, its oldest due unclaimed pushes, as many as there is room:
# a destination at its limit costs no scan of its backlog.
WAITING = "SELECT DISTINCT destination FROM messages WHERE state IN ('outbound', 'deferred')"
DUE = """
SELECT * FROM messages m
WHERE m.state IN ('outbound', 'deferred') AND m.destination = ?
  AND coalesce(m.next_attempt_at, 0) <= ? AND ({schemes})
  AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.message_id = m.id)
ORDER BY coalesce(m.next_attempt_at, 0), m.id LIMIT ?
"""


# Whether anything could be claimed: without it, no write transaction (nor lock) at all.
ANY = ("SELECT 1 FROM messages m WHERE m.state IN ('outbound', 'deferred') AND "
       "coalesce(m.next_attempt_at, 0) <= ? AND NOT EXISTS (SELECT 1 FROM claims c WHERE "
       "c.message_id = m.id AND c.until > ?) LIMIT 1")


def default_node() -> str:
    """The name of this node when ``node.name`` is empty: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


def take(db, node: str, now: float, lease: float, per_destination: int,
         schemes: tuple[str, ...], limit: int = 1000) -> list:
    """Claim for ``node`` the pushes due at ``now`` whose delivery starts with one of
    ``schemes``, at most ``per_destination`` claims per destination over all nodes, in
    one transaction; return their message rows (oldest first)."""
    if db.one(ANY, (now, now)) is None:
        return []
    with db.transaction():
        db.lock("claims")
        db.execute("DELETE FROM claims WHERE until <= ?", (now,))
        claimed, due = live(db, now), DUE.format(schemes=" OR ".join(
            ["substr(m.delivery, 1, ?) = ?"] * len(schemes)) or "1 = 0")
        prefixes = [v for s in schemes for v in (len(s), s)]
        chosen = []
        for (destination,) in db.execute(WAITING).fetchall():
            room = per_destination - claimed.get(destination, 0)
            if room > 0:
                chosen += db.execute(due, (destination, now, *prefixes, room)).fetchall()
        chosen = sorted(chosen, key=lambda row: (row["next_attempt_at"] or 0, row["id"]))[:limit]
        if not chosen:
            return []
        marks = ", ".join("?" * len(chosen))
        locked = {row[0] for row in db.execute(
            f"SELECT id FROM messages WHERE id IN ({marks}) AND state IN ('outbound', "
            f"'deferred') AND coalesce(next_attempt_at, 0) <= ? ORDER BY id"
            + LOCK_ROWS[db.backend], (*[row["id"] for row in chosen], now))}
        rows = [row for row in chosen if row["id"] in locked]
        db.executemany("INSERT INTO claims (message_id, node, destination, until) "
                       "VALUES (?, ?, ?, ?)",
                       [(row["id"], node, row["destination"], now + lease) for row in rows])
    return rows


def renew(db, node: str, ids, until: float) -> set[int]:
    """Extend ``node``'s claims on the messages ``ids`` to ``until``; return the ids it
    still holds (a claim that expired and went to another node is not among them)."""
    ids = sorted(ids)
    if not ids:
        return set()
    marks = ", ".join("?" * len(ids))
    with db.transaction():
        db.execute(f"UPDATE claims SET until = ? WHERE node = ? AND message_id IN ({marks})",
                   (until, node, *ids))
        return {row[0] for row in db.execute(
            f"SELECT message_id FROM claims WHERE node = ? AND message_id IN ({marks})",
            (node, *ids))}


def release(db, message_id: int, node: str) -> bool:
    """Drop ``node``'s claim on a message (in the caller's transaction, if any); whether
    it held one."""
    return db.execute("DELETE FROM claims WHERE message_id = ? AND node = ?",
                      (message_id, node)).rowcount > 0


def forget(db, node: str) -> int:
    """Drop the claims of ``node``'s earlier life (on SQLite: every claim); how many."""
    if ONE_NODE[db.backend]:
        return db.execute("DELETE FROM claims").rowcount
    return db.execute("DELETE FROM claims WHERE node = ?", (node,)).rowcount


def live(db, now: float) -> dict[str, int]:
    """Live claims per destination, all nodes together."""
    return dict(db.execute("SELECT destination, count(*) FROM claims WHERE until > ? "
                           "GROUP BY destination", (now,)).fetchall())
