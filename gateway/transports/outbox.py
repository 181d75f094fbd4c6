"""The SFTP outboxes, served from the store: what an account sees in ``outbox/``, what a
read opens, what a delete confirms — the same on every node of one database.

A push to ``sftp:ACCOUNT`` lists the message in the account's outbox
(``gateway.spool.outboxes``: a row naming the file; its content is the message's
sealed ``out`` payload, no copy on disk). A listing shows each file with the size
it opens to; a read opens the payload for that account only, and is audited (with
the next group commit in the daemon); a delete marks the file picked up for every
node at once. A payload that does not open is never served: an ALERT line, and the
message goes back to delivery, which quarantines it in fallback.

Outbox files an older gatewayd wrote to this node's disk (``<paths.sftp>/<account>/
outbox/``) are taken into the store once, at start (``import_files``): each file
that opens as its account's message is listed under its old name (or a free one)
and removed; one that does not is moved to ``<spool>/quarantine/`` with an ALERT
line, as before.
"""

import os
import re
import stat
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from gateway import audit, keys
from gateway.spool import outboxes, payloads

log = Logger(namespace="gatewayd.sftp")

EXTENSIONS = {"edifact": "edi", "hl7": "hl7", "zd-hl7": "hl7", "xml": "xml"}
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def _write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` durably (temporary name, fsync, rename)."""
    temporary = target.with_suffix(target.suffix + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, target)


def attrs(found) -> dict:
    """SFTP attributes of a listed outbox file (a row of ``outboxes.files``)."""
    when = int(found["listed_at"])
    return {"size": found["size"], "uid": 0, "gid": 0,
            "permissions": stat.S_IFREG | 0o600, "atime": when, "mtime": when}


class Outbox:
    """The SFTP outboxes of ``store``; ``record`` commits audit events (the daemon's group
    commit; by default a transaction of their own)."""

    def __init__(self, root: Path, store, record=None):
        self.root, self.store = Path(root), store
        self.record = record or (lambda events: defer.maybeDeferred(store.record, events))

    def deliver(self, row, payload: bytes) -> defer.Deferred:
        """List the message in its account's outbox (its content: the stored ``out``
        payload, which ``payload`` is)."""
        account = row["delivery"].removeprefix("sftp:")
        base = row["zd_number"] if PLAIN_NAME.fullmatch(row["zd_number"] or "") else str(row["id"])
        outboxes.add(self.store.db, account, row["id"], len(payload), base,
                     EXTENSIONS.get(row["format"], "dat"), self.store.clock())
        return defer.succeed(None)

    def files(self, account: str, after: str | None, limit: int) -> list[tuple[str, dict]]:
        """(name, attributes) of ``account``'s files after the name ``after``, in order."""
        return [(found["file_name"], attrs(found))
                for found in outboxes.files(self.store.db, account, after, limit)]

    def find(self, account: str, file_name: str):
        """The listed file ``file_name`` of ``account`` (see ``outboxes.files``), or None."""
        return outboxes.find(self.store.db, account, file_name)

    def plain(self, account: str, file_name: str) -> tuple[bytes, object]:
        """The plain content of an outbox file for ``account`` and its message's row (not
        audited: see ``pulled``); raise SealBroken when it is not there or does not open."""
        found = self.find(account, file_name)
        row = found and self.store.get(found["message_id"])
        if row is None or row["delivery"] != f"sftp:{account}":
            raise keys.SealBroken("not a message for this account")
        try:
            return self.store.payload(row, "out"), row
        except payloads.PayloadCorrupt as exc:
            self._broken(account, file_name, row, exc)
            raise keys.SealBroken(str(exc)) from None

    def open(self, account: str, file_name: str) -> bytes:
        """The plain content of an outbox file read by ``account``, the read audited."""
        plain, row = self.plain(account, file_name)
        self.pulled(account, row, file_name)
        return plain

    def pulled(self, account: str, row, file_name: str) -> defer.Deferred:
        """Audit that ``account`` read its outbox file ``file_name`` (one of our names)."""
        return self.audit([audit.about(row, f"sftp:{account}", "pull", detail=file_name)])

    def audit(self, events: list) -> defer.Deferred:
        """Commit ``events`` with ``record``; a failure is one log line."""
        def failed(failure):
            log.error("SFTP audit record not stored: {error}", error=failure.getErrorMessage())
        return self.record(events).addErrback(failed)

    def picked_up(self, account: str, file_name: str):
        """Record that ``account`` removed ``file_name`` from its outbox (a pickup, seen by
        every node at once); its message's row, or None when no such file is listed."""
        row = self.store.picked_up(account, file_name)
        if row is not None:
            log.info("pickup confirmed id={id} by sftp:{account}", id=row["id"], account=account)
        return row

    def _broken(self, account: str, file_name: str, row, problem: Exception) -> None:
        """An ALERT line; the message back to delivery, which quarantines it in fallback."""
        log.critical("ALERT outbox file {name} of sftp:{account} does not open ({problem}): "
                     "not served", name=file_name, account=account, problem=problem)
        if row["state"] == "delivered":
            self.store.transition(row["id"], "outbound", f"sftp:{account}",
                                  "outbox file does not open; delivered again",
                                  action="quarantine")

    def import_files(self) -> int:
        """Take the outbox files an older gatewayd left on this node's disk into the store
        (see the module's docstring); how many were listed."""
        listed = 0
        for path in sorted(self.root.glob("*/outbox/*")):
            if not path.is_file():
                continue
            if path.suffix == ".tmp":                    # a write cut off by a crash
                path.unlink()
                continue
            account = path.parent.parent.name
            try:
                row, size = self._legacy(account, path)
            except (keys.SealBroken, payloads.PayloadCorrupt) as exc:
                self._quarantine(account, path, exc)
                continue
            outboxes.add(self.store.db, account, row["id"], size, path.stem,
                         path.suffix[1:] or "dat", path.stat().st_mtime, again=False)
            path.unlink()
            listed += 1
        if listed:
            log.info("{count} SFTP outbox file(s) from disk taken into the store", count=listed)
        return listed

    def _legacy(self, account: str, path: Path) -> tuple[object, int]:
        """The message row of an old outbox file, which must open as that account's
        message, and the size of its stored output, which must open too; raise SealBroken
        or PayloadCorrupt."""
        blob = path.read_bytes()
        row = self.store.get(keys.header(blob)[1])
        if row is None or row["delivery"] != f"sftp:{account}":
            raise keys.SealBroken("not a message for this account")
        self.store.ring.open(blob, row["id"])
        return row, len(self.store.payload(row, "out"))

    def reseal(self, path: Path) -> int:
        """Seal an old outbox file (not yet taken into the store) again under the current
        key (1), or leave it (0: current already, or unreadable)."""
        blob = path.read_bytes()
        try:
            key_id, message_id, _ = keys.header(blob)
            if key_id == self.store.ring.current:
                return 0
            _write(path, self.store.ring.seal(self.store.ring.open(blob, message_id), message_id))
        except keys.SealBroken:
            return 0
        return 1

    def _quarantine(self, account: str, path: Path, problem: Exception) -> None:
        folder = self.store.root / "quarantine"
        folder.mkdir(exist_ok=True)
        os.replace(path, folder / f"{account}-{path.name}")
        log.critical("ALERT outbox file {name} of sftp:{account} failed its seal ({problem}): "
                     "quarantined, not served", name=path.name, account=account, problem=problem)
