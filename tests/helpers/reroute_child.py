"""A child process for the reroute test: COUNT referrals in fallback, then the fallback
queue routed again while a heartbeat LoopingCall ticks on the reactor, and one JSON line.

``python -m tests.helpers.reroute_child FOLDER URL COUNT MODE``: the store is SQLite in
FOLDER (URL ``-``) or the PostgreSQL database at URL. MODE ``thread`` uses the daemon's
``Rerouter`` (a thread with its own connection); MODE ``reactor`` routes them again on
the reactor thread itself, as gatewayd did before, to show what the heartbeat sees then.
Prints ``{"ticks": N, "moved": M, "mode": MODE}``: the heartbeat's ticks while it ran.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

from twisted.internet import reactor, task

from gateway import inforce, keys, routes
from gateway.intake import ADMIN, Envelope, Intake
from gateway.spool.store import Store
from gateway.tablewatch import Rerouter
from tests.helpers.fakes import numbered_referral

SAMPLES = Path(__file__).resolve().parents[2] / "gateway" / "routes" / "samples"
BEAT = 0.01


def fill(store: Store, count: int) -> routes.Tables:
    """``count`` referrals stored in fallback (their referrer missing); the tables that
    route them."""
    tables = routes.load(SAMPLES)
    without = dataclasses.replace(tables, referrers={
        agb: r for agb, r in tables.referrers.items() if agb != "01234567"})
    intake = Intake(store, without, 1 << 24)
    envelope = Envelope(ADMIN, "test")
    for start in range(0, count, 500):
        intake.accept_many([(numbered_referral(i, "RR"), envelope)
                            for i in range(start, min(count, start + 500))])
    return tables


def main(folder: str, url: str, count: int, mode: str) -> None:
    ring = keys.generate()
    store = Store(Path(folder), time.time, ring, url="" if url == "-" else url)
    tables = fill(store, count)
    ticks = [0]
    heartbeat = task.LoopingCall(lambda: ticks.__setitem__(0, ticks[0] + 1))
    result = {}

    def run():
        heartbeat.start(BEAT, now=False)
        if mode == "thread":
            rerouter = Rerouter(reactor, lambda: Store(Path(folder), time.time, ring,
                                                       url="" if url == "-" else url),
                                lambda: tables, (1 << 24, 10_000))
            done = rerouter.run("test")
        else:
            done = task.deferLater(reactor, 0, lambda: inforce.reroute_all(
                Intake(store, tables, 1 << 24), "test"))

        def finish(moved):
            result.update(ticks=ticks[0], moved=len(moved), mode=mode)
            heartbeat.stop()
            reactor.stop()
        done.addCallback(finish).addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr),
                                                       reactor.stop()))
    reactor.callWhenRunning(run)
    reactor.run()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
