"""Routing by AGB code: which destination, format and delivery a document gets.

A referral, request, supplement or cancellation goes to the institution whose
AGB code is the document's recipient; the referrer's personal AGB code must be
known to that institution, else the message goes to that institution's fallback
queue ("referrer AGB … not in the table", or "… is not linked to institution …" when
the referrer is known but not to this institution). A teleconsult answer goes back to the
requesting referrer's answer address, as MEDVRI (what GP systems read).

``resolve`` first maps a party the sender addressed by mailbox (a UNB mailbox
number, an HL7 facility name) to its AGB code through mailboxes.csv, leaving a
note in the document's warnings; an unmapped recipient or referrer sends the
message to fallback, saying which mailbox is missing.
"""

from dataclasses import dataclass, replace

from gateway.document import Document, Kind
from gateway.routes.tables import (Institution, Mailbox, Referrer, TableError, Tables, load,
                                   mailbox_key, parse, read_texts, shown)

__all__ = ["Route", "match", "resolve", "load", "parse", "read_texts", "shown", "Tables",
           "Institution", "Referrer", "Mailbox", "TableError"]

ANSWER_FORMAT = "edifact"
REQUIRED_OPTION = {Kind.CANCELLATION: ("cancel", "cancellations"),
                   Kind.SUPPLEMENT: ("supplement", "supplements")}


@dataclass(frozen=True)
class Route:
    """Where a message goes. ``fallback`` holds the reason when it cannot go on."""

    destination: str
    format: str
    delivery: str
    fallback: str | None = None


def resolve(doc: Document, tables: Tables) -> Document:
    """``doc`` with every party known only by a mailbox that mailboxes.csv maps given its
    AGB code instead (the mapping is noted in the warnings); unmapped parties stay."""
    changes, notes = {}, []
    for role in ("sender", "recipient"):
        party = getattr(doc, role)
        found = tables.mailboxes.get(mailbox_key(party.mailbox)) if party.mailbox else None
        if found is not None and not party.agb:
            changes[role] = replace(party, agb=found.agb, mailbox="")
            notes.append(f"{role} mailbox {shown(party.mailbox)!r} is AGB {found.agb} ({found.line})")
    if not changes:
        return doc
    return replace(doc, **changes, warnings=doc.warnings + tuple(notes))


@dataclass(frozen=True)
class Request:
    """The stored request an answer replies to: who sent it, and the institution it went
    to (its recipient AGB and the destination it was routed to)."""
    sender_agb: str
    institutions: frozenset[str]


def match(doc: Document, tables: Tables, request: Request | None = None) -> Route:
    """Route ``doc`` (resolved). For an answer, ``request`` is the request it answers (when
    the gateway still has it): the answer goes back to its sender, and only the institution
    the request went to may answer it; else the answer's recipient is used."""
    if doc.kind is Kind.TELECONSULT_ANSWER:
        route = _answer_route(doc, tables, request.sender_agb if request else None)
        if request and not route.fallback and \
                not {doc.sender.agb, doc.sender.organisation_agb} & request.institutions:
            return _fallback(route, f"answer from AGB {doc.sender.agb or '-'} to a request that "
                                    f"went to institution {min(request.institutions, default='-')}")
        return route
    if not doc.recipient.agb:
        return Route(f"mailbox:{shown(doc.recipient.mailbox)}", "", "",
                     f"recipient mailbox {shown(doc.recipient.mailbox)!r} not in mailboxes.csv")
    institution = tables.institutions.get(doc.recipient.agb)
    if institution is None:
        return Route(doc.recipient.agb, "", "", f"recipient AGB {doc.recipient.agb} not in the table")
    route = Route(institution.agb, institution.format, institution.delivery)
    if not doc.sender.agb:
        return _fallback(route, f"referrer mailbox {shown(doc.sender.mailbox)!r} not in "
                                "mailboxes.csv")
    referrer = tables.referrers.get(doc.sender.agb)
    if referrer is None:
        return _fallback(route, f"referrer AGB {doc.sender.agb} not in the table")
    if not referrer.known_to(institution.agb):
        return _fallback(route, f"referrer AGB {doc.sender.agb} is not linked to institution "
                                f"{institution.agb} (its institutions in referrers.csv)")
    if doc.kind in REQUIRED_OPTION:
        option, what = REQUIRED_OPTION[doc.kind]
        if option not in institution.options:
            return _fallback(route, f"institution {institution.agb} does not accept {what}")
    if doc.attachments and "attachments" not in institution.options:
        return _fallback(route, f"institution {institution.agb} does not accept attachments")
    return route


def _answer_route(doc: Document, tables: Tables, requester_agb: str | None) -> Route:
    candidates = [a for a in (requester_agb, doc.recipient.practitioner_agb, doc.recipient.agb) if a]
    referrer = next((tables.referrers[a] for a in candidates if a in tables.referrers), None)
    if not candidates:
        return Route(f"answers:mailbox:{shown(doc.recipient.mailbox)}", ANSWER_FORMAT, "",
                     f"recipient mailbox {shown(doc.recipient.mailbox)!r} not in mailboxes.csv")
    if referrer is None:
        return Route(f"answers:{candidates[0]}", ANSWER_FORMAT, "",
                     f"referrer AGB {candidates[0]} for the answer not in the table")
    route = Route(f"answers:{referrer.agb}", ANSWER_FORMAT, referrer.answer_address)
    if not referrer.answer_address:
        return _fallback(route, f"referrer AGB {referrer.agb} has no answer address")
    return route


def _fallback(route: Route, reason: str) -> Route:
    return Route(route.destination, route.format, route.delivery, reason)
