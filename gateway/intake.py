"""accept(raw, envelope) -> receipts: the one place the intake chain is assembled.

sniff -> decode -> authorise (the identity's mandates) -> dedup -> route ->
encode -> store. Payload files are fsynced before the rows are committed, and
``accept`` returns only after that commit: a transport acknowledges a sender
only with a receipt in hand. Input that cannot be read is stored as
``rejected`` with its reason, then the DecodeError is raised to the transport.
"""

import hashlib
import sqlite3
from dataclasses import dataclass

from gateway import codecs, routes
from gateway.document import Document, Kind
from gateway.errors import DecodeError, EncodeError, GatewayError
from gateway.spool import payloads
from gateway.spool.store import Entry, Store

ADMIN = "admin"


class NotMandated(GatewayError):
    """The sending identity may not send for this AGB code (HL7 AR, HTTP 403)."""

    code = "E-NOT-MANDATED"


class DuplicateConflict(GatewayError):
    """A control id already used by this identity arrives with different content."""

    code = "E-DUPLICATE-CONFLICT"


@dataclass(frozen=True)
class Envelope:
    """Who sent the bytes, and for which AGB codes they may send (None: any, the local admin)."""

    identity: str
    channel: str
    mandates: frozenset[str] | None = None


@dataclass(frozen=True)
class Receipt:
    id: int
    zd_number: str
    state: str
    destination: str
    duplicate: bool = False


class Intake:
    """The intake chain over one Store and the route tables in force."""

    def __init__(self, store: Store, tables: routes.Tables, max_bytes: int):
        self.store, self.tables, self.max_bytes = store, tables, max_bytes

    def accept(self, raw: bytes, envelope: Envelope) -> list[Receipt]:
        """Store ``raw`` durably and return a receipt per document in it.

        Raises DecodeError (stored as rejected), NotMandated or DuplicateConflict
        (nothing stored)."""
        try:
            if len(raw) > self.max_bytes:
                raise DecodeError(f"message is larger than {self.max_bytes} bytes",
                                  where="byte 1", code="E-TOO-LARGE")
            decoded = codecs.get(codecs.sniff(raw)).decode_messages(raw)
        except DecodeError as exc:
            self._reject(raw, envelope, exc)
            raise
        for _, doc in decoded:
            self._authorise(doc, envelope)
        content = hashlib.sha256(raw).hexdigest()
        receipts: list[Receipt | None] = []
        fresh = []
        for part, (control_id, doc) in enumerate(decoded):
            control_id = control_id or f"sha256:{content}/{part}"   # a sender without ids
            existing = self.store.find(envelope.identity, control_id)
            if existing is None:
                receipts.append(None)
                fresh.append((part, control_id, doc))
            elif existing["content_sha256"] == content:
                receipts.append(_receipt(existing, duplicate=True))
            else:
                raise DuplicateConflict(f"control id {control_id[:40]!r} was used before for "
                                        "other content", where="control id")
        if fresh:
            stored = iter(self._store(raw, content, envelope, fresh))
            receipts = [r if r is not None else next(stored) for r in receipts]
        return receipts

    def _authorise(self, doc: Document, envelope: Envelope) -> None:
        mandates = envelope.mandates
        if mandates is not None and doc.sender.agb not in mandates:
            raise NotMandated(f"identity {envelope.identity!r} may not send for AGB "
                              f"{doc.sender.agb}", where="sender AGB")

    def _store(self, raw: bytes, content: str, envelope: Envelope, fresh) -> list[Receipt]:
        routed = [(part, control_id, doc, *self.route(doc)) for part, control_id, doc in fresh]
        outputs = [out for *_, out in routed if out is not None]
        raw_part, *out_parts = self.store.write_payloads([raw, *outputs])
        out_parts = iter(out_parts)
        entries = []
        for part, control_id, doc, route, out in routed:
            state = "fallback" if route.fallback else ("ready" if route.delivery == "pull"
                                                        else "outbound")
            entries.append(Entry(values={
                "identity": envelope.identity, "control_id": control_id, "part": part,
                "content_sha256": content, "zd_number": doc.zd_number, "kind": str(doc.kind),
                "sender_agb": doc.sender.agb, "recipient_agb": doc.recipient.agb,
                "in_reply_to": doc.in_reply_to, "sent_at": doc.sent_at.isoformat(),
                "destination": route.destination, "format": route.format,
                "delivery": route.delivery, "state": state, "reason": route.fallback,
                **_part_columns("raw", raw_part),
                **(_part_columns("out", next(out_parts)) if out is not None else {})},
                path=("received", state)))
        try:
            ids = self.store.insert(entries, actor=f"{envelope.channel}:{envelope.identity}")
        except sqlite3.IntegrityError:
            self.store.discard_payload(raw_part.name)
            raise DuplicateConflict("control id stored meanwhile by another writer; send again",
                                    where="control id") from None
        return [Receipt(i, e.values["zd_number"], e.values["state"], e.values["destination"])
                for i, e in zip(ids, entries)]

    def route(self, doc: Document) -> tuple[routes.Route, bytes | None]:
        """The route for ``doc`` and its payload in the destination's format (None in
        fallback; a document the format cannot carry goes to fallback with the reason)."""
        route = routes.match(doc, self.tables, self._requester(doc))
        if route.fallback:
            return route, None
        try:
            return route, codecs.get(route.format).encode(doc)
        except EncodeError as exc:
            return routes.Route(route.destination, route.format, route.delivery,
                                f"cannot be written as {route.format}: {exc}"), None

    def reroute_fallback(self, actor: str) -> list[Receipt]:
        """Route every message in fallback again (after the tables changed); those that
        now have a route move on. Returns receipts for the ones that moved."""
        moved = []
        for row in self.store.listing("fallback"):
            raw = self.store.payload(row, "raw")
            doc = codecs.get(codecs.sniff(raw)).decode(raw)[row["part"]]
            route, out = self.route(doc)
            if route.fallback:
                continue
            (out_part,) = self.store.write_payloads([out])
            state = "ready" if route.delivery == "pull" else "outbound"
            self.store.transition(row["id"], state, actor, None, destination=route.destination,
                                  format=route.format, delivery=route.delivery,
                                  **_part_columns("out", out_part))
            moved.append(Receipt(row["id"], row["zd_number"], state, route.destination))
        return moved

    def _requester(self, doc: Document) -> str | None:
        if doc.kind is not Kind.TELECONSULT_ANSWER or not doc.in_reply_to:
            return None
        requests = [row for row in self.store.by_zd(doc.in_reply_to)
                    if row["kind"] != str(Kind.TELECONSULT_ANSWER)]
        return requests[0]["sender_agb"] if requests else None

    def _reject(self, raw: bytes, envelope: Envelope, error: DecodeError) -> None:
        (raw_part,) = self.store.write_payloads([raw])
        self.store.insert([Entry(values={
            "identity": envelope.identity, "control_id": None, "part": 0,
            "content_sha256": raw_part.sha256, "state": "rejected", "reason": str(error),
            **_part_columns("raw", raw_part)}, path=("received", "rejected"))],
            actor=f"{envelope.channel}:{envelope.identity}")


def _receipt(row, duplicate: bool = False) -> Receipt:
    return Receipt(row["id"], row["zd_number"], row["state"], row["destination"], duplicate)


def _part_columns(which: str, part: payloads.Part) -> dict:
    return {f"{which}_name": part.name, f"{which}_offset": part.offset,
            f"{which}_length": part.length, f"{which}_sha256": part.sha256}
