"""The SFTP outboxes: messages pushed to ``sftp:ACCOUNT`` written sealed into
``<paths.sftp>/<account>/outbox/``, opened for that account only, reads audited,
files that fail their seal quarantined and written again from the store."""

import os
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from gateway import audit, keys

log = Logger(namespace="gatewayd.sftp")


EXTENSIONS = {"edifact": "edi", "hl7": "hl7", "zd-hl7": "hl7", "xml": "xml"}


def _write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` durably (temporary name, fsync, rename)."""
    temporary = target.with_suffix(target.suffix + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, target)


class Outbox:
    """The SFTP outboxes. Push delivery to ``sftp:ACCOUNT`` writes the payload sealed and
    durably (temporary name, fsync, rename) as ``outbox/<ZD number>.<format>``; a read
    opens it for that account only, and is audited. A file that fails its seal (altered,
    or not this account's message) is moved to ``<spool>/quarantine/``, reported with an
    ALERT line, never served, and its message written out again from the store."""

    def __init__(self, root: Path, store):
        self.root, self.store = root, store

    def deliver(self, row, payload: bytes) -> defer.Deferred:
        account = row["delivery"].removeprefix("sftp:")
        outbox = self.root / account / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        target = outbox / f"{row['zd_number'] or row['id']}.{EXTENSIONS.get(row['format'], 'dat')}"
        self.store.check_current()
        _write(target, self.store.ring.seal(payload, row["id"]))
        return defer.succeed(None)

    def reseal(self, path: Path) -> int:
        """Seal an outbox file again under the current key (1), or leave it (0: current
        already, or unreadable — a read quarantines that)."""
        blob = path.read_bytes()
        try:
            key_id, message_id, _ = keys.header(blob)
            if key_id == self.store.ring.current:
                return 0
            _write(path, self.store.ring.seal(self.store.ring.open(blob, message_id), message_id))
        except keys.SealBroken:
            return 0
        return 1

    def open(self, account: str, path: Path) -> bytes:
        """The plain content of an outbox file read by ``account``, the read audited; raise
        SealBroken."""
        plain, row = self.plain(account, path)
        self.pulled(account, row, path.name)
        return plain

    def plain(self, account: str, path: Path) -> tuple[bytes, object]:
        """The plain content of an outbox file for ``account`` and its message's row (not
        audited: see ``pulled``); raise SealBroken, after quarantining the file."""
        blob, row = path.read_bytes(), None
        try:
            row = self.store.get(keys.header(blob)[1])
            if row is None or row["delivery"] != f"sftp:{account}":
                raise keys.SealBroken("not a message for this account")
            return self.store.ring.open(blob, row["id"]), row
        except keys.SealBroken as exc:
            self._quarantine(account, path, row, exc)
            raise

    def pulled(self, account: str, row, file_name: str) -> None:
        """Audit that ``account`` read its outbox file ``file_name`` (one of our names)."""
        self.store.record([audit.about(row, f"sftp:{account}", "pull", detail=file_name)])

    def _quarantine(self, account: str, path: Path, row, problem: Exception) -> None:
        folder = self.store.root / "quarantine"
        folder.mkdir(exist_ok=True)
        os.replace(path, folder / f"{account}-{path.name}")
        log.critical("ALERT outbox file {name} of sftp:{account} failed its seal ({problem}): "
                     "quarantined, not served", name=path.name, account=account, problem=problem)
        if row is not None and row["delivery"] == f"sftp:{account}" and row["state"] == "delivered":
            self.store.transition(row["id"], "outbound", f"sftp:{account}",
                                  "outbox file failed its seal; written again", action="quarantine")

    def picked_up(self, account: str, file_name: str) -> None:
        """Record that ``account`` fetched and removed a file from its outbox."""
        zd_number = file_name.rsplit(".", 1)[0]
        for row in self.store.by_zd(zd_number):
            if row["delivery"] == f"sftp:{account}" and row["state"] == "delivered":
                self.store.note(row["id"], f"sftp:{account}", "pickup confirmed", "pickup")
                log.info("pickup confirmed id={id} by sftp:{account}", id=row["id"], account=account)
