"""Push deliveries: due messages to a Deliverer, backoff, lifetime, in-flight limits.

New pushes (``outbound``) and retries that are due (``deferred``) go to the
Deliverer, at most ``delivery.max_in_flight`` at once per destination over all
nodes: a node claims each push first (``gateway.spool.claims``: a lease of
``delivery.lease_seconds``, renewed while the push runs) and settles it in the
transaction that drops the claim, so no push runs on two live nodes. A failure
defers the message by Postfix-style backoff — ``retry.first_seconds``, doubling,
at most ``retry.max_seconds``; once a message is older than
``retry.lifetime_seconds`` it moves to fallback and an ALERT line is logged.
A payload whose SHA-256 no longer matches is never delivered: the message is
quarantined in fallback with the reason and an ALERT line. Administrators can
hold, release and retry a message at once.
"""

from typing import Callable, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from gateway import times
from gateway.spool import claims, payloads
from gateway.spool.store import ClaimLost, StateError, Store

log = Logger(namespace="gatewayd.delivery")   # module level: as a class attribute Twisted renames it


class Deliverer(Protocol):
    """Pushes one message's payload to its destination; the Deferred fails on any problem."""

    def deliver(self, row, payload: bytes) -> defer.Deferred: ...


def backoff(attempts: int, first: int, maximum: int) -> int:
    """Seconds to wait after the ``attempts``-th failed attempt: first, doubling, capped."""
    return min(maximum, first * 2 ** min(attempts - 1, 40))


