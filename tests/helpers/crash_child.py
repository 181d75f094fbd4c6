"""Child process for the crash test: ingests numbered HL7 referrals through
Intake.accept and prints ``ack <control id>`` after each receipt, resending from
``start`` (so some are duplicates). With ``--ack-early`` it prints the ack before
storing: the deliberately broken variant the checker must catch."""

import sys
import time
from pathlib import Path

from gateway import routes
from gateway.intake import ADMIN, Envelope, Intake
from gateway.spool.store import Store

from tests.helpers.fakes import RING, ROOT, numbered_referral


def message(index: int) -> tuple[str, bytes]:
    return f"CRASH-{index:06d}", numbered_referral(index, "CRASH", 700_000_000)


def main(spool: str, start: int, count: int, early: bool) -> None:
    intake = Intake(Store(Path(spool), time.time, RING), routes.load(ROOT / "gateway" / "routes" / "samples"),
                    16 * 1024 * 1024)
    print("ready", flush=True)
    for index in range(start, start + count):
        control_id, data = message(index)
        if early:
            print(f"ack {control_id}", flush=True)
        intake.accept(data, Envelope(ADMIN, "test"))
        if not early:
            print(f"ack {control_id}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "--ack-early" in sys.argv)
