"""gatewayctl commands over the engine: init, submit, status, queue, fallback, routes.

Each opens the configuration (``-c`` or ``GATEWAY_CONFIG``) and calls the same
functions the daemon uses. ``--json`` prints data for scripts; without it, a
table for people. SQLite rows carry no patient data, so neither do these.
"""

import json
import os
import shutil
import time
from importlib import resources
from pathlib import Path

import datetime as dt

from gateway import audit, codecs, config, keys, operations, pki, routes
from gateway.cli.common import UsageError, actor, read_input
from gateway.errors import ConfigError, GatewayError
from gateway.routes import editing
from gateway.intake import ADMIN, Envelope, Intake
from gateway.spool import delivery
from gateway.spool.store import Store

LIST_COLUMNS = ("id", "zd_number", "kind", "state", "destination", "sender_agb", "recipient_agb",
                "reason")


class NotFound(GatewayError):
    code = "E-NOT-FOUND"


def open_config(args) -> "config.Config":
    path = args.config or os.environ.get("GATEWAY_CONFIG")
    if not path:
        raise ConfigError("no configuration: pass -c CONFIG or set GATEWAY_CONFIG "
                          "(gatewayctl init DIR writes one)", code="E-CONFIG-FILE")
    return config.load(Path(path))


def open_store(settings) -> Store:
    return Store(settings.paths_spool, time.time, keys.load(settings.paths_keys))


def open_intake(args) -> Intake:
    settings = open_config(args)
    return Intake(open_store(settings), routes.load(settings.paths_routes),
                  settings.limits_max_message_bytes, settings.limits_max_segments)


def cmd_init(args, out) -> int:
    """Write a working local setup in DIR: configuration, sample route tables, spool."""
    folder = Path(args.dir)
    target = folder / "gatewayd.toml"
    if target.exists():
        raise ConfigError(f"{target} exists already; not overwriting it", code="E-CONFIG-EXISTS")
    (folder / "routes").mkdir(parents=True, exist_ok=True)
    text = config.render(samples=True)
    if args.mllp_port:
        text = text.replace("mllp_port = 2575", f"mllp_port = {args.mllp_port}")
    if args.https_port:
        text = text.replace("https_port = 8443", f"https_port = {args.https_port}")
    if args.sftp_port:
        text = text.replace("sftp_port = 2222", f"sftp_port = {args.sftp_port}")
    if args.metrics_port:
        text = text.replace("metrics_port = 9464", f"metrics_port = {args.metrics_port}")
    target.write_text(text, encoding="utf-8")
    samples = resources.files("gateway.routes") / "samples"
    for name in ("institutions.csv", "referrers.csv"):
        with resources.as_file(samples / name) as source:
            shutil.copyfile(source, folder / "routes" / name)
    settings = config.load(target)
    if not settings.paths_keys.exists():
        keys.save(keys.generate(), settings.paths_keys)
    open_store(settings).close()
    identities = _make_tls(settings)
    made = {"config": str(target.resolve()), "routes": str(settings.paths_routes),
            "spool": str(settings.paths_spool), "keys": str(settings.paths_keys),
            "ca": str(settings.tls_ca),
            "ports": {"mllp": settings.listen_mllp_port, "https": settings.listen_https_port,
                      "sftp": settings.listen_sftp_port, "metrics": settings.listen_metrics_port},
            "identities": identities}
    out(json.dumps(made, indent=2) if args.json else
        "\n".join(f"{key:10} {value}" for key, value in made.items() if key != "identities")
        + "".join(f"\nidentity   {i['name']} ({i['kind']}): {i['cert']}" for i in identities))
    return 0


def _make_tls(settings) -> list[dict]:
    """A development CA, the server certificate and one client certificate per identity
    (common name = identity name), keys 0600, next to the configured TLS paths."""
    authority = pki.Authority()
    folder = settings.tls_ca.parent
    pki.write(folder, settings.tls_ca.stem, authority.cert, authority.key)
    cert, key = authority.issue("localhost", server=True)
    pki.write(folder, settings.tls_cert.stem, cert, key)
    pki.write_ssh_key(settings.paths_ssh_host_key)
    made = []
    for identity in settings.identities:
        cert, key = authority.issue(identity.name)
        cert_path, key_path = pki.write(folder / "clients", identity.name, cert, key)
        ssh_key = None
        if identity.ssh_key:
            public = settings.base / identity.ssh_key
            ssh_key, _ = pki.write_ssh_key(public.with_suffix(""))
        made.append({"name": identity.name, "kind": identity.kind, "agb": sorted(identity.agb),
                     "cert": str(cert_path), "key": str(key_path),
                     "sftp_user": identity.name if ssh_key else None,
                     "ssh_key": str(ssh_key) if ssh_key else None})
    return made


