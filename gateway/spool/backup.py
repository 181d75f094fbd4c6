"""Backups of a gateway, their verification, and restoring one into an empty spool.

A backup is a new folder (0700) holding:

  gateway.db       the store, copied with SQLite's online backup API in one step:
                   one read snapshot, consistent while gatewayd goes on writing
                   (in WAL mode readers do not block the writer); rows, history,
                   audit log and the sealed payloads, so it holds no plain text
  gatewayd.toml    the configuration file in use
  routes/          the route tables in use
  outbox/ACCOUNT/  SFTP outbox files an older gatewayd left on disk, not yet taken
                   into the store (sealed, as on disk; gatewayd takes them in at
                   start), copied after the snapshot; the outboxes themselves are
                   in the store
  manifest.json    format, schema version, when, counts, the audit head, and the
                   SHA-256 of every other file

The key file is not in it: with ``keys_to`` it is written to a separate file,
which must lie outside the backup folder, so that backups and keys can be kept
apart (whoever holds both can read every message).

``check`` is what ``backup verify`` and ``store verify`` report: integrity
check, the audit chain, every payload opens — on either backend. Backups and
restores are of SQLite stores; a PostgreSQL store is backed up with PostgreSQL's
own tools (``pg_dump``, or base backups with WAL archiving for point-in-time
recovery), and ``make`` refuses it with that pointer. A payload that does not open
belongs to a problem unless its message was already quarantined for it.
"""

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway import __version__, audit, keys
from gateway.errors import GatewayError
from gateway.files import sync_folder, write_durably
from gateway.keys import Keyring
from gateway.spool import db as database
from gateway.spool import payloads, schema

FORMAT = "gatewayd-backup 1"
STORE = "gateway.db"
MANIFEST = "manifest.json"


class BackupProblem(GatewayError):
    """A backup cannot be made, read or restored (one line saying why)."""

    code = "E-BACKUP"


@dataclass
class Check:
    """What verifying a store found: counts, the audit head, problems (empty: all well)."""

    messages: int = 0
    payloads: int = 0
    audit_records: int = 0
    audit_head: tuple = (0, "")
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)


def check(db: database.Database, ring: Keyring) -> Check:
    """Integrity check (SQLite's, or PostgreSQL's valid indexes), key check values, audit
    chain and every payload of the store behind ``db``."""
    found = Check()
    result = db.value(db.dialect.integrity)
    if result != "ok":
        found.problems.append(f"integrity check: {result}")
        return found
    found.messages = db.value("SELECT count(*) FROM messages")
    found.payloads = payloads.count(db)
    for key_id, sealed in db.execute("SELECT key_id, sealed FROM key_checks"):
        if not ring.fits(key_id, bytes(sealed)):
            found.problems.append(f"the key file does not hold key {key_id!r} of this store")
    if found.problems:
        return found
    found.audit_records, problem, found.audit_head = audit.verify(db, ring)
    if problem:
        found.problems.append(f"audit chain: {problem}")
    quarantined = {row[0] for row in db.execute(
        "SELECT id FROM messages WHERE state = 'fallback' AND reason LIKE 'E-PAYLOAD-CORRUPT%'")}
    for message_id, _, problem in payloads.problems(db, ring):
        if message_id in quarantined:
            found.quarantined += 1
        else:
            found.problems.append(problem)
    return found


def make(settings, config_path: Path, dest: Path, keys_to: Path | None = None) -> dict:
    """Write a backup of the gateway configured by ``settings`` into the new folder
    ``dest``; return its manifest."""
    if settings.store_url:
        raise BackupProblem("the store is in PostgreSQL: back it up with pg_dump (or base backups "
                            "with WAL archiving for point-in-time recovery), see README "
                            "'Backing up a PostgreSQL store'", code="E-BACKUP-POSTGRESQL")
    dest = Path(dest).absolute()
    if keys_to is not None and Path(keys_to).absolute().is_relative_to(dest):
        raise BackupProblem(f"{keys_to} is inside the backup; keep the key file apart from it")
    if dest.exists() and any(dest.iterdir()):
        raise BackupProblem(f"{dest} exists and is not empty")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    source = sqlite3.connect(settings.paths_spool / STORE, timeout=30)
    target = sqlite3.connect(dest / STORE)
    try:
        started = time.time()
        source.backup(target)                   # all pages in one step: one snapshot
        target.execute("PRAGMA journal_mode=DELETE")     # one self-contained file
    finally:
        source.close()
        target.close()
    os.chmod(dest / STORE, 0o600)
    write_durably(dest / "gatewayd.toml", Path(config_path).read_bytes(), 0o600)
    _copy_tree(settings.paths_routes, dest / "routes", "*.csv")
    for outbox in sorted(Path(settings.paths_sftp).glob("*/outbox")):
        _copy_tree(outbox, dest / "outbox" / outbox.parent.name, "*")
    manifest = _manifest(dest, started, keys_to)
    if keys_to is not None:
        keys.save(keys.load(settings.paths_keys), keys_to)
    for folder in [dest, *(path for path in dest.rglob("*") if path.is_dir())]:
        sync_folder(folder)
    write_durably(dest / MANIFEST, json.dumps(manifest, indent=2).encode(), 0o600)
    return manifest


