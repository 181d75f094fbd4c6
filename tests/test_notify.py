"""Which events become notifications, once each, across restarts, and what they say."""

import dataclasses
import time

from twisted.internet import defer, task

from gateway import config, notify, routes
from gateway.intake import Envelope, Intake
from tests.helpers.fakes import RING, ROOT, numbered_referral

SAMPLES = ROOT / "gateway" / "routes" / "samples"
HL7 = ROOT / "fixtures" / "hl7"
ADMIN = Envelope("admin", "test")


def test_events_become_notifications_once(backend, tmp_path):
    """An answer for a referrer, a fallback, an expired push, a quarantined payload and a
    message left unpulled each give one notification; scanning again (or after a restart)
    adds none; what happened before the notifier first ran is not notified."""
    clock = task.Clock()
    clock.advance(time.time())
    store = backend.store(tmp_path, clock.seconds, RING)
    intake = Intake(store, routes.load(SAMPLES), 1 << 24)
    intake.accept(numbered_referral(1), ADMIN)                       # before: not notified
    settings = dataclasses.replace(config.defaults(tmp_path), notify_email_to="a@example.org")
    notifier = notify.Notifier(store, settings, clock)
    (ready,) = intake.accept(numbered_referral(2), ADMIN)
    intake.accept(numbered_referral(3).replace(b"06005678", b"06001111"), ADMIN)   # fallback
    intake.accept((HL7 / "teleconsult-request.hl7").read_bytes(), ADMIN)
    (answer,) = intake.accept((HL7 / "teleconsult-answer-crlf.hl7").read_bytes(), ADMIN)
    store.transition(answer.id, "delivered", "delivery")
    store.transition(answer.id, "outbound", "sftp:his-brink", "seal broken", action="quarantine")
    store.transition(answer.id, "fallback", "delivery", "expired", action="deliver",
                     result="expired")
    assert notifier.scan(clock.seconds()) == 4
    assert notifier.scan(clock.seconds() + 25 * 3600) == 3          # unpulled: 1, 2, request
    again = notify.Notifier(store, settings, clock)
    assert again.scan(clock.seconds() + 26 * 3600) == 0
    rows = store.db.execute("SELECT event, zd_number FROM notifications ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [
        ("fallback", "ZD500000003"), ("answer-arrived", "ZD100200301_ANTW"),
        ("quarantined", "ZD100200301_ANTW"), ("delivery-expired", "ZD100200301_ANTW"),
        ("unpulled", "ZD500000001"), ("unpulled", "ZD500000002"), ("unpulled", "ZD100200301")]
    assert ready.zd_number == "ZD500000002"


def test_content_names_event_zd_and_where_only(tmp_path):
    row = {"event": "answer-arrived", "zd_number": "ZD100200301_ANTW", "message_id": 6,
           "destination": "answers:01234567", "created": 0.0}
    assert notify.content(row) == {
        "event": "answer-arrived", "what": "a teleconsult answer arrived for a referrer",
        "zd_number": "ZD100200301_ANTW", "message_id": 6, "destination": "answers:01234567",
        "where": "gatewayctl status ZD100200301_ANTW", "at": "1970-01-01T00:00:00+00:00"}


def test_a_failing_channel_is_retried_alone(backend, tmp_path):
    """E-mail goes out, the webhook fails: the retry (after backoff) posts again but does
    not mail again; once both took it, it is sent."""
    clock = task.Clock()
    clock.advance(1_800_000_000)
    store = backend.store(tmp_path, clock.seconds, RING)
    settings = dataclasses.replace(config.defaults(tmp_path), notify_email_to="a@example.org",
                                   notify_webhook_url="https://127.0.0.1:1/hook")
    notifier = notify.Notifier(store, settings, clock)
    intake = Intake(store, routes.load(SAMPLES), 1 << 24)
    intake.accept(numbered_referral(1).replace(b"06005678", b"06001111"), ADMIN)   # fallback
    sent = {"mail": 0, "post": 0}
    outcomes = iter([RuntimeError("webhook down"), None])

    def mail(row):
        sent["mail"] += 1
        return defer.succeed(None)

    def post(row):
        sent["post"] += 1
        problem = next(outcomes)
        return defer.fail(problem) if problem else defer.succeed(None)

    notifier._mail, notifier._post = mail, post
    notifier.tick()
    assert sent == {"mail": 1, "post": 1}
    notifier.tick()                                  # not due yet: backoff
    assert sent == {"mail": 1, "post": 1}
    clock.advance(60)
    notifier.tick()
    assert sent == {"mail": 1, "post": 2}
    (row,) = store.db.execute("SELECT * FROM notifications").fetchall()
    assert row["sent_at"] is not None and row["attempts"] == 1