def cmd_submit(args, out) -> int:
    """Ingest a file as if received: as the local administrator (any AGB code), or
    ``--as`` an identity, with only that identity's mandates."""
    intake = open_intake(args)
    envelope = Envelope(ADMIN, "cli", who=actor())
    if args.identity:
        found = config.identity(open_config(args), args.identity)
        envelope = Envelope(found.name, "cli", found.agb, who=actor())
    receipts = intake.accept(read_input(args.file), envelope)
    rows = [vars(receipt) for receipt in receipts]
    out(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2) if args.json else
        _table(rows, ("id", "zd_number", "state", "destination", "duplicate")))
    return 0


def cmd_status(args, out) -> int:
    """A message's state and history, by ZD number or id."""
    store = open_intake(args).store
    rows = store.by_zd(args.key) if not args.key.isdigit() else [r for r in [store.get(int(args.key))] if r]
    if not rows and (purged := store.purged(args.key)):
        raise operations.Refused(operations.purge_text(args.key, purged), code="E-PURGED")
    if not rows:
        raise NotFound(f"no message with ZD number or id {args.key}")
    store.record([audit.about(row, actor(), "view", detail="status") for row in rows])
    data = [{**{k: row[k] for k in LIST_COLUMNS}, "history": [
        {"at": _iso(h["at"]), "state": h["state"], "actor": h["actor"], "reason": h["reason"]}
        for h in store.history(row["id"])]} for row in rows]
    if args.json:
        out(json.dumps(data, indent=2))
        return 0
    for item in data:
        out(_table([item], LIST_COLUMNS))
        out(_table(item["history"], ("at", "state", "actor", "reason")))
    return 0


def cmd_queue_ls(args, out) -> int:
    """Messages, newest first, or those in one state."""
    rows = open_intake(args).store.listing(args.state)
    data = [{k: row[k] for k in LIST_COLUMNS} for row in rows]
    out(json.dumps(data, indent=2) if args.json else _table(data, LIST_COLUMNS))
    return 0


def cmd_queue_action(args, out) -> int:
    """hold, release or retry one message by id."""
    store = open_intake(args).store
    action = {"hold": delivery.hold, "release": delivery.release, "retry": delivery.retry_now}
    action[args.queue_command](store, args.id, actor())
    row = store.get(args.id)
    out(json.dumps({"id": row["id"], "state": row["state"]}) if args.json else
        f"{row['id']}: {row['state']}")
    return 0


def cmd_resend(args, out) -> int:
    """Offer a delivered referral to its institution again."""
    return _receipt_out(args, out, operations.resend(open_intake(args), args.zd, actor()))


def cmd_cancel(args, out) -> int:
    """Cancel a referral and send the institution a cancellation."""
    intake = open_intake(args)
    settings = open_config(args)
    receipt = operations.cancel(intake, args.zd, args.reason, _now(), settings.operations_cancel_days,
                                actor())
    return _receipt_out(args, out, receipt)


def cmd_supplement(args, out) -> int:
    """Send additional information after a referral (a text file's lines, or an attachment)."""
    receipt = operations.supplement(open_intake(args), args.zd, Path(args.file).name,
                                    read_input(args.file), _now(), actor())
    return _receipt_out(args, out, receipt)


def cmd_export(args, out) -> int:
    """CSV of messages received in a period, without patient data."""
    out(operations.export(open_intake(args), args.start, args.end, actor()).rstrip("\n"))
    return 0


def cmd_stats(args, out) -> int:
    """Queue depth and oldest age per destination and state."""
    rows = operations.stats(open_intake(args), time.time())
    out(json.dumps(rows, indent=2) if args.json else
        _table(rows, ("destination", "state", "depth", "oldest_age_seconds")))
    return 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _receipt_out(args, out, receipt) -> int:
    out(json.dumps(vars(receipt), indent=2) if args.json else
        _table([vars(receipt)], ("id", "zd_number", "state", "destination")))
    return 0


def cmd_fallback_reroute(args, out) -> int:
    """Route the messages in fallback again with the tables in force."""
    moved = open_intake(args).reroute_fallback(actor())
    rows = [vars(receipt) for receipt in moved]
    out(json.dumps(rows, indent=2) if args.json else
        _table(rows, ("id", "zd_number", "state", "destination")))
    return 0


