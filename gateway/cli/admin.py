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

from gateway import audit, codecs, config, inforce, keys, operations, pki, routes, times
from gateway.cli import live
from gateway.cli.common import UsageError, actor, read_input
from gateway.errors import ConfigError, GatewayError
from gateway.routes import editing
from gateway.intake import ADMIN, Envelope, Intake
from gateway.spool.store import Store

SETTABLE = {"institution": ("name", "format", "delivery", "options"),
            "referrer": ("name", "institutions", "answer_address")}
LIST_COLUMNS = ("id", "zd_number", "kind", "state", "destination", "sender_agb", "recipient_agb",
                "reason")


class NotFound(GatewayError):
    code = "E-NOT-FOUND"


def config_path(args) -> Path:
    """The configuration file ``-c`` or ``GATEWAY_CONFIG`` names; raise ConfigError."""
    path = args.config or os.environ.get("GATEWAY_CONFIG")
    if not path:
        raise ConfigError("no configuration: pass -c CONFIG or set GATEWAY_CONFIG "
                          "(gatewayctl init DIR writes one)", code="E-CONFIG-FILE")
    return Path(path)


def open_config(args) -> "config.Config":
    return config.load(config_path(args))


def open_store(settings) -> Store:
    return Store.configured(settings, time.time, keys.load(settings.paths_keys))


def open_intake(args) -> Intake:
    settings = open_config(args)
    store = open_store(settings)
    return Intake(store, inforce.tables_for(store, settings), settings.limits_max_message_bytes,
                  settings.limits_max_segments)


def cmd_init(args, out) -> int:
    """Write a working local setup in DIR: configuration, sample route tables, spool."""
    folder = Path(args.dir)
    target = folder / "gatewayd.toml"
    if target.exists():
        raise ConfigError(f"{target} exists already; not overwriting it", code="E-CONFIG-EXISTS")
    text = config.render(samples=True)
    if args.mllp_port:
        text = text.replace("mllp_port = 2575", f"mllp_port = {args.mllp_port}")
    if args.https_port:
        text = text.replace("https_port = 8443", f"https_port = {args.https_port}")
    if args.sftp_port:
        text = text.replace("sftp_port = 2222", f"sftp_port = {args.sftp_port}")
    if args.metrics_port:
        text = text.replace("metrics_port = 9464", f"metrics_port = {args.metrics_port}")
    config.loads_checked(text, target)          # refuses the same port twice before any file
    (folder / "routes").mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    samples = resources.files("gateway.routes") / "samples"
    for name in ("institutions.csv", "referrers.csv", "mailboxes.csv"):
        with resources.as_file(samples / name) as source:
            shutil.copyfile(source, folder / "routes" / name)
    settings = config.load(target)
    if not settings.paths_keys.exists():
        keys.save(keys.generate(), settings.paths_keys)
    open_store(settings).close()
    identities = _make_tls(settings)
    known_hosts = _known_hosts(settings)
    made = {"config": str(target.resolve()), "routes": str(settings.paths_routes),
            "known_hosts": str(known_hosts),
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


def _known_hosts(settings) -> Path:
    """``ssh/known_hosts`` with the SFTP host key, for ``sftp -o UserKnownHostsFile=…``."""
    public = settings.paths_ssh_host_key.with_name(settings.paths_ssh_host_key.name + ".pub")
    key = " ".join(public.read_text(encoding="ascii").split()[:2])
    port = settings.listen_sftp_port
    names = [settings.listen_host] + (["localhost"] if settings.listen_host == "127.0.0.1" else [])
    target = settings.paths_ssh_host_key.with_name("known_hosts")
    target.write_text(",".join(f"[{n}]:{port}" if port != 22 else n for n in names)
                      + f" {key}\n", encoding="ascii")
    return target


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
        table(rows, ("id", "zd_number", "state", "destination", "duplicate")))
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
    when = times.utc if args.json else times.local
    data = [{**{k: row[k] for k in LIST_COLUMNS}, "received_at": when(row["received_at"]),
             "history": [{"at": when(h["at"]), "state": h["state"], "actor": h["actor"],
                          "reason": h["reason"]} for h in store.history(row["id"])]}
            for row in rows]
    if args.json:
        out(json.dumps(data, indent=2))
        return 0
    for item in data:
        out(table([item], LIST_COLUMNS))
        out(table(item["history"], ("at", "state", "actor", "reason")))
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _receipt_out(args, out, receipt) -> int:
    out(json.dumps(vars(receipt), indent=2) if args.json else
        table([vars(receipt)], ("id", "zd_number", "state", "destination")))
    return 0


