"""A second process on the same store for tests/test_workers.py: ``racing_child.py CONFIG
forward|backward START`` waits until the Unix time START, then sends the same 60 messages
as its twin in batches of 8 (its order), twice over, through its own Intake and store
connection; prints {control id: message id} as JSON, exits 1 when a batch fails or a
control id got two different receipts."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from gateway import config, keys, routes  # noqa: E402
from gateway.intake import Envelope, Intake  # noqa: E402
from gateway.spool.store import Store  # noqa: E402
from tests.helpers.fakes import numbered_referral  # noqa: E402


def main(path: str, order: str, start: float) -> int:
    settings = config.load(Path(path))
    brink = next(i for i in settings.identities if i.name == "his-brink")
    intake = Intake(Store.configured(settings, time.time, keys.load(settings.paths_keys)),
                    routes.load(settings.paths_routes), settings.limits_max_message_bytes)
    envelope = Envelope(brink.name, "mllp", brink.agb)
    data = {f"RACE-{i:06d}": numbered_referral(i, "RACE") for i in range(1, 61)}
    ids = sorted(data) if order == "forward" else sorted(data, reverse=True)
    time.sleep(max(0.0, start - time.time()))
    receipts: dict[str, set] = {}
    for _ in range(2):
        for first in range(0, len(ids), 8):
            chunk = ids[first:first + 8]
            for control_id, outcome in zip(chunk, intake.accept_many(
                    [(data[c], envelope) for c in chunk])):
                if not isinstance(outcome, list):
                    print(f"{control_id}: {outcome!r}", file=sys.stderr)
                    return 1
                receipts.setdefault(control_id, set()).add(outcome[0].id)
    if any(len(found) != 1 for found in receipts.values()):
        print(f"two receipts: {receipts}", file=sys.stderr)
        return 1
    print(json.dumps({c: found.pop() for c, found in sorted(receipts.items())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
