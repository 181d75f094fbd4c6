"""gatewayctl commands for the store.

``store upgrade`` brings an older store to the current schema (gatewayd does the
same at start; for a large spool run it first, it reports its progress).
"""

import json
import sqlite3
import time
from pathlib import Path

from gateway import keys
from gateway.cli.admin import open_config
from gateway.spool import schema
from gateway.spool.store import Store


def cmd_store_upgrade(args, out) -> int:
    """Bring the store to the current schema version, saying how it goes."""
    settings = open_config(args)
    path = settings.paths_spool / "gateway.db"
    before = _version(path)
    if before == schema.VERSION:
        out(json.dumps({"version": before, "upgraded": False}) if args.json else
            f"the store is at version {before} already")
        return 0
    Store(settings.paths_spool, time.time, keys.load(settings.paths_keys),
          progress=None if args.json else out).close()
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
