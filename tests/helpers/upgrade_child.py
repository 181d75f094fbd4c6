"""Child process for the upgrade test: upgrades a version 1 spool a few messages per
transaction, prints each progress line, and SIGKILLs itself right after printing line
``kill_at`` (0: never) — between two transactions, or after the last one before the
payload folder is removed."""

import hashlib
import sys
from pathlib import Path

from gateway.keys import Keyring
from gateway.spool import db as database
from gateway.spool import schema, upgrade
from tests.helpers.fakes import RING, killed_at

# The keys of fixtures/spool-v1.tar.gz: the test key k1, then k2 after a rotation.
V1_RING = Keyring({**RING.keys, "k2": hashlib.sha256(b"test payload key 2").digest()}, "k2",
                  RING.audit_key)


def main(spool: str, kill_at: int, batch: int) -> None:
    progress = killed_at(kill_at)
    db = database.SQLite(Path(spool) / "gateway.db")
    schema.prepare(db)
    upgrade.run(db, V1_RING, Path(spool), progress, batch_rows=batch)
    upgrade.remove_files(Path(spool))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
