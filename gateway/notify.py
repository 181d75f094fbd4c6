"""Notifications without patient data: e-mail (SMTP) and an HTTPS webhook.

Events come from the audit log, read from a cursor kept in the store, so a
restart neither loses nor repeats one: a teleconsult answer routed to its
referrer (``answer-arrived``), a message sent to fallback (``fallback``), a push
that expired (``delivery-expired``), a payload that failed its seal
(``quarantined``); and, from the queue, a message an institution left unpulled
longer than ``notify.unpulled_hours`` (``unpulled``). Each becomes one row in the
``notifications`` table, sent to every configured channel and retried with
backoff until each has taken it (a channel that took it is not sent to again).

A notification names the kind of event, the ZD number, the message id, the
destination's AGB code and where to look — never a name, BSN, birth date or
letter text: it is built from store metadata only, which holds none.
"""

import datetime as dt
import json
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from io import BytesIO

from twisted.internet import defer, ssl
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.web import client, http_headers

from gateway.errors import ConfigError
from gateway.spool import notices

EVENTS = {   # (audit action, result) -> event
    ("route", "ok"): "answer-arrived",        # only for teleconsult answers, see _event
    ("route", "fallback"): "fallback",
    ("deliver", "expired"): "delivery-expired",
    ("quarantine", "ok"): "quarantined",
    ("quarantine", "fallback"): "quarantined",
}
TEXT = {
    "answer-arrived": "a teleconsult answer arrived for a referrer",
    "fallback": "a message went to the fallback queue and waits for an administrator",
    "delivery-expired": "a push delivery expired; the message is in the fallback queue",
    "quarantined": "a stored file failed its integrity check and was quarantined",
    "unpulled": "an institution has left a message unpulled",
}
log = Logger(namespace="gatewayd.notify")


class Notifier:
    """Finds events (``scan``) and sends what is due (``send``); call ``tick`` periodically."""

    def __init__(self, store, settings, reactor):
        self.store, self.settings, self.reactor = store, settings, reactor
        self.recipients = [a.strip() for a in settings.notify_email_to.split(",") if a.strip()]
        self.trust = _trust(settings)
        self.agent = client.Agent(reactor, client.BrowserLikePolicyForHTTPS(self.trust)) \
            if settings.notify_webhook_url else None
        notices.start(store.db, self.enabled)
        self.sending = False
        self.unpulled_checked = 0.0      # hours-long limit: once a minute is plenty

    @property
    def enabled(self) -> bool:
        return bool(self.recipients or self.agent)

    def tick(self) -> defer.Deferred | None:
        self.scan(self.reactor.seconds())
        if self.sending:
            return None
        self.sending = True
        done = self.send(self.reactor.seconds())
        done.addBoth(lambda result: setattr(self, "sending", False) or result)
        return done

    def scan(self, now: float) -> int:
        """Turn new audit records and long-unpulled messages into notifications; how many."""
        unpulled = None
        if now - self.unpulled_checked >= 60:
            self.unpulled_checked = now
            unpulled = now - self.settings.notify_unpulled_hours * 3600
        return notices.scan(self.store.db, now, _event, unpulled)

    @defer.inlineCallbacks
    def send(self, now: float):
        """Send every due notification to each channel it has not reached yet; retry
        failures with backoff (a channel that took it is not sent to again)."""
        for row in notices.due(self.store.db, now):
            try:
                for what, configured, sending in (("mailed", self.recipients, self._mail),
                                                  ("posted", self.agent, self._post)):
                    if configured and row[f"{what}_at"] is None:
                        yield sending(row)
                        self._set(row, what, self.reactor.seconds())
            except Exception as exc:         # noqa: BLE001 - any failure is retried
                delay = min(3600, 60 * 2 ** min(row["attempts"], 10))
                self._set(row, "failed", self.reactor.seconds() + delay)
                log.warn("notification {id} ({event} zd={zd}) not sent, retry in {delay}s: {error}",
                         id=row["id"], event=row["event"], zd=row["zd_number"], delay=delay,
                         error=type(exc).__name__)
                continue
            self._set(row, "sent", self.reactor.seconds())
            log.info("notification sent: {event} zd={zd} id={id}", event=row["event"],
                     zd=row["zd_number"], id=row["message_id"])

    def _set(self, row, what: str, value: float) -> None:
        notices.mark(self.store.db, row["id"], what, value)

    def _mail(self, row) -> defer.Deferred:
        message = EmailMessage()
        message["From"] = self.settings.notify_email_from
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = f"[gatewayd] {row['event']} {row['zd_number'] or row['message_id']}"
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain="gatewayd")
        message.set_content("\n".join(f"{key}: {value}" for key, value in content(row).items())
                            + "\n\nThis notification carries no patient data.\n")
        done = defer.Deferred()
        host = self.settings.notify_smtp_host
        factory = smtp.ESMTPSenderFactory(
            None, None, self.settings.notify_email_from, self.recipients,
            BytesIO(message.as_bytes()), done, retries=0, timeout=60,
            contextFactory=ssl.optionsForClientTLS(host, trustRoot=self.trust),
            heloFallback=True, requireAuthentication=False, requireTransportSecurity=False)
        self.reactor.connectTCP(host, self.settings.notify_smtp_port, factory)
        return done

    def _post(self, row) -> defer.Deferred:
        body = client.FileBodyProducer(BytesIO(json.dumps(content(row)).encode()))
        request = self.agent.request(b"POST", self.settings.notify_webhook_url.encode(),
                                     http_headers.Headers({b"Content-Type": [b"application/json"]}),
                                     body)

        def check(response):
            if not 200 <= response.code < 300:
                raise RuntimeError(f"webhook answered {response.code}")
            return client.readBody(response)
        return request.addCallback(check)


def content(row) -> dict:
    """What a notification says: event, ZD number, message id, destination, where to look."""
    key = row["zd_number"] or str(row["message_id"])
    return {"event": row["event"], "what": TEXT[row["event"]], "zd_number": row["zd_number"],
            "message_id": row["message_id"], "destination": row["destination"],
            "where": f"gatewayctl status {key}",
            "at": dt.datetime.fromtimestamp(row["created"], dt.timezone.utc).isoformat(
                timespec="seconds")}


def _trust(settings):
    """The CA that SMTP (STARTTLS) and webhook certificates must chain to."""
    if not settings.notify_ca:
        return ssl.platformTrust()
    try:
        return ssl.Certificate.loadPEM((settings.base / settings.notify_ca).read_bytes())
    except (OSError, ssl.SSL.Error) as exc:
        raise ConfigError(f"notify.ca unusable: {exc}", code="E-CONFIG-NOTIFY") from None


def _event(row) -> str | None:
    event = EVENTS.get((row["action"], row["result"]))
    if event == "answer-arrived" and row["kind"] != "teleconsult-answer":
        return None
    return event

