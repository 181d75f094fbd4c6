"""Child process for the once-only job test: a node on the PostgreSQL store at ``url`` that
every 0.1 s takes or renews the job ``test-job`` (lease ``lease`` seconds) and, while it
holds it, records a run in the table ``job_runs`` (node, time)."""

import sys
import time
from pathlib import Path

from gateway.spool import jobs
from gateway.spool.store import Store

from tests.helpers.fakes import RING


def main(folder: str, url: str, node: str, lease: float) -> None:
    store = Store(Path(folder), time.time, RING, url=url)      # job_runs: made by the test
    mine = jobs.Jobs(store, node, time.time, lease)
    work = mine.only("test-job", lambda: store.db.execute(
        "INSERT INTO job_runs VALUES (?, ?)", (node, time.time())))
    print("ready", flush=True)
    while True:
        work()
        time.sleep(0.1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
