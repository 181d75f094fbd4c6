"""/metrics text: what a sender writes never becomes a label."""

import time
from pathlib import Path

from gateway import routes
from gateway.intake import Intake
from gateway.metrics import Metrics
from gateway.reading import Envelope
from gateway.spool.store import Store
from tests.helpers.fakes import RING

ROOT = Path(__file__).parent.parent


def test_an_unmapped_mailbox_is_unrouted_in_the_labels(tmp_path):
    """A message whose recipient is a facility name nobody mapped (with quotes and braces in
    it) waits in fallback; /metrics counts it under destination="unrouted" and the text
    stays valid exposition format."""
    intake = Intake(Store(tmp_path, time.time, RING),
                    routes.load(ROOT / "gateway" / "routes" / "samples"), 1 << 24)
    hostile = 'Evil"} 7 \\\\ x{y="'
    raw = (ROOT / "fixtures" / "hl7" / "referral-lf.hl7").read_bytes()
    head, rest = raw.split(b"\n", 1)
    fields = head.split(b"|")
    fields[5] = hostile.encode()
    fields[4] = b""
    (receipt,) = intake.accept(b"|".join(fields) + b"\n" + rest.replace(
        b"PRD|RT", b"PRD|XX"), Envelope("admin", "test"))
    assert receipt.state == "fallback" and "mailbox:" in receipt.destination
    text = Metrics(intake, time.time).render()
    assert 'gatewayd_queue_depth{destination="unrouted",state="fallback"} 1' in text
    assert "Evil" not in text
    for line in text.splitlines():
        assert line.startswith("#") or line.count('"') % 2 == 0, line
