"""Push deliveries on a fake clock: backoff, lifetime to fallback with an alert,
in-flight limits per destination, hold, release and retry; damaged payloads never sent."""

import pytest
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway import config, routes
from gateway.errors import DeliveryError
from gateway.intake import Envelope, Intake
from gateway.spool import delivery, payloads
from gateway.spool.store import StateError, Store
from tests.helpers.fakes import RING, PendingDestination, numbered_referral, write_tables

DAY = 86400


def message(index: int) -> bytes:
    return numbered_referral(index, "PUSH")


class Down:
    """A destination that refuses every delivery."""

    def deliver(self, row, payload):
        return defer.fail(DeliveryError("connection refused", code="E-DELIVERY-CONNECT"))


def make_setup(tmp_path, backend=None):
    """(clock, store, intake, settings): a store pushing over MLLP, on a clock."""
    folder = write_tables(tmp_path / "routes", "06005678,Eemland,hl7,mllp://127.0.0.1:2575,\n",
                          "01234567,V,*,\n")
    clock = task.Clock()
    clock.advance(1_800_000_000)
    store = backend.store(tmp_path / "spool", clock.seconds, RING) if backend else \
        Store(tmp_path / "spool", clock.seconds, RING)
    intake = Intake(store, routes.load(folder), 1 << 24)
    return clock, store, intake, config.defaults(tmp_path)


@pytest.fixture
def setup(tmp_path, backend):
    """A store pushing over MLLP, on a clock, on each backend in turn."""
    return make_setup(tmp_path, backend)


def test_backoff_doubles_to_the_maximum():
    """Gaps start at the first retry time and double up to the maximum."""
    assert [delivery.backoff(n, 300, 3600) for n in range(1, 8)] == \
        [300, 600, 1200, 2400, 3600, 3600, 3600]


def test_destination_down_for_days_goes_to_fallback_with_alert(setup):
    """Retry gaps grow from 5 minutes to an hour; at 5 days the message is in fallback and an ALERT is logged."""
    clock, store, intake, settings = setup
    (receipt,) = intake.accept(message(1), Envelope("admin", "test"))
    events = []
    dispatcher = delivery.Dispatcher(store, settings, Down(), clock.seconds)
    dispatcher.log = Logger(observer=events.append)
    gaps, last = [], clock.seconds()
    while store.get(receipt.id)["state"] != "fallback":
        dispatcher.tick()
        row = store.get(receipt.id)
        if row["state"] == "deferred":
            gaps.append(row["next_attempt_at"] - clock.seconds())
            clock.advance(row["next_attempt_at"] - clock.seconds())
    assert gaps[:5] == [300, 600, 1200, 2400, 3600] and set(gaps[5:]) == {3600}
    assert 5 * DAY <= clock.seconds() - last < 5 * DAY + 3600
    row = store.get(receipt.id)
    assert row["reason"].startswith("undeliverable for 5 days: E-DELIVERY-CONNECT")
    assert any(e["log_level"].name == "critical" and "ALERT" in e["log_format"] for e in events)


def test_in_flight_limit_per_destination(setup):
    """At most max_in_flight pushes run at once per destination; a finished one frees a place."""
    clock, store, intake, settings = setup
    for index in range(10):
        intake.accept(message(index), Envelope("admin", "test"))
    destination = PendingDestination()
    dispatcher = delivery.Dispatcher(store, settings, destination, clock.seconds)
    assert len(dispatcher.tick()) == settings.delivery_max_in_flight == 4
    assert dispatcher.tick() == []
    destination.open[0].callback(None)
    assert len(dispatcher.tick()) == 1
    assert len(store.listing("delivered")) == 1


def test_hold_release_and_retry(setup):
    """A held message is not delivered; release puts it back; retry makes a deferred one due now."""
    clock, store, intake, settings = setup
    (receipt,) = intake.accept(message(1), Envelope("admin", "test"))
    delivery.hold(store, receipt.id, "admin")
    dispatcher = delivery.Dispatcher(store, settings, Down(), clock.seconds)
    assert dispatcher.tick() == []
    delivery.release(store, receipt.id, "admin")
    dispatcher.tick()
    assert store.get(receipt.id)["state"] == "deferred"
    assert dispatcher.tick() == []
    delivery.retry_now(store, receipt.id, "admin")
    assert len(dispatcher.tick()) == 1
    with pytest.raises(StateError):
        delivery.release(store, receipt.id, "admin")


def test_bit_flipped_inside_the_database_is_quarantined_not_delivered(tmp_path):
    """One bit of a sealed payload flipped in the database file on disk (its pages intact,
    so integrity_check passes) is caught by the seal: the message goes to fallback with an
    ALERT, nothing is sent."""
    clock, store, intake, settings = make_setup(tmp_path)
    (receipt,) = intake.accept(message(1), Envelope("admin", "test"))
    sealed = payloads.sealed(store.db, receipt.id, "out")
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    path = tmp_path / "spool" / "gateway.db"
    data = bytearray(path.read_bytes())
    at = data.find(sealed[40:80])
    assert at > 0 and data.find(sealed[40:80], at + 1) == -1
    data[at + 7] ^= 0x01
    path.write_bytes(bytes(data))
    store = Store(tmp_path / "spool", clock.seconds, RING)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    destination = PendingDestination()
    events = []
    dispatcher = delivery.Dispatcher(store, settings, destination, clock.seconds)
    dispatcher.log = Logger(observer=events.append)
    dispatcher.tick()
    assert destination.open == []
    row = store.get(receipt.id)
    assert row["state"] == "fallback" and row["reason"].startswith("E-PAYLOAD-CORRUPT")
    assert "authentication tag does not match" in row["reason"]
    assert any("ALERT payload corrupt" in e["log_format"] for e in events)


def test_truncated_payload_is_quarantined(setup):
    """A payload cut short in the database is caught the same way."""
    clock, store, intake, settings = setup
    (receipt,) = intake.accept(message(2), Envelope("admin", "test"))
    store.db.execute("UPDATE payloads SET sealed = substr(sealed, 1, 60) WHERE message_id = ? "
                     "AND which = 'out'", (receipt.id,))
    delivery.Dispatcher(store, settings, PendingDestination(), clock.seconds).tick()
    assert store.get(receipt.id)["state"] == "fallback"
