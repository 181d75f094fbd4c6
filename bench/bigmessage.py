"""Peak memory of one large message through the intake: how many copies of it are held.

An HL7 teleconsult request with a random PDF-sized attachment (OBX ED, Base64),
just under the 16 MiB cap (``limits.max_message_bytes``), goes through
``intake.accept`` (decode, route, encode as ZorgDomein XML, seal, store) in a
fresh process; the process's
peak RSS (VmHWM) before and after is printed in MB and in copies of the message.
The same runs with sealing in one piece (``payloads.STREAM_ABOVE`` raised above
the message size), the way a part would be sealed and bound whole, as the
baseline of the same run; and again reading it back (``store.payload``).

Run: ``.venv/bin/python bench/bigmessage.py [--mb 15.9]``.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "fixtures" / "hl7" / "teleconsult-request.hl7"


def peak_mb() -> float:
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM"))) / 1024


def child(size_mb: float, streamed: bool, read_back: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from gateway import routes
    from gateway.intake import Envelope, Intake
    from gateway.spool import payloads
    from gateway.spool.store import Store
    from tests.helpers.fakes import RING
    template = TEMPLATE.read_bytes()
    start = template.index(b"^Base64^") + len(b"^Base64^")
    end = template.index(b"|", start)
    data = base64.b64encode(os.urandom(int(size_mb * 1e6 * 3 / 4) - len(template)))
    message = template[:start] + data + template[end:]
    del data
    if not streamed:
        payloads.STREAM_ABOVE = 1 << 40
    with tempfile.TemporaryDirectory() as folder:
        intake = Intake(Store(Path(folder), time.time, RING),
                        routes.load(ROOT / "gateway" / "routes" / "samples"), 16 * 1024 * 1024)
        before = peak_mb()
        (receipt,) = intake.accept(message, Envelope("bench", "bench"))
        stored = peak_mb()
        if read_back:
            message = None
            intake.store.payload(intake.store.get(receipt.id), "out")
        print(json.dumps({"size_mb": len(message or b"") / 1e6 or size_mb, "before": before,
                          "stored": stored, "after": peak_mb()}))


def run(size_mb: float, streamed: bool, read_back: bool = False) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", str(size_mb),
                             "streamed" if streamed else "whole",
                             "read" if read_back else "store"],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=16.7, help="message size in MB")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(float(args.child[0]), args.child[1] == "streamed", args.child[2] == "read")
        return
    print(f"one {args.mb:g} MB HL7 message with an attachment through intake.accept to XML "
          "(peak RSS above the process with the message built)")
    for label, streamed in (("sealed in 1 MB pieces", True), ("sealed whole (baseline)", False)):
        found = run(args.mb, streamed)
        grew = found["stored"] - found["before"]
        print(f"  {label:24} +{grew:6.1f} MB = {grew / args.mb:4.1f} copies of the message")
    found = run(args.mb, True, read_back=True)
    grew = found["after"] - found["stored"]
    print(f"  reading its converted part back: +{grew:6.1f} MB beyond the intake's peak")


if __name__ == "__main__":
    main()