class Dispatcher:
    """Runs push deliveries from a Store as node ``node`` (``node.name``, or host name:
    process id); call ``tick()`` periodically (a LoopingCall)."""

    def __init__(self, store: Store, config, deliverer: Deliverer, clock: Callable[[], float],
                 schemes: tuple[str, ...] = ("mllp://", "sftp:"), node: str = ""):
        self.store, self.config, self.deliverer, self.clock = store, config, deliverer, clock
        self.schemes = schemes    # only deliveries the deliverer can make are started
        self.node = node or config.node_name or claims.default_node()
        self.lease = config.delivery_lease_seconds
        self.log = log          # an attribute, so a test can listen
        self.busy: set[int] = set()      # claimed by this node, push under way
        self.renewed_at = clock()
        claims.forget(store.db, self.node)     # an earlier life's pushes died with it

    def tick(self) -> list[defer.Deferred]:
        """Renew the claims of the pushes under way (every quarter lease); claim every due
        push the in-flight limits of all nodes allow and start it; return their Deferreds."""
        now = self.clock()
        if self.busy and now - self.renewed_at >= self.lease / 4:
            self._renew(now)
        started = []
        for row in claims.take(self.store.db, self.node, now, self.lease,
                               self.config.delivery_max_in_flight, self.schemes):
            if row["id"] in self.busy:       # lost, and claimed back while still under way
                claims.release(self.store.db, row["id"], self.node)
                continue
            started.append(self._start(row))
        return started

    def _renew(self, now: float) -> None:
        held = claims.renew(self.store.db, self.node, self.busy, now + self.lease)
        self.renewed_at = now            # after it worked: a failed renewal is tried next tick
        for message_id in sorted(self.busy - held):
            self.log.error("claim on id={id} expired while its push was under way; another "
                           "node may push it as well", id=message_id)

    def _start(self, row) -> defer.Deferred:
        try:
            payload = self.store.payload(row, "out")
        except payloads.PayloadCorrupt as exc:
            self.store.settle(row["id"], self.node, "fallback", "delivery",
                              f"E-PAYLOAD-CORRUPT: {exc}", action="quarantine",
                              next_attempt_at=None)
            self.log.critical("ALERT payload corrupt id={id} destination={destination}: "
                              "quarantined in fallback, not delivered", id=row["id"],
                              destination=row["destination"])
            return defer.succeed(None)
        if row["state"] == "deferred":
            try:
                self.store.transition(row["id"], "outbound", "delivery", None)
            except StateError:       # held or cancelled since it was claimed
                claims.release(self.store.db, row["id"], self.node)
                return defer.succeed(None)
        self.busy.add(row["id"])
        attempt = defer.maybeDeferred(self.deliverer.deliver, row, payload)
        attempt.addBoth(lambda result: self.busy.discard(row["id"]) or result)
        attempt.addCallbacks(lambda _: self._delivered(row), lambda failure: self._failed(row, failure))
        return attempt

    def _delivered(self, row) -> None:
        """Record the delivery (even when the claim went to another node meanwhile: the
        message did arrive) and drop the claim, in one transaction."""
        state = self.store.get(row["id"])["state"]
        if state not in ("outbound", "held"):
            claims.release(self.store.db, row["id"], self.node)
            self.log.error("delivered id={id}, but it was {state} meanwhile; left {state}",
                           id=row["id"], state=state)
            return
        self.store.settle(row["id"], self.node, "delivered", "delivery", None, held=False,
                          next_attempt_at=None)
        self.log.info("delivered id={id} destination={destination}", id=row["id"],
                      destination=row["destination"])

    def _failed(self, row, failure) -> None:
        """Defer the message (or move it to fallback past its lifetime), dropping the claim
        in the same transaction; nothing when held or cancelled meanwhile, or when the
        claim went to another node (that node decides now)."""
        reason = _reason(failure)
        try:
            self._defer(row, reason)
        except StateError as exc:
            claims.release(self.store.db, row["id"], self.node)
            if isinstance(exc, ClaimLost):
                self.log.error("push of id={id} failed after its claim expired: left to the "
                               "node that holds it now", id=row["id"])

    def _defer(self, row, reason: str) -> None:
        if self.store.get(row["id"])["state"] != "outbound":
            raise StateError("held or cancelled while the attempt ran: the administrator decides")
        attempts = row["attempts"] + 1
        now = self.clock()
        if now - row["received_at"] >= self.config.retry_lifetime_seconds:
            days = self.config.retry_lifetime_seconds / 86400
            self.store.settle(row["id"], self.node, "fallback", "delivery",
                              f"undeliverable for {days:g} days: {reason}", action="deliver",
                              result="expired", attempts=attempts, next_attempt_at=None)
            self.log.critical("ALERT delivery expired id={id} zd={zd} destination={destination} "
                              "attempts={attempts}: moved to fallback", id=row["id"],
                              zd=row["zd_number"], destination=row["destination"], attempts=attempts)
            return
        delay = backoff(attempts, self.config.retry_first_seconds, self.config.retry_max_seconds)
        self.store.settle(row["id"], self.node, "deferred", "delivery", reason, attempts=attempts,
                          next_attempt_at=now + delay)
        self.log.warn("deferred id={id} destination={destination} attempt={attempt} next try "
                      "{next} (in {delay}s): {reason}", id=row["id"],
                      destination=row["destination"], attempt=attempts,
                      next=times.utc(now + delay), delay=delay, reason=reason)


def _reason(failure) -> str:
    error = failure.value
    code = getattr(error, "code", type(error).__name__)
    return f"{code}: {getattr(error, 'message', None) or error}"[:300]


def hold(store: Store, message_id: int, actor: str) -> None:
    """Stop a message until it is released."""
    store.transition(message_id, "held", actor, "held by an administrator", next_attempt_at=None)


def release(store: Store, message_id: int, actor: str) -> None:
    """Put a held message back: ready for pickup, or outbound for a push."""
    row = _row(store, message_id)
    if row["state"] != "held":
        raise StateError(f"message {message_id} is {row['state']}, not held")
    store.transition(message_id, "ready" if row["delivery"] == "pull" else "outbound", actor, None)


def retry_now(store: Store, message_id: int, actor: str) -> None:
    """Try a deferred push again at once."""
    row = _row(store, message_id)
    if row["state"] != "deferred":
        raise StateError(f"message {message_id} is {row['state']}; only deferred messages retry")
    store.transition(message_id, "outbound", actor, "retry requested", next_attempt_at=None)


def _row(store: Store, message_id: int):
    row = store.get(message_id)
    if row is None:
        raise StateError(f"no message {message_id}", code="E-NOT-FOUND")
    return row
