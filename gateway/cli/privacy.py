"""gatewayctl commands for the privacy officer and the operator: keys, purge, audit, show.

``keys init|rotate|retire`` manage the key file (``rotate --reencrypt`` also seals
every stored payload and outbox file again under the new key; ``retire`` drops a
key no stored payload or outbox file uses any more); ``purge`` enforces the
retention rules (``--dry-run`` only shows, ``--as-of`` looks at another date);
``audit verify|query`` check the hash chain and answer "who saw this patient's
data, when"; ``show`` prints a stored message (audited: it is a view of patient
data; HL7 a segment a line in a terminal, ``--raw`` as stored). Key changes reach
the running gatewayd at once; ``keys retire`` refuses the key it still seals with.
"""

import json
import sys

from gateway import audit, keys, retention
from gateway.cli import live
from gateway.cli.admin import NotFound, table, open_config, open_store
from gateway.cli.common import UsageError, actor
from gateway.errors import ConfigError, GatewayError
from gateway.spool import queries
from gateway.transports.sftp import Outbox

AUDIT_COLUMNS = ("seq", "at", "who", "behalf", "action", "message_id", "zd_number", "result",
                 "detail")


class ChainBroken(GatewayError):
    code = "E-AUDIT-CHAIN"


class KeyInUse(GatewayError):
    code = "E-KEYS-IN-USE"


def cmd_keys_init(args, out) -> int:
    """Create the key file (0600) with a payload key and the audit key."""
    settings = open_config(args)
    path = settings.paths_keys
    if path.exists():
        raise ConfigError(f"{path} exists already; not overwriting it (keys rotate adds a key)",
                          code="E-KEYS-EXIST")
    ring = keys.generate()
    keys.save(ring, path)
    store = open_store(settings)
    store.record([audit.Event(actor(), "keys-init", detail=f"current key {ring.current}")])
    out(json.dumps({"keys": str(path), "current": ring.current}) if args.json else
        f"wrote {path} (current key {ring.current})")
    return 0


def cmd_keys_rotate(args, out) -> int:
    """Add a new payload key for new payloads; with --reencrypt, seal every stored payload
    and outbox file again."""
    settings = open_config(args)
    store = open_store(settings)
    ring = keys.rotated(store.ring)
    keys.save(ring, settings.paths_keys)
    store.ring = ring
    store.check_keys()                     # registers the new key's check value
    parts, files = reencrypt(store, settings) if args.reencrypt else (0, 0)
    store.record([audit.Event(actor(), "keys-rotate", detail=f"current key {ring.current}, "
                              f"{parts} payloads and {files} outbox files re-encrypted")])
    answer = live.reload_parts(settings, ["keys"])
    out(json.dumps({"current": ring.current, "reencrypted_payloads": parts,
                    "reencrypted_outbox_files": files, "daemon": answer and answer["pid"]})
        if args.json else f"current key {ring.current}; {parts} payload(s) and {files} outbox "
        f"file(s) re-encrypted; {live.where(answer)}")
    return 0


def reencrypt(store, settings) -> tuple[int, int]:
    """Seal every stored payload and outbox file again under the current key, then give
    the space of the old ciphertexts back; (payloads, outbox files) resealed. A payload
    that does not open is left as it is: delivery quarantines it when it is due."""
    parts, _ = store.reseal()
    store.reclaim()
    outbox = Outbox(settings.paths_sftp, store)
    return parts, sum(outbox.reseal(path) for path in settings.paths_sftp.glob("*/outbox/*"))


def cmd_keys_retire(args, out) -> int:
    """Remove a payload key from the key file once no stored file is sealed with it."""
    settings = open_config(args)
    store = open_store(settings)
    if args.key not in store.ring.keys:
        raise NotFound(f"no key {args.key!r} in {settings.paths_keys}")
    if args.key == store.ring.current:
        raise UsageError(f"{args.key} is the current key; keys rotate first")
    running = live.tell(settings, "status")
    if running and running["current_key"] == args.key:
        raise KeyInUse(f"the running gatewayd (pid {running['pid']}) still seals with key "
                       f"{args.key}; gatewayctl reload (or systemctl reload gatewayd) first")
    users = store.sealed_keys().get(args.key, 0) + sum(
        1 for path in settings.paths_sftp.glob("*/outbox/*")
        if (keys.file_header(path) or ("",))[0] == args.key)
    if users:
        raise KeyInUse(f"{users} stored payload(s) are sealed with key {args.key}; "
                       "keys rotate --reencrypt first")
    store.forget_key(args.key, actor())      # first: a crash before the save leaves both usable
    keys.save(keys.without(store.ring, args.key), settings.paths_keys)
    answer = live.reload_parts(settings, ["keys"])
    out(json.dumps({"retired": args.key, "daemon": answer and answer["pid"]}) if args.json else
        f"retired key {args.key}; {live.where(answer)}")
    return 0