def cmd_routes_change(args, out) -> int:
    """add, set, rm or import: validate, apply to the files, put them in force in the store
    with what changed (recorded once, here); the running gatewayd takes them at once and
    routes its fallback queue again (without one, we do); other nodes take them from the
    store within seconds."""
    settings = open_config(args)
    store = open_store(settings)
    inforce.begin(store, settings, lambda line: None, actor())   # a store without tables: seeded
    _edit(args, settings.paths_routes)
    published = inforce.publish(store, inforce.route_texts(settings.paths_routes), actor(),
                                say_unchanged=True)
    changes = published.route_changes
    answer = live.reload_parts(settings, ["routes"], reroute=bool(changes))
    if answer is None:
        intake = Intake(store, inforce.load(store.db).tables, settings.limits_max_message_bytes,
                        settings.limits_max_segments)
        moved = len(inforce.reroute_all(intake, actor())) if changes else 0
    else:
        moved = answer["moved"]
    out(json.dumps({"changes": changes, "moved": moved, "daemon": answer and answer["pid"]},
                   indent=2) if args.json else "\n".join(changes or ["no change"])
        + f"\n{moved} message(s) moved out of fallback\n{live.where(answer)}")
    return 0


def _edit(args, folder: Path):
    """The change ``args`` ask for, applied to the files; the new tables."""
    if args.routes_command == "import":
        source = Path(args.folder)
        return editing.apply(folder, {name: (source / name).read_text(encoding="utf-8-sig")
                                      for name, _ in editing.FILES.values()})
    try:
        if args.routes_command == "rm":
            return editing.remove_row(folder, args.table, args.agb)
        if args.routes_command == "set":
            changes = {column: getattr(args, column) for column in SETTABLE[args.table]
                       if getattr(args, column) is not None}
            if not changes:
                raise UsageError(f"routes set {args.table} AGB: give at least one of "
                                 + ", ".join(f"--{c.replace('_', '-')}" for c in SETTABLE[args.table]))
            return editing.set_row(folder, args.table, args.agb, changes)
    except KeyError:
        raise NotFound(f"no {args.table} with AGB {args.agb} in the table") from None
    values = [args.agb, args.name, *args.values]
    if args.table == "institution":
        if len(args.values) != 2:
            raise UsageError("routes add institution AGB NAME FORMAT DELIVERY [--options A;B]")
        values.append(args.options or "")
    else:
        if len(args.values) != 1:
            raise UsageError("routes add referrer AGB NAME INSTITUTIONS [--answer-address sftp:X]")
        values.append(args.answer_address or "")
    return editing.add_row(folder, args.table, values)


def cmd_routes_export(args, out) -> int:
    """Copy the tables in force to FOLDER: on PostgreSQL the store's (the files' while it has
    none yet), on SQLite the files (as always)."""
    settings = open_config(args)
    texts = inforce.load(open_store(settings).db).texts if settings.store_url else {}
    target = Path(args.folder)
    target.mkdir(parents=True, exist_ok=True)
    for name, _ in editing.FILES.values():
        if texts.get(name) is None:
            shutil.copyfile(settings.paths_routes / name, target / name)
        else:
            (target / name).write_text(texts[name], encoding="utf-8")
    out(json.dumps({"exported": str(target)}) if args.json else f"exported to {target}")
    return 0


def cmd_routes_log(args, out) -> int:
    """Changes applied to the route tables: when, by whom, what."""
    when = times.utc if args.json else times.local
    rows = [{"at": when(r["at"]), "actor": r["actor"], "change": r["change"]}
            for r in open_intake(args).store.route_changes()]
    out(json.dumps(rows, indent=2) if args.json else table(rows, ("at", "actor", "change")))
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
    """The route tables in force: the running gatewayd's, else the files'."""
    settings = open_config(args)
    answer = live.tell(settings, "tables")
    data = {k: answer[k] for k in ("institutions", "referrers")} if answer else \
        editing.as_data(inforce.tables_for(open_store(settings), settings) if settings.store_url
                        else routes.load(settings.paths_routes))
    source = f"in force in gatewayd pid {answer['pid']}" if answer else \
        f"from {settings.paths_routes} (no gatewayd running)" if not settings.store_url else \
        "in force in the store (no gatewayd running here)"
    if args.json:
        out(json.dumps({**data, "source": source}, indent=2))
    else:
        out(f"# route tables {source}")
        out(table(data["institutions"], ("agb", "name", "format", "delivery", "options")))
        out("")
        out(table(data["referrers"], ("agb", "name", "institutions", "answer_address")))
    return 0


def cmd_routes_explain(args, out) -> int:
    """Where would this message go, and why — without storing it."""
    intake = open_intake(args)
    data = read_input(args.file)
    found = []
    for control_id, doc in codecs.get(codecs.sniff(data)).decode_messages(data):
        doc = routes.resolve(doc, intake.tables)
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


def table(rows: list[dict], columns: tuple[str, ...]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
