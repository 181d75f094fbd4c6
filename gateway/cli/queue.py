"""gatewayctl's queue commands, as Postfix and Mirth hands expect them.

``queue ls`` / ``fallback ls`` (oldest first, filters, pages), ``queue
hold|release|retry`` for one id or in bulk (``--destination AGB`` or ``--all``),
``discard`` (like ``postsuper -d``, with a reason, kept in the history),
``reroute ID --to AGB``, ``fallback reroute``, ``stats`` and ``stats --ages``
(``qshape``). Text shows Dutch local times with their offset; ``--json`` shows
UTC (``Z``). Changes reach the running gatewayd at once (``gateway.cli.live``).
"""

import json
import time

from gateway import inforce, operations, times
from gateway.cli import live
from gateway.cli.admin import open_config, open_intake, table
from gateway.cli.common import UsageError, actor
from gateway.spool import delivery, queries
from gateway.spool.states import STATES

ACTIONS = {"hold": (delivery.hold, ("ready", "outbound", "deferred", "fallback")),
           "release": (delivery.release, ("held",)),
           "retry": (delivery.retry_now, ("deferred",))}
TEXT_COLUMNS = ("id", "received", "age", "state", "attempts", "next_try", "destination",
                "zd_number", "sender_agb", "reason")


def listing_filter(args, states=None) -> queries.Filter:
    """The Filter that ``--state --destination --since --until --zd --sender`` ask for."""
    chosen = states or args.state or list(queries.QUEUED)
    if "all" in chosen:
        chosen = []
    unknown = sorted(set(chosen) - set(STATES))
    if unknown:
        raise UsageError(f"unknown state(s) {', '.join(unknown)} (known: {', '.join(STATES)}, all)")
    return queries.Filter(tuple(chosen), args.destination, _moment(args.since, "--since"),
                          _moment(args.until, "--until"), args.zd, args.sender)


def _moment(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        return times.parse(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not an ISO 8601 date or time") from None


def cmd_queue_ls(args, out) -> int:
    """Messages oldest first with received time, age, attempts, next try, destination and
    reason; filtered, a page at a time."""
    intake = open_intake(args)
    fixed = ["fallback"] if args.queue_view == "fallback" else None
    rows, more = queries.listing(intake.store.db, listing_filter(args, fixed), args.limit,
                                 args.after)
    now = time.time()
    if args.json:
        out(json.dumps([_as_json(row, now) for row in rows], indent=2))
    else:
        out(table([_as_text(row, now) for row in rows], TEXT_COLUMNS))
        if more:
            out(f"(more: --after {rows[-1]['id']})")
    return 0


def _as_json(row, now: float) -> dict:
    return {"id": row["id"], "zd_number": row["zd_number"], "kind": row["kind"],
            "state": row["state"], "destination": row["destination"],
            "sender_agb": row["sender_agb"], "recipient_agb": row["recipient_agb"],
            "received_at": times.utc(row["received_at"]),
            "age_seconds": round(now - row["received_at"]), "attempts": row["attempts"],
            "next_attempt_at": times.utc(row["next_attempt_at"]), "reason": row["reason"]}


def _as_text(row, now: float) -> dict:
    return {"id": row["id"], "received": times.local(row["received_at"]),
            "age": times.age(now - row["received_at"]), "state": row["state"],
            "attempts": row["attempts"], "next_try": times.local(row["next_attempt_at"]),
            "destination": row["destination"], "zd_number": row["zd_number"],
            "sender_agb": row["sender_agb"], "reason": row["reason"]}


def cmd_queue_action(args, out) -> int:
    """hold, release or retry: one message by id, or every one at a destination (--all:
    everywhere) that is in a state the action applies to."""
    intake = open_intake(args)
    action, states = ACTIONS[args.queue_command]
    if (args.id is None) == (args.destination is None and not args.all):
        raise UsageError(f"queue {args.queue_command}: give an ID, --destination AGB or --all")
    chosen = [args.id] if args.id is not None else queries.ids(
        intake.store.db, queries.Filter(states, args.destination))
    done = []
    for message_id in chosen:
        action(intake.store, message_id, actor())
        done.append({"id": message_id, "state": intake.store.get(message_id)["state"]})
    answer = live.tell(open_config(args), "kick")
    out(json.dumps({"changed": done, "daemon": answer and answer["pid"]}, indent=2) if args.json
        else "\n".join(f"{d['id']}: {d['state']}" for d in done) + f"\n{len(done)} message(s) "
        f"{args.queue_command}{'ed' if args.queue_command != 'retry' else ' now'}; "
        f"{live.where(answer)}")
    return 0


def cmd_discard(args, out) -> int:
    """Throw away messages in fallback or held, with a reason (audited, kept in history)."""
    intake = open_intake(args)
    for message_id in args.ids:
        operations.discard(intake, message_id, args.reason, actor())
    answer = live.tell(open_config(args), "kick")
    out(json.dumps({"discarded": args.ids, "daemon": answer and answer["pid"]}) if args.json
        else f"discarded {', '.join(map(str, args.ids))}; {live.where(answer)}")
    return 0


def cmd_reroute(args, out) -> int:
    """Send one message in fallback or held to another institution."""
    receipt = operations.reroute(open_intake(args), args.id, args.to, actor())
    answer = live.tell(open_config(args), "kick")
    out(json.dumps({**vars(receipt), "daemon": answer and answer["pid"]}) if args.json else
        f"{receipt.id}: {receipt.state} at {receipt.destination}; {live.where(answer)}")
    return 0


def cmd_fallback_reroute(args, out) -> int:
    """Route the messages in fallback again with the tables in force (the running
    gatewayd's, when one runs)."""
    answer = live.tell(open_config(args), "reroute")
    if answer is not None:
        rows = answer["moved"]
    else:
        rows = [vars(receipt) for receipt in inforce.reroute_all(open_intake(args), actor())]
    out(json.dumps(rows, indent=2) if args.json else
        table(rows, ("id", "zd_number", "state", "destination")) + f"\n{live.where(answer)}")
    return 0


def cmd_stats(args, out) -> int:
    """Queue depth and oldest age per destination and state; --ages: qshape's buckets."""
    intake = open_intake(args)
    if args.ages:
        rows = queries.ages(intake.store.db, time.time(), args.destination)
        out(json.dumps(rows, indent=2) if args.json else table(
            [{"destination": r["destination"], "total": r["total"], **r["buckets"]} for r in rows],
            ("destination", "total", *queries.BUCKET_NAMES)))
        return 0
    rows = operations.stats(intake, time.time())
    out(json.dumps(rows, indent=2) if args.json else
        table(rows, ("destination", "state", "depth", "oldest_age_seconds")))
    return 0
