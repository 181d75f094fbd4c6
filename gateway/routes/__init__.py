"""Routing by AGB code: which destination, format and delivery a document gets.

A referral, request, supplement or cancellation goes to the institution whose
AGB code is the document's recipient; the referrer's personal AGB code must be
known to that institution, else the message goes to that institution's fallback
queue ("referrer AGB … not in the table", or "… is not linked to institution …" when
the referrer is known but not to this institution). A teleconsult answer goes back to the
requesting referrer's answer address, as MEDVRI (what GP systems read).
"""

from dataclasses import dataclass

from gateway.document import Document, Kind
from gateway.routes.tables import Institution, Referrer, TableError, Tables, load

__all__ = ["Route", "match", "load", "Tables", "Institution", "Referrer", "TableError"]

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


def match(doc: Document, tables: Tables, requester_agb: str | None = None) -> Route:
    """Route ``doc``. For an answer, ``requester_agb`` is the sender of the request it
    answers (when the gateway still has it); else the answer's recipient is used."""
    if doc.kind is Kind.TELECONSULT_ANSWER:
        return _answer_route(doc, tables, requester_agb)
    institution = tables.institutions.get(doc.recipient.agb)
    if institution is None:
        return Route(doc.recipient.agb, "", "", f"recipient AGB {doc.recipient.agb} not in the table")
    route = Route(institution.agb, institution.format, institution.delivery)
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
    if referrer is None:
        return Route(f"answers:{candidates[0]}", ANSWER_FORMAT, "",
                     f"referrer AGB {candidates[0]} for the answer not in the table")
    route = Route(f"answers:{referrer.agb}", ANSWER_FORMAT, referrer.answer_address)
    if not referrer.answer_address:
        return _fallback(route, f"referrer AGB {referrer.agb} has no answer address")
    return route


def _fallback(route: Route, reason: str) -> Route:
    return Route(route.destination, route.format, route.delivery, reason)
