"""Migrates a spool into PostgreSQL in small batches, printing progress, and kills itself
with SIGKILL at the given progress line (0: never): a migration cut off half-way."""

import sys
import time
from pathlib import Path

from gateway.spool import db as database
from gateway.spool import migrate
from gateway.spool.store import Store
from tests.helpers.fakes import RING, killed_at


def main(spool: str, url: str, kill_at: int) -> None:
    progress = killed_at(kill_at)
    source = Store(Path(spool), time.time, RING)
    migrate.run(source.db, database.connect(url), RING, progress, batch_rows=7)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
