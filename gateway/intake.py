"""accept(raw, envelope) -> receipts: the one place the intake chain is assembled.

sniff -> decode -> resolve mailboxes (route tables) -> authorise (the identity's
mandates) -> dedup -> route -> encode -> store. What a reader found odd but accepted
(the document's warnings, never patient data) is the reason of the message's first
history entry and the detail of its audit "receive" record. The sealed payloads are
committed with their rows in one transaction, and ``accept`` returns only after that
commit: a transport acknowledges a sender only with a receipt in hand. Input that
cannot be read is stored as ``rejected`` with its reason, then the DecodeError is
raised to the transport. Input refused whole — over the size cap, not mandated, a
reused control id — is not stored at all; an audit record notes the refusal.

``accept_many`` is the same for several inputs at once in one transaction (group
commit): the daemon stores everything that arrived while the previous batch was
being stored together, so concurrent senders share the cost of the sync. When
another writer (a process or node on the same database) commits one of the
batch's control ids first, the store refuses the transaction (Conflict) and the
batch is planned again: that input is a duplicate now and gets the first receipt.
"""

from dataclasses import dataclass, field

from gateway import codecs, reading, routes
from gateway.audit import Event
from gateway.document import ANSWER_SUFFIX, Document, Kind
from gateway.errors import DecodeError, GatewayError
from gateway.reading import DuplicateConflict, Envelope, Read
from gateway.spool import payloads
from gateway.spool.store import Conflict, Entry, Store

ADMIN = "admin"


@dataclass(frozen=True)
class Receipt:
    id: int
    zd_number: str
    state: str
    destination: str
    duplicate: bool = False


@dataclass(eq=False)
class _New:
    """A document to store: where it goes and, once written, its entry and id."""

    part: int
    control_id: str
    doc: Document
    route: routes.Route
    out: bytes | None
    id: int = -1

    def receipt(self, duplicate: bool = False) -> Receipt:
        state = "fallback" if self.route.fallback else (
            "ready" if self.route.delivery == "pull" else "outbound")
        return Receipt(self.id, self.doc.zd_number, state, self.route.destination, duplicate)


@dataclass(eq=False)
class _Plan:
    """One input on its way into the store: unreadable (``error``), or its documents as
    slots — a _New, a (_New, "duplicate") within the batch, or a stored Receipt."""

    index: int
    raw: bytes
    read: Read
    routed: dict = field(default_factory=dict)     # part -> (route, payload), from ``prepare``
    slots: list = field(default_factory=list)
    id: int = -1            # of the rejected message, when ``error``

    @property
    def envelope(self) -> Envelope:
        return self.read.envelope

    @property
    def content(self) -> str:
        return self.read.content

    @property
    def error(self) -> DecodeError | None:
        return self.read.error

    @property
    def decoded(self) -> list:
        return self.read.decoded


@dataclass(eq=False)
class Prepared:
    """Inputs read for one batch (``Intake.prepare``): each input's outcome when it was
    refused whole, the plans of the others, and the refusals' audit records."""

    outcomes: list
    plans: list[_Plan] = field(default_factory=list)
    refused: list[Event] = field(default_factory=list)


