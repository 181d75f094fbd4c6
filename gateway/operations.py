"""Operations from practice: resend, cancel, supplement, discard, reroute, export, stats.

Each refuses with one clear line when it cannot be done. A cancellation or
supplement is a new document (same ZD number, ``in_reply_to`` the referral)
that goes through ``Intake.accept`` like any other message, as the local
administrator; the referral itself is marked cancelled. The cancel window
counts from the gateway's receipt of the referral; a referral its institution
never received is withdrawn from the spool instead (nothing is sent). ``discard``
throws junk away from fallback or held (like ``postsuper -d``), kept in the
history with its reason; ``reroute`` sends one message to another institution.
"""

import csv
import dataclasses
import datetime as dt
import io
import mimetypes

from gateway import audit, codecs, routes, times
from gateway.document import AMSTERDAM, Attachment, Document, Kind, local_time
from gateway.errors import EncodeError, GatewayError
from gateway.intake import ADMIN, Envelope, Intake, Receipt
from gateway.retention import purge_text
from gateway.spool import queries

REFERRAL_KINDS = (str(Kind.REFERRAL), str(Kind.TELECONSULT_REQUEST))
WITHDRAWABLE = ("ready", "outbound", "deferred", "held", "fallback", "expired")
EXPORT_COLUMNS = ("date", "zd_number", "kind", "sender_agb", "recipient_agb", "state",
                  "received_at", "updated_at")


class Refused(GatewayError):
    """An operation that cannot be done on this message; the message says why."""

    code = "E-REFUSED"


def referral(intake: Intake, zd_number: str):
    """The stored referral (or teleconsult request) with this ZD number; raise Refused."""
    rows = [r for r in intake.store.by_zd(zd_number) if r["kind"] in REFERRAL_KINDS]
    if not rows and (purged := intake.store.purged(zd_number)):
        raise Refused(purge_text(zd_number, purged), code="E-PURGED")
    if not rows:
        raise Refused(f"no referral with ZD number {zd_number}", code="E-NOT-FOUND")
    return rows[-1]


def resend(intake: Intake, zd_number: str, actor: str) -> Receipt:
    """Offer a referral to its institution again."""
    row = referral(intake, zd_number)
    if row["state"] == "cancelled":
        raise Refused(f"{zd_number} was cancelled on {_date(row['updated_at'])}; not resent")
    if row["destination"] != row["recipient_agb"]:
        raise Refused(f"{zd_number} was routed to institution {row['destination']}, not to its "
                      f"recipient {row['recipient_agb']}; not resent")
    if row["state"] != "delivered":
        raise Refused(f"{zd_number} is {row['state']}, not delivered; nothing to resend")
    state = "ready" if row["delivery"] == "pull" else "outbound"
    intake.store.transition(row["id"], state, actor, "resent by an administrator",
                            action="resend", next_attempt_at=None)
    return Receipt(row["id"], zd_number, state, row["destination"])


def cancel(intake: Intake, zd_number: str, reason: str, now: dt.datetime, cancel_days: int,
           actor: str) -> Receipt:
    """Withdraw a referral: check the institution takes cancellations and the referral is
    younger than ``cancel_days``; send a cancellation and mark the referral cancelled."""
    row = referral(intake, zd_number)
    if row["state"] == "cancelled":
        raise Refused(f"{zd_number} was cancelled already on {_date(row['updated_at'])}")
    if now.timestamp() - row["received_at"] > cancel_days * 86400:
        raise Refused(f"{zd_number} was received on {_date(row['received_at'])}, more than "
                      f"{cancel_days} days ago; it can no longer be cancelled")
    if row["state"] in WITHDRAWABLE and not queries.ever_delivered(intake.store.db, row["id"]):
        intake.store.transition(row["id"], "cancelled", actor,
                                f"withdrawn before its institution received it: {reason}",
                                action="cancel", next_attempt_at=None)
        return Receipt(row["id"], zd_number, "cancelled", row["destination"])
    original = _document(intake, row)
    receipt = _follow_up(intake, original, Kind.CANCELLATION, (reason,), (), now, actor)
    intake.store.transition(row["id"], "cancelled", actor, f"cancelled: {receipt.zd_number}",
                            next_attempt_at=None)
    return receipt


