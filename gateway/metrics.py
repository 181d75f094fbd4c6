"""Counters and queue gauges in the Prometheus text format, for ``GET /metrics``.

Counters run from the daemon's start: messages received, duplicates, rejected
(unreadable) and refused (not mandated or a reused control id) per channel;
pushes delivered and failed per destination. Gauges come from the store: queue
depth and the oldest message's age per destination and state; notifications
waiting to be sent, audit records, messages purged. Labels carry channels,
destinations (AGB codes) and states only — never patient data.
"""

from collections import Counter
from typing import Callable

from twisted.internet import defer
from twisted.web import resource

from gateway import operations
from gateway.errors import DecodeError
from gateway.intake import DuplicateConflict, NotMandated

HELP = {
    "gatewayd_received_total": "messages stored, per channel",
    "gatewayd_duplicates_total": "re-sent messages answered with their first receipt",
    "gatewayd_rejected_total": "unreadable messages, kept as rejected",
    "gatewayd_refused_total": "messages refused: not mandated, or a reused control id",
    "gatewayd_pushes_delivered_total": "pushes acknowledged, per destination",
    "gatewayd_pushes_failed_total": "pushes that failed and were deferred, per destination",
}

PRIVACY_GAUGES = (
    ("gatewayd_notifications_pending", "SELECT count(*) FROM notifications WHERE sent_at IS NULL",
     "notifications not sent yet (failing sends are retried)"),
    ("gatewayd_audit_records", "SELECT coalesce(max(seq), 0) - (SELECT seq FROM audit_anchor) "
     "FROM audit", "records in the audit log (their sequence is contiguous: no count needed)"),
    ("gatewayd_purged_messages", "SELECT sum(messages) FROM purge_counts",
     "messages purged under the retention rules, all time"),
)


class Metrics:
    def __init__(self, intake, clock: Callable[[], float]):
        self.intake, self.clock = intake, clock
        self.counters: Counter = Counter()

    def counting(self, accept):
        """Wrap ``accept`` (answering at once or with a Deferred) so that every outcome
        is counted per channel; the wrapper answers with a Deferred."""
        def counted(raw: bytes, envelope) -> defer.Deferred:
            label = ("channel", envelope.channel)

            def receipts_counted(receipts):
                for receipt in receipts:
                    name = "gatewayd_duplicates_total" if receipt.duplicate else \
                        "gatewayd_received_total"
                    self.counters[name, label] += 1
                return receipts

            def error_counted(failure):
                if failure.check(DecodeError):
                    self.counters["gatewayd_rejected_total", label] += 1
                elif failure.check(NotMandated, DuplicateConflict):
                    self.counters["gatewayd_refused_total", label] += 1
                return failure

            result = defer.maybeDeferred(accept, raw, envelope)
            return result.addCallbacks(receipts_counted, error_counted)
        return counted

    def counting_deliverer(self, deliverer):
        """Wrap a Deliverer so that every push outcome is counted per destination."""
        metrics = self

        class Counted:
            def deliver(self, row, payload) -> defer.Deferred:
                label = ("destination", row["destination"])
                result = defer.maybeDeferred(deliverer.deliver, row, payload)

                def count(outcome, name):
                    metrics.counters[name, label] += 1
                    return outcome
                result.addCallbacks(count, count, callbackArgs=("gatewayd_pushes_delivered_total",),
                                    errbackArgs=("gatewayd_pushes_failed_total",))
                return result
        return Counted()

    def render(self) -> str:
        lines = []
        for name, text in HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            lines += [f'{n}{{{key}="{value}"}} {count}'
                      for (n, (key, value)), count in sorted(self.counters.items()) if n == name]
        stats = operations.stats(self.intake, self.clock())
        for name, field, text in (("gatewayd_queue_depth", "depth", "messages per destination and state"),
                                  ("gatewayd_queue_oldest_age_seconds", "oldest_age_seconds",
                                   "age of the oldest message per destination and state")):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
            lines += [f'{name}{{destination="{s["destination"]}",state="{s["state"]}"}} {s[field]}'
                      for s in stats]
        db = self.intake.store.db
        for name, query, text in PRIVACY_GAUGES:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge",
                      f"{name} {db.execute(query).fetchone()[0] or 0}"]
        return "\n".join(lines) + "\n"


class LocalStatus(resource.Resource):
    """``/metrics`` and ``/healthz`` on the local, certificate-free port."""

    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        if request.path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4")
            return self.metrics.render().encode()
        if request.path == b"/healthz":
            self.metrics.intake.store.db.execute("SELECT 1").fetchone()
            request.setHeader(b"content-type", b"text/plain")
            return b"ok\n"
        request.setResponseCode(404)
        return b"not found\n"