class Intake:
    """The intake chain over one Store and the route tables in force."""

    def __init__(self, store: Store, tables: routes.Tables, max_bytes: int,
                 max_segments: int = 10_000):
        self.store, self.tables = store, tables
        self.limits = reading.Limits(max_bytes, max_segments)

    def read(self, raw: bytes, envelope: Envelope) -> Read:
        """The reading stage (``gateway.reading``) with the tables in force."""
        return reading.read(raw, envelope, self.tables, self.limits)

    def accept(self, raw: bytes, envelope: Envelope) -> list[Receipt]:
        """Store ``raw`` durably and return a receipt per document in it.

        Raises DecodeError (stored as rejected), or one of REFUSALS (nothing stored;
        an audit record says so)."""
        (outcome,) = self.accept_many([(raw, envelope)])
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    def accept_many(self, items: list[tuple[bytes, Envelope]], events: list[Event] = ()) -> list:
        """Store several inputs in one transaction, with audit ``events`` besides (reads
        of patient data the transports record). Each item's outcome is its receipts or
        its GatewayError (as ``accept`` would raise it). If storing itself fails, that
        exception is raised and nothing is stored."""
        return self.commit(self.prepare(items), events)

    def prepare(self, items: list[tuple[bytes, Envelope]]) -> "Prepared":
        """The first half of ``accept_many``, which needs no store (another thread may
        run it while the store commits the batch before): read each input, route it
        and write it in its destination's format (answers, whose route depends on the
        stored request, are routed by ``commit``). A resend is written too, before dedup
        finds it (the reader thread's work, not the writer's)."""
        prepared = Prepared([None] * len(items))
        for index, (raw, envelope) in enumerate(items):
            found = self.read(raw, envelope)
            if found.refusal is not None:
                prepared.outcomes[index] = found.refusal
                prepared.refused.append(Event(_actor(found.envelope), "receive", "refused",
                                              detail=str(found.refusal)))
            else:
                prepared.plans.append(_Plan(index, raw, found, routed={
                    part: self.route(doc) for part, (_, doc) in enumerate(found.decoded)
                    if doc.kind is not Kind.TELECONSULT_ANSWER}))
        return prepared

    def commit(self, prepared: "Prepared", events: list[Event] = ()) -> list:
        """The second half of ``accept_many``: place the inputs ``prepare`` read against
        what is stored, and commit them in one transaction with ``events``."""
        outcomes, plans = list(prepared.outcomes), prepared.plans
        refused = list(events) + prepared.refused
        for attempt in range(len(plans) + 1):     # each Conflict turns a key into a duplicate
            accepted, conflicts = self._plan(plans)
            try:
                self._commit(accepted, refused + [event for _, _, event in conflicts])
                break
            except Conflict:
                if attempt == len(plans):
                    raise
                for plan in plans:
                    plan.slots.clear()
        for index, exc, _ in conflicts:
            outcomes[index] = exc
        for plan in accepted:
            outcomes[plan.index] = plan.error or [
                slot.receipt() if isinstance(slot, _New) else
                slot[0].receipt(duplicate=True) if isinstance(slot, tuple) else slot
                for slot in plan.slots]
        return outcomes

    def _plan(self, plans: list[_Plan]) -> tuple[list[_Plan], list]:
        """Each plan's documents as slots against what is stored now: the plans accepted,
        and (index, DuplicateConflict, audit event) for those refused."""
        stored = self.store.find_many([key for plan in plans for key, _ in plan.decoded])
        batch: dict[tuple[str, str], tuple[str, _New]] = {}
        accepted, conflicts = [], []
        for plan in plans:
            try:
                self._place(plan, batch, stored)
                accepted.append(plan)
            except DuplicateConflict as exc:
                conflicts.append((plan.index, exc, Event(_actor(plan.envelope), "receive",
                                                         "refused", detail=str(exc))))
        return accepted, conflicts

    def _place(self, plan: _Plan, batch: dict, stored: dict) -> None:
        """Each document of ``plan`` as a slot: new (routed and encoded), a duplicate in
        this batch, or the receipt of the stored one; raise DuplicateConflict."""
        added = {}
        for part, (key, doc) in enumerate(plan.decoded):
            plan.slots.append(self._slot(key, plan, part, doc, batch, added, stored))
        batch.update(added)          # only once the whole input is accepted

    def _slot(self, key, plan: _Plan, part: int, doc: Document, batch: dict, added: dict,
              stored: dict):
        content = plan.content
        if key in batch or key in added:
            earlier_content, earlier = batch.get(key) or added[key]
            if earlier_content != content:
                raise _conflict(key[1])
            return (earlier, "duplicate")
        existing = stored.get(key)
        if existing is not None:
            if existing["content_sha256"] != content:
                raise _conflict(key[1])
            return _receipt(existing, duplicate=True)
        new = _New(part, key[1], doc, *(plan.routed.get(part) or self.route(doc)))
        added[key] = (content, new)
        return new

    def _commit(self, plans: list[_Plan], refused: list[Event]) -> None:
        """One transaction: ids, then the rows, sealed payloads and audit records, with
        the audit records of the inputs ``refused``."""
        fresh = [p for p in plans if p.error or any(isinstance(s, _New) for s in p.slots)]
        if not fresh:
            if refused:
                self.store.record(refused)
            return

        def build(next_id) -> list[Entry]:
            for plan in fresh:
                plan.id = next_id() if plan.error else -1
                for new in _news(plan):
                    new.id = next_id()
            return [entry for plan in fresh for entry in self._entries(plan)]

        self.store.insert(build, refused, expect=sum(
            1 if plan.error else len(_news(plan)) for plan in fresh))

    def _entries(self, plan: _Plan) -> list[Entry]:
        actor = _actor(plan.envelope)
        if plan.error:
            return [Entry(plan.id, values={
                "identity": plan.envelope.identity, "control_id": None, "part": 0,
                "content_sha256": plan.content, "state": "rejected", "reason": str(plan.error),
                "raw_owner": plan.id}, path=("received", "rejected"), actor=actor, events=(Event(
                    actor, "receive", "rejected", plan.id, detail=str(plan.error)),), raw=plan.raw)]
        owner = _news(plan)[0].id
        return [_entry(plan, new, owner, actor, self.store.ring.patient(new.doc.patient.bsn))
                for new in _news(plan)]

    def route(self, doc: Document) -> tuple[routes.Route, bytes | None]:
        """The route for ``doc`` with the tables in force, and its payload in the
        destination's format (see ``reading.route``)."""
        return reading.route(doc, self.tables, self._request(doc))

    def reroute_rows(self, rows, actor: str) -> list[Receipt]:
        """Route the fallback message ``rows`` (a page of them) again, after the tables
        changed: those that now have a route move on, those that stay get the reason
        that holds now (a damaged payload stays as it is). Returns receipts for the ones
        that moved."""
        moved = []
        for row in rows:
            try:
                doc = self.stored_document(row)
            except payloads.PayloadCorrupt:
                continue
            route, out = self.route(doc)
            if route.fallback:
                if route.fallback != row["reason"]:
                    self.store.note(row["id"], actor, route.fallback, "route", set_reason=True)
                continue
            state = "ready" if route.delivery == "pull" else "outbound"
            self.store.transition(row["id"], state, actor, None, output=out,
                                  destination=route.destination, format=route.format,
                                  delivery=route.delivery)
            moved.append(Receipt(row["id"], row["zd_number"], state, route.destination))
        return moved

    def stored_document(self, row) -> Document:
        """The document a stored message row holds, decoded again and resolved with the
        tables in force."""
        raw = self.store.payload(row, "raw")
        return routes.resolve(codecs.get(codecs.sniff(raw)).decode(raw)[row["part"]], self.tables)

    def _request(self, doc: Document) -> routes.Request | None:
        """The stored request an answer replies to, if the gateway has it."""
        if doc.kind is not Kind.TELECONSULT_ANSWER or not doc.in_reply_to:
            return None
        requests = [row for row in self.store.by_zd(doc.in_reply_to)
                    if row["kind"] != str(Kind.TELECONSULT_ANSWER)]
        if not requests:
            return None
        first = requests[0]
        return routes.Request(first["sender_agb"],
                              frozenset(a for a in (first["recipient_agb"],
                                                    first["destination"]) if a))

