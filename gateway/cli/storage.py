"""gatewayctl commands for the store: upgrade and verify it, back it up, restore a backup.

``store upgrade`` brings an older store to the current schema (gatewayd does the
same at start; for a large spool run it first, it reports its progress);
``store verify`` checks the live store (SQLite or PostgreSQL); ``store migrate
--to URL`` copies the SQLite store into an empty PostgreSQL database (see
``gateway.spool.migrate``); ``backup DEST [--with-keys FILE]`` makes a consistent
copy of an SQLite store while gatewayd runs; ``backup verify SRC`` checks one;
``restore SRC`` puts one into an empty spool (see ``gateway.spool.backup``).
"""

import json
import os
import time
from pathlib import Path

from gateway import audit, control, keys, times
from gateway.cli.admin import config_path, open_config, open_store
from gateway.cli.common import UsageError, actor
from gateway.spool import backup, migrate, schema
from gateway.spool import db as database
from gateway.spool.store import Store


class VerifyFailed(backup.BackupProblem):
    code = "E-VERIFY"


def cmd_store_upgrade(args, out) -> int:
    """Bring the store to the current schema version, saying how it goes."""
    settings = open_config(args)
    before = _version(settings)
    if before == schema.VERSION:
        out(json.dumps({"version": before, "upgraded": False}) if args.json else
            f"the store is at version {before} already")
        return 0
    Store.configured(settings, time.time, keys.load(settings.paths_keys),
                     progress=None if args.json else out).close()     # opening it upgrades it
    out(json.dumps({"version": schema.VERSION, "upgraded": True, "from": before}) if args.json
        else f"the store is at version {schema.VERSION} now")
    return 0


def _version(settings) -> int:
    """The schema version of the configured store (0: none yet)."""
    target = settings.store_url or settings.paths_spool / backup.STORE
    if not settings.store_url and not target.exists():
        return 0
    db = database.connect(target)
    try:
        return schema.version(db)
    finally:
        db.close()


def cmd_store_migrate(args, out) -> int:
    """Copy the SQLite store in the spool into the empty PostgreSQL database ``--to``;
    gatewayd must be stopped. Run again after an interruption: it resumes."""
    if not database.is_url(args.to):
        raise UsageError("store migrate --to takes a postgresql:// URL")
    settings = open_config(args)
    if settings.store_url:
        raise UsageError("store.url names PostgreSQL already; migrate copies the SQLite store "
                         "in paths.spool")
    held = control.lock(settings.paths_spool)        # refuses while gatewayd runs
    try:
        ring = keys.load(settings.paths_keys)
        source = Store(settings.paths_spool, time.time, ring, progress=out)   # upgraded first
        target = database.connect(args.to)
        try:
            report = migrate.run(source.db, target, ring, (lambda line: None) if args.json
                                 else out)
        finally:
            target.close()
            source.close()
        moved = Store(settings.paths_spool, time.time, ring, url=args.to)
        moved.record([audit.Event(actor(), "store-migrate", detail=f"from {settings.paths_spool} "
                                  f"({report.copied['messages']} messages)")])
        moved.close()
    finally:
        os.close(held)
    summary = {"to": database.where(args.to), "copied": report.copied,
               "audit_head": list(report.audit_head), "resumed": report.resumed,
               "unreadable": report.unreadable}
    out(json.dumps(summary, indent=2) if args.json else
        f"migrated to {database.where(args.to)}: {report.copied['messages']} messages, "
        f"{report.copied['payloads']} payloads, {report.copied['audit']} audit records; "
        f"now set store.url = \"{database.where(args.to)}\" in the configuration and start "
        "gatewayd")
    return 0


def cmd_store_verify(args, out) -> int:
    """Integrity check, audit chain and every payload of the live store."""
    settings = open_config(args)
    store = open_store(settings)
    found = backup.check(store.db, store.ring)
    return _report(args, out, {}, found, str(settings.paths_spool))


def cmd_backup(args, out) -> int:
    """``backup DEST`` makes a backup; ``backup verify SRC`` checks one."""
    if args.words[0] == "verify":
        if len(args.words) != 2:
            raise UsageError("backup verify takes one folder: backup verify SRC")
        return _verify(args, out, Path(args.words[1]))
    if len(args.words) != 1:
        raise UsageError("backup takes one folder: backup DEST (or backup verify SRC)")
    settings = open_config(args)
    keys_to = Path(args.with_keys) if args.with_keys else None
    manifest = backup.make(settings, config_path(args), Path(args.words[0]), keys_to)
    store = open_store(settings)
    store.record([audit.Event(actor(), "backup", detail=f"{manifest['messages']} messages"
                              + (", keys written apart" if keys_to else ""))])
    out(json.dumps(_summary(manifest), indent=2) if args.json else
        f"backup in {args.words[0]}: {manifest['messages']} messages, {manifest['payloads']} "
        f"payloads, audit head {manifest['audit_head'][0]}; keys {manifest['keys']}")
    return 0


def _verify(args, out, src: Path) -> int:
    ring = keys.load(Path(args.keys) if args.keys else open_config(args).paths_keys)
    manifest, found = backup.verify(src, ring)
    return _report(args, out, manifest, found, str(src))


def _report(args, out, manifest: dict, found: backup.Check, where: str) -> int:
    data = {"messages": found.messages, "payloads": found.payloads,
            "audit_records": found.audit_records, "audit_head": list(found.audit_head),
            "quarantined": found.quarantined, "problems": found.problems,
            **({"snapshot_at": manifest["snapshot_at"]} if manifest else {})}
    if found.problems:
        if args.json:
            out(json.dumps(data, indent=2))
        raise VerifyFailed(f"{where}: {len(found.problems)} problem(s), the first: "
                           f"{found.problems[0]}")
    out(json.dumps(data, indent=2) if args.json else
        f"ok: {where}: integrity check passed, audit chain intact ({found.audit_records} "
        f"records), {found.payloads} payloads of {found.messages} messages open"
        + (f" ({found.quarantined} already quarantined)" if found.quarantined else ""))
    return 0


def cmd_restore(args, out) -> int:
    """Verify the backup SRC, then put it in place in the (empty) spool in use."""
    settings = open_config(args)
    ring = keys.load(settings.paths_keys)
    src = Path(args.src)
    manifest, found = backup.verify(src, ring)
    if found.problems:
        raise VerifyFailed(f"not restored: {src}: {found.problems[0]}")
    backup.restore(src, settings)
    store = open_store(settings)
    store.record([audit.Event(actor(), "restore",
                              detail=f"backup of {times.utc(manifest['snapshot_at'])}")])
    store.close()
    out(json.dumps(_summary(manifest), indent=2) if args.json else
        f"restored {manifest['messages']} messages into {settings.paths_spool}; route tables "
        f"into {settings.paths_routes}. The backup's configuration is {src / 'gatewayd.toml'}: "
        "compare it with the one in use before starting gatewayd")
    return 0


def _summary(manifest: dict) -> dict:
    return {key: value for key, value in manifest.items() if key != "files"}