def cmd_routes_change(args, out) -> int:
    """add, rm or import: validate, apply, log what changed, re-route the fallback queue."""
    intake = open_intake(args)
    folder = open_config(args).paths_routes
    old = intake.tables
    if args.routes_command == "add":
        values = [args.agb, args.name, *args.values]
        if args.table == "institution":
            if len(args.values) != 2:
                raise UsageError("routes add institution AGB NAME FORMAT DELIVERY [--options A;B]")
            values.append(args.options or "")
        else:
            if len(args.values) != 1:
                raise UsageError("routes add referrer AGB NAME INSTITUTIONS [--answer-address sftp:X]")
            values.append(args.answer_address or "")
        new = editing.add_row(folder, args.table, values)
    elif args.routes_command == "rm":
        try:
            new = editing.remove_row(folder, args.table, args.agb)
        except KeyError:
            raise NotFound(f"no {args.table} with AGB {args.agb} in the table") from None
    else:
        source = Path(args.folder)
        new = editing.apply(folder, {name: (source / name).read_text(encoding="utf-8")
                                     for name, _ in editing.FILES.values()})
    changes = editing.describe(old, new)
    intake.store.record_route_changes(actor(), changes or ["(no change)"])
    intake.tables = new
    moved = intake.reroute_fallback(actor())
    out(json.dumps({"changes": changes, "moved": [vars(r) for r in moved]}, indent=2) if args.json
        else "\n".join(changes or ["no change"]) + f"\n{len(moved)} message(s) moved out of fallback")
    return 0


def cmd_routes_export(args, out) -> int:
    """Copy the tables in force to FOLDER."""
    source = open_config(args).paths_routes
    target = Path(args.folder)
    target.mkdir(parents=True, exist_ok=True)
    for name, _ in editing.FILES.values():
        shutil.copyfile(source / name, target / name)
    out(json.dumps({"exported": str(target)}) if args.json else f"exported to {target}")
    return 0


def cmd_routes_log(args, out) -> int:
    """Changes applied to the route tables: when, by whom, what."""
    rows = [{"at": _iso(r["at"]), "actor": r["actor"], "change": r["change"]}
            for r in open_intake(args).store.route_changes()]
    out(json.dumps(rows, indent=2) if args.json else _table(rows, ("at", "actor", "change")))
    return 0


def cmd_routes_check(args, out) -> int:
    """Load the route tables and report every problem as file:line: problem."""
    settings = open_config(args)
    tables = routes.load(settings.paths_routes)
    counts = {"institutions": len(tables.institutions), "referrers": len(tables.referrers)}
    out(json.dumps(counts) if args.json else
        f"ok: {counts['institutions']} institutions, {counts['referrers']} referrers")
    return 0


def cmd_routes_ls(args, out) -> int:
    """The route tables in force."""
    tables = routes.load(open_config(args).paths_routes)
    institutions = [{"agb": i.agb, "name": i.name, "format": i.format, "delivery": i.delivery,
                     "options": ";".join(sorted(i.options))} for i in tables.institutions.values()]
    referrers = [{"agb": r.agb, "name": r.name, "answer_address": r.answer_address,
                  "institutions": "*" if r.institutions is None else ";".join(sorted(r.institutions))}
                 for r in tables.referrers.values()]
    if args.json:
        out(json.dumps({"institutions": institutions, "referrers": referrers}, indent=2))
    else:
        out(_table(institutions, ("agb", "name", "format", "delivery", "options")))
        out("")
        out(_table(referrers, ("agb", "name", "institutions", "answer_address")))
    return 0


def cmd_routes_explain(args, out) -> int:
    """Where would this message go, and why — without storing it."""
    intake = open_intake(args)
    data = read_input(args.file)
    found = []
    for control_id, doc in codecs.get(codecs.sniff(data)).decode_messages(data):
        route, _ = intake.route(doc)
        found.append({"zd_number": doc.zd_number, "kind": str(doc.kind),
                      "sender_agb": doc.sender.agb, "recipient_agb": doc.recipient.agb,
                      "destination": route.destination, "format": route.format,
                      "delivery": route.delivery, "fallback": route.fallback})
    out(json.dumps(found[0] if len(found) == 1 else found, indent=2) if args.json else "\n".join(
        f"{f['zd_number']} ({f['kind']}): "
        + (f"FALLBACK at {f['destination']}: {f['fallback']}" if f["fallback"] else
           f"to {f['destination']} as {f['format']}, {f['delivery']}") for f in found))
    return 0


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