def _actor(envelope: Envelope) -> str:
    """Who the audit log names for an input."""
    return envelope.who or f"{envelope.channel}:{envelope.identity}"


def _receipt(row, duplicate: bool = False) -> Receipt:
    """The receipt of a stored message row."""
    return Receipt(row["id"], row["zd_number"], row["state"], row["destination"], duplicate)


def _news(plan: _Plan) -> list[_New]:
    return [slot for slot in plan.slots if isinstance(slot, _New)]


def _conflict(control_id: str) -> DuplicateConflict:
    return DuplicateConflict(f"control id {control_id[:40]!r} was used before for other content",
                             where="control id")


def _entry(plan: _Plan, new: _New, owner: int, actor: str, patient: str) -> Entry:
    """The entry of a new document; the first one of an input (``owner``) carries the raw
    input, sealed to its id."""
    receipt = new.receipt()
    doc, route = new.doc, new.route
    about = {"message_id": new.id, "zd_number": doc.zd_number, "patient": patient,
             "behalf": doc.sender.agb}
    warnings = "; ".join(doc.warnings) or None
    events = [Event(actor, "receive", detail=warnings or "", **about)]
    if new.out is not None:
        events.append(Event(actor, "convert", detail=f"to {route.format}", **about))
    events.append(Event(actor, "route", "fallback" if route.fallback else "ok",
                        detail=route.fallback or route.destination, **about))
    return Entry(new.id, values={
        "identity": plan.envelope.identity, "control_id": new.control_id, "part": new.part,
        "content_sha256": plan.content, "zd_number": doc.zd_number, "kind": str(doc.kind),
        "case_zd": (doc.in_reply_to or doc.zd_number).removesuffix(ANSWER_SUFFIX),
        "sender_agb": doc.sender.agb, "recipient_agb": doc.recipient.agb,
        "in_reply_to": doc.in_reply_to, "sent_at": doc.sent_at.isoformat(), "patient": patient,
        "destination": route.destination, "format": route.format, "delivery": route.delivery,
        "state": receipt.state, "reason": route.fallback, "raw_owner": owner},
        path=("received", receipt.state), actor=actor, events=tuple(events),
        raw=plan.raw if new.id == owner else None, out=new.out, note=warnings)