def _manifest(dest: Path, started: float, keys_to: Path | None) -> dict:
    db = database.SQLite(dest / STORE, readonly=True)
    try:
        counts = {"messages": db.value("SELECT count(*) FROM messages"),
                  "payloads": payloads.count(db), "last_message_id": db.value(db.dialect.last_id)}
        head = audit.head(db)
        version = schema.version(db)
    finally:
        db.close()
    return {"format": FORMAT, "made_by": f"gatewayd {__version__}", "schema_version": version,
            "snapshot_at": started, **counts, "audit_head": list(head),
            "keys": f"written apart to {keys_to}" if keys_to else "not included",
            "files": {str(path.relative_to(dest)): _sha256(path) for path in sorted(
                dest.rglob("*")) if path.is_file()}}


def verify(src: Path, ring: Keyring) -> tuple[dict, Check]:
    """(manifest, what checking the backup in ``src`` found); raise BackupProblem when it
    is not a readable backup at all."""
    manifest = read_manifest(src)
    found = Check()
    for name, digest in manifest["files"].items():
        path = Path(src) / name
        if not path.is_file():
            found.problems.append(f"{name} is missing")
        elif _sha256(path) != digest:
            found.problems.append(f"{name} does not match its SHA-256 in the manifest")
    if found.problems:
        return manifest, found
    db = database.SQLite(Path(src) / STORE, readonly=True)
    try:
        found = check(db, ring)
    finally:
        db.close()
    for name in ("messages", "payloads"):
        if not found.problems and getattr(found, name) != manifest[name]:
            found.problems.append(f"{getattr(found, name)} {name}, the manifest says "
                                  f"{manifest[name]}")
    if not found.problems and list(found.audit_head) != manifest["audit_head"]:
        found.problems.append("the audit chain does not end where the manifest says")
    return manifest, found


def read_manifest(src: Path) -> dict:
    try:
        manifest = json.loads((Path(src) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupProblem(f"{src} is not a gatewayd backup ({MANIFEST}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupProblem(f"{src} is not a gatewayd backup (format {FORMAT!r} expected)")
    return manifest


def restore(src: Path, settings) -> None:
    """Put the store, route tables and outbox files of the backup ``src`` in place for
    ``settings``; the spool must hold no messages and no audit records. Verify first."""
    if settings.store_url:
        raise BackupProblem("the store is in PostgreSQL: restore this backup into an SQLite "
                            "spool, then copy it with gatewayctl store migrate --to URL "
                            "(a pg_dump is restored with pg_restore)",
                            code="E-BACKUP-POSTGRESQL")
    spool = Path(settings.paths_spool)
    if not empty(spool / STORE):
        raise BackupProblem(f"{spool} is not empty; restore only into an empty spool",
                            code="E-RESTORE-NOT-EMPTY")
    for suffix in ("", "-wal", "-shm"):
        (spool / (STORE + suffix)).unlink(missing_ok=True)
    spool.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{Path(src).absolute() / STORE}?mode=ro", uri=True)
    target = sqlite3.connect(spool / STORE)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=WAL")
    finally:
        source.close()
        target.close()
    os.chmod(spool / STORE, 0o600)
    sync_folder(spool)
    _copy_tree(Path(src) / "routes", settings.paths_routes, "*.csv")
    for outbox in sorted((Path(src) / "outbox").glob("*")):
        _copy_tree(outbox, Path(settings.paths_sftp) / outbox.name / "outbox", "*")


def empty(path: Path) -> bool:
    """Whether the store at ``path`` is missing or holds no messages and no audit records."""
    if not path.exists():
        return True
    db = sqlite3.connect(path, timeout=30)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        return all(db.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == 0
                   for name in ("messages", "audit") if name in tables)
    finally:
        db.close()


def _copy_tree(source: Path, target: Path, pattern: str) -> None:
    for path in sorted(Path(source).glob(pattern)):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".tmp"):
            target.mkdir(parents=True, exist_ok=True)
            write_durably(target / path.name, path.read_bytes(), 0o600)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
