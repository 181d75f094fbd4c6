"""gatewayctl commands for the store: upgrade and verify it, back it up, restore a backup.

``store upgrade`` brings an older store to the current schema (gatewayd does the
same at start; for a large spool run it first, it reports its progress);
``store verify`` checks the live store; ``backup DEST [--with-keys FILE]``
makes a consistent copy while gatewayd runs; ``backup verify SRC`` checks one;
``restore SRC`` puts one into an empty spool (see ``gateway.spool.backup``).
"""

import json
import sqlite3
import time
from pathlib import Path

from gateway import audit, keys, times
from gateway.cli.admin import config_path, open_config, open_store
from gateway.cli.common import UsageError, actor
from gateway.spool import backup, schema
from gateway.spool.store import Store


class VerifyFailed(backup.BackupProblem):
    code = "E-VERIFY"


def cmd_store_upgrade(args, out) -> int:
    """Bring the store to the current schema version, saying how it goes."""
    settings = open_config(args)
    path = settings.paths_spool / backup.STORE
    before = _version(path)
    if before == schema.VERSION:
        out(json.dumps({"version": before, "upgraded": False}) if args.json else
            f"the store is at version {before} already")
        return 0
    Store(settings.paths_spool, time.time, keys.load(settings.paths_keys),
          progress=None if args.json else out).close()     # opening it upgrades it
    out(json.dumps({"version": schema.VERSION, "upgraded": True, "from": before}) if args.json
        else f"the store is at version {schema.VERSION} now")
    return 0


def _version(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(path)
    try:
        return schema.version(db)
    finally:
        db.close()


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