def supplement(intake: Intake, zd_number: str, file_name: str, data: bytes,
               now: dt.datetime, actor: str) -> Receipt:
    """Send additional information after a referral: a text file's lines, or any other
    file as an attachment."""
    row = referral(intake, zd_number)
    if row["state"] == "cancelled":
        raise Refused(f"{zd_number} was cancelled on {_date(row['updated_at'])}; no supplement")
    media_type = mimetypes.guess_type(file_name)[0] or "application/octet-stream"
    if media_type == "text/plain":
        body, attachments = tuple(data.decode("utf-8", errors="replace").splitlines()), ()
    else:
        body, attachments = (), (Attachment(file_name, media_type, data),)
    receipt = _follow_up(intake, _document(intake, row), Kind.SUPPLEMENT, body, attachments, now,
                         actor)
    intake.store.record([audit.about(row, actor, "supplement", detail=f"message {receipt.id}")])
    return receipt


def _document(intake: Intake, row) -> Document:
    return intake.stored_document(row)


def _follow_up(intake: Intake, original: Document, kind: Kind, body, attachments,
               now: dt.datetime, actor: str) -> Receipt:
    doc = dataclasses.replace(original, kind=kind, in_reply_to=original.zd_number, body=body,
                              attachments=attachments,
                              sent_at=local_time(now).replace(microsecond=0))
    route = routes.match(doc, intake.tables)
    if route.fallback:
        raise Refused(f"{original.zd_number}: {route.fallback}")
    (receipt,) = intake.accept(codecs.get("xml").encode(doc), Envelope(ADMIN, "cli", who=actor))
    return receipt


def discard(intake: Intake, message_id: int, reason: str, actor: str) -> None:
    """Throw away a message in fallback or held (junk); its row and history stay, with
    the reason, until retention purges its case."""
    row = _message(intake, message_id)
    if row["state"] not in ("fallback", "held"):
        raise Refused(f"message {message_id} is {row['state']}; only messages in fallback or "
                      "held can be discarded", code="E-STATE")
    intake.store.transition(message_id, "discarded", actor, f"discarded: {reason}",
                            action="discard", next_attempt_at=None)


def reroute(intake: Intake, message_id: int, agb: str, actor: str) -> Receipt:
    """Send one message in fallback or held to the institution ``agb`` instead, in that
    institution's format and delivery."""
    row = _message(intake, message_id)
    if row["state"] not in ("fallback", "held"):
        raise Refused(f"message {message_id} is {row['state']}; only messages in fallback or "
                      "held can be rerouted", code="E-STATE")
    institution = intake.tables.institutions.get(agb)
    if institution is None:
        raise Refused(f"institution AGB {agb} is not in the route table")
    doc = _document(intake, row)
    option = routes.REQUIRED_OPTION.get(doc.kind, (None,))[0]
    if doc.kind is Kind.TELECONSULT_ANSWER or (option and option not in institution.options):
        raise Refused(f"institution {agb} does not take a {doc.kind}")
    if doc.attachments and "attachments" not in institution.options:
        raise Refused(f"institution {agb} does not accept attachments")
    try:
        out = codecs.get(institution.format).encode(doc)
    except EncodeError as exc:
        raise Refused(f"cannot be written as {institution.format} for {agb}: {exc}") from None
    state = "ready" if institution.delivery == "pull" else "outbound"
    intake.store.transition(message_id, state, actor, f"rerouted to {agb} by an administrator",
                            action="route", output=out, destination=agb,
                            format=institution.format, delivery=institution.delivery,
                            next_attempt_at=None)
    return Receipt(message_id, row["zd_number"], state, agb)


def _message(intake: Intake, message_id: int):
    row = intake.store.get(message_id)
    if row is None:
        raise Refused(f"no message {message_id}", code="E-NOT-FOUND")
    return row


def export(intake: Intake, start: dt.date, end: dt.date, actor: str) -> str:
    """CSV of the messages received from ``start`` to ``end`` inclusive: identifiers,
    states and times only, no patient data."""
    low = dt.datetime.combine(start, dt.time(), AMSTERDAM).timestamp()
    high = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), AMSTERDAM).timestamp()
    rows = queries.received_between(intake.store.db, low, high)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    intake.store.record([audit.about(row, actor, "export", detail=f"{start} to {end}")
                         for row in rows])
    for row in rows:
        writer.writerow([_date(row["received_at"]), row["zd_number"], row["kind"], row["sender_agb"],
                         row["recipient_agb"], row["state"], times.utc(row["received_at"]),
                         times.utc(row["updated_at"])])
    return out.getvalue()


def stats(intake: Intake, now: float) -> list[dict]:
    """Queue depth and the oldest message's age (seconds) per destination and state."""
    rows = queries.stats(intake.store.db)
    return [{"destination": r["destination"], "state": r["state"], "depth": r["depth"],
             "oldest_age_seconds": round(now - r["oldest"])} for r in rows]


def _date(seconds: float) -> str:
    return times.local(seconds)[:10]
