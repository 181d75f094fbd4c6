"""Message states and the transitions allowed between them (standards as data).

received   accepted and stored; routed in the same transaction
ready      waiting for the institution to pull it
outbound   to be pushed (MLLP or SFTP outbox)
deferred   a push failed; retried at ``next_attempt_at``
delivered  picked up (pull) or acknowledged (push)
fallback   no route, not accepted, or undeliverable; an administrator decides
held       stopped by an administrator until released (a push already under way
           when it was held may still complete: held -> delivered)
expired    past its lifetime without delivery
cancelled  withdrawn; never delivered again
discarded  junk an administrator threw away from fallback or held, with a reason (final)
rejected   input that could not be read; kept with its reason for an administrator
"""

STATES = ("received", "ready", "outbound", "deferred", "delivered", "fallback", "held",
          "expired", "cancelled", "rejected", "discarded")

TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"ready", "outbound", "fallback", "rejected"}),
    "ready": frozenset({"delivered", "held", "fallback", "expired", "cancelled"}),
    "outbound": frozenset({"delivered", "deferred", "fallback", "held", "cancelled"}),
    "deferred": frozenset({"outbound", "fallback", "held", "expired", "cancelled"}),
    "delivered": frozenset({"ready", "outbound", "cancelled"}),
    "fallback": frozenset({"ready", "outbound", "held", "cancelled", "discarded"}),
    "held": frozenset({"ready", "outbound", "fallback", "cancelled", "delivered", "discarded"}),
    "expired": frozenset({"fallback", "cancelled"}),
    "cancelled": frozenset(),
    "rejected": frozenset(),
    "discarded": frozenset(),
}


def allowed(old: str, new: str) -> bool:
    return new in TRANSITIONS.get(old, frozenset())
