"""Migrates a spool into PostgreSQL in small batches, printing progress, and kills itself
with SIGKILL at the given progress line (0: never): a migration cut off half-way."""

import os
import signal
import sys
import time
from pathlib import Path

from gateway.spool import db as database
from gateway.spool import migrate
from gateway.spool.store import Store
from tests.helpers.fakes import RING


def main(spool: str, url: str, kill_at: int) -> None:
    lines = 0

    def progress(line: str) -> None:
        nonlocal lines
        lines += 1
        print(line, flush=True)
        if lines == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    source = Store(Path(spool), time.time, RING)
    migrate.run(source.db, database.connect(url), RING, progress, batch_rows=7)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