def cmd_purge(args, out) -> int:
    """Purge what the retention rules no longer allow to keep (or show it)."""
    settings = open_config(args)
    store = open_store(settings)
    if args.dry_run:
        return _purge_preview(store, settings, args, out)
    report = retention.purge(store, settings, retention.as_of(args.as_of))
    data = {"dry_run": False, **retention.describe(report)}
    if args.json:
        out(json.dumps(data, indent=2))
    else:
        out(f"purged {data['messages']} message(s) of {len(data['zd_numbers'])} ZD number(s)"
            + "".join(f"\n  {rule}: {count}" for rule, count in data["by_rule"].items())
            + f"\nremoved {data['payloads_removed']} payload(s), {data['files_removed']} "
              f"outbox file(s), {data['audit_records_removed']} audit record(s)")
    return 0


def _purge_preview(store, settings, args, out) -> int:
    """What a purge would remove, case by case, and a warning for messages their
    institution never picked up."""
    report = retention.purge(store, settings, retention.as_of(args.as_of), dry_run=True)
    data = {"dry_run": True, **retention.describe(report)}
    waiting = queries.never_pulled(store.db, [g.key for g in report.groups
                                              if not g.key.startswith("#")])
    data["never_pulled"] = [{"id": r["id"], "zd_number": r["zd_number"], "state": r["state"],
                             "destination": r["destination"]} for r in waiting]
    if args.json:
        out(json.dumps(data, indent=2))
        return 0
    out(f"would purge {data['messages']} message(s) of {len(data['zd_numbers'])} ZD number(s)"
        + "".join(f"\n  {rule}: {count}" for rule, count in data["by_rule"].items()))
    out(table([{"case": g.key, "rule": g.rule, "messages": g.messages} for g in report.groups],
              ("case", "rule", "messages")))
    for row in data["never_pulled"]:
        out(f"WARNING: message {row['id']} ({row['zd_number']}) is {row['state']} at "
            f"{row['destination']}: its institution never picked it up")
    return 0


def cmd_audit_verify(args, out) -> int:
    """Check the audit chain; name the first edited, removed or reordered record."""
    store = open_store(open_config(args))
    checked, problem, (seq, head) = audit.verify(store.db, store.ring)
    if problem:
        raise ChainBroken(f"{problem} ({checked} records before it are intact)")
    out(json.dumps({"records": checked, "head_seq": seq, "head_hash": head}) if args.json else
        f"ok: {checked} records, chain intact; head {seq} {head}")
    return 0


def cmd_audit_query(args, out) -> int:
    """Who touched this patient's (or ZD number's) data, or what did this actor do, when."""
    if not (args.zd or args.patient or args.who):
        raise UsageError("give --zd ZD, --patient BSN or --who ACTOR")
    store = open_store(open_config(args))
    patient = store.ring.patient(args.patient) if args.patient else None
    rows = audit.query(store.db, args.zd, patient, args.who, retention.as_of(args.start)
                       if args.start else None, retention.as_of(args.end) if args.end else None)
    store.record([audit.Event(actor(), "audit-query", detail=_question(args))])
    out(json.dumps(rows, indent=2) if args.json else table(rows, AUDIT_COLUMNS))
    return 0


def _question(args) -> str:
    """The query asked, for its own audit record (a patient is named by hash only)."""
    asked = {"zd": args.zd, "patient": "(hash)" if args.patient else None, "who": args.who,
             "from": args.start and str(args.start), "to": args.end and str(args.end)}
    return " ".join(f"{k}={v}" for k, v in asked.items() if v)


def cmd_show(args, out) -> int:
    """Print a stored message's received (or converted) content; audited."""
    store = open_store(open_config(args))
    row = store.get(args.id)
    if row is None:
        raise NotFound(f"no message {args.id} (purged messages are gone)")
    which = "out" if args.converted else "raw"
    if which == "out" and not store.has_output(row["id"]):
        raise NotFound(f"message {args.id} has no converted content (state {row['state']})")
    data = store.payload(row, which)
    store.record([audit.about(row, actor(), "view", detail=f"show {which}")])
    if not args.raw and sys.stdout.isatty() and data.lstrip()[:3] == b"MSH":
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n") + b"\n"
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0

