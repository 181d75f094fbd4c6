"""Counters, gauges and a histogram in the Prometheus text format, for ``GET /metrics``;
``GET /healthz`` says whether the daemon can store.

Counters run from the daemon's start: messages received, duplicates, rejected
(unreadable) and refused (not mandated or a reused control id) per channel;
pushes delivered and failed per destination. A histogram of ACK latency (from
the message in hand to its receipt: the commit) per channel. Gauges come from
the store: queue depth and the oldest message's age per destination and state;
notifications waiting, audit records, messages purged; whether the store can
take messages; seconds until each certificate (server, CA, clients) expires;
build info and the start time. Every series the daemon knows of (channels,
destinations in the route tables) is there from the start, at zero; no label is
empty (rejected input, which has no destination, is ``unrouted``). Labels carry
channels, destinations (AGB codes), states and identity names — never patient data.
"""

import os
import platform
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from cryptography import x509
from twisted.internet import defer
from twisted.web import resource

from gateway import __version__, operations, pki
from gateway.errors import DecodeError, GatewayError
from gateway.reading import REFUSALS
from gateway.spool import queries
from gateway.spool.db import StoreUnavailable

CHANNELS = ("mllp", "https", "sftp")
QUEUE_STATES = ("ready", "outbound", "deferred", "fallback", "held")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HELP = {
    "gatewayd_received_total": ("channel", "messages stored, per channel"),
    "gatewayd_duplicates_total": ("channel", "re-sent messages answered with their first receipt"),
    "gatewayd_rejected_total": ("channel", "unreadable messages, kept as rejected"),
    "gatewayd_refused_total": ("channel", "messages refused: not mandated, a reused control id, or too large"),
    "gatewayd_pushes_delivered_total": ("destination", "pushes acknowledged, per destination"),
    "gatewayd_pushes_failed_total": ("destination",
                                     "pushes that failed and were deferred, per destination"),
}
PRIVACY_GAUGES = {   # queries.gauges() name -> help
    "notifications_pending": "notifications not sent yet (failing sends are retried)",
    "audit_records": "records in the audit log (their sequence is contiguous: no count needed)",
    "purged_messages": "messages purged under the retention rules, all time",
}


class Metrics:
    """What the daemon counts, and the store's gauges. ``settings`` (optional) gives the
    spool, the free-space floor, certificates and identities."""

    def __init__(self, intake, clock: Callable[[], float], settings=None, started_at: float = 0):
        self.intake, self.clock, self.settings = intake, clock, settings
        self.started_at = started_at
        self.counters: Counter = Counter()
        self.latency: dict[str, list] = {c: [0] * (len(BUCKETS) + 1) + [0.0] for c in CHANNELS}
        self.last_failure: tuple[float, str] | None = None
        # other processes' counters and latencies to add in (gateway.workers.Shared)
        self.elsewhere: Callable[[], tuple[Counter, dict]] = lambda: (Counter(), {})

    def counting(self, accept):
        """Wrap ``accept`` (answering at once or with a Deferred) so that every outcome is
        counted and timed per channel; the wrapper answers with a Deferred."""
        def counted(raw: bytes, envelope) -> defer.Deferred:
            label, start = ("channel", envelope.channel), self.clock()

            def receipts_counted(receipts):
                self.last_failure = None          # stored again: the store has recovered
                self._observe(envelope.channel, self.clock() - start)
                for receipt in receipts:
                    name = "gatewayd_duplicates_total" if receipt.duplicate else \
                        "gatewayd_received_total"
                    self.counters[name, label] += 1
                return receipts

            def error_counted(failure):
                if failure.check(DecodeError):
                    self.counters["gatewayd_rejected_total", label] += 1
                elif failure.check(*REFUSALS):
                    self.counters["gatewayd_refused_total", label] += 1
                elif not failure.check(StoreUnavailable):     # that one the probe sees
                    self.last_failure = (self.clock(), _why(failure.value))
                self._observe(envelope.channel, self.clock() - start)
                return failure

            result = defer.maybeDeferred(accept, raw, envelope)
            return result.addCallbacks(receipts_counted, error_counted)
        return counted

    def _observe(self, channel: str, seconds: float) -> None:
        counts = self.latency.setdefault(channel, [0] * (len(BUCKETS) + 1) + [0.0])
        counts[next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))] += 1
        counts[-1] += seconds

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

    def store_problem(self) -> str | None:
        """Why the daemon cannot store right now (PostgreSQL unreachable, a retired key, a
        read-only or full spool, a store failure in the last minute not followed by a
        message stored), or None."""
        store = self.intake.store
        problem = store.problem()
        if problem:
            return problem
        try:
            store.check_current()
        except GatewayError as exc:
            return exc.message
        if self.settings is not None and not self.settings.store_url:
            spool = self.settings.paths_spool
            info = os.statvfs(spool)
            if info.f_flag & os.ST_RDONLY or not os.access(spool, os.W_OK):
                return f"spool {spool} is read-only"
            free = info.f_bavail * info.f_frsize
            if free < self.settings.limits_min_free_mb * 1024 * 1024:
                return (f"disk full: {free // (1024 * 1024)} MiB free on the spool's file system "
                        f"(limits.min_free_mb = {self.settings.limits_min_free_mb})")
        if self.last_failure and self.clock() - self.last_failure[0] < 60:
            return f"storing failed {round(self.clock() - self.last_failure[0])} s ago: " \
                   f"{self.last_failure[1]}"
        return None

    def render(self) -> str:
        problem = self.store_problem()
        counters, latency = self.elsewhere()          # the worker processes' (read once)
        lines = self._counters(self.counters + counters) + \
            self._latency(add_latency({c: list(n) for c, n in self.latency.items()}, latency))
        if problem is None:               # the store's gauges need the store
            lines += self._queues()
            for name, value in queries.gauges(self.intake.store.db).items():
                lines += _gauge(f"gatewayd_{name}", PRIVACY_GAUGES[name], [("", value)])
        lines += _gauge("gatewayd_store_ok", "1 when the daemon can store messages (see /healthz)",
                        [("", 0 if problem else 1)])
        lines += _gauge("gatewayd_certificate_expiry_seconds",
                        "seconds until the certificate expires (negative: expired)",
                        [(f'certificate="{n}"', round(t - self.clock()))
                         for n, t in self._certificates()])
        lines += _gauge("gatewayd_build_info", "version of gatewayd and Python",
                        [(f'version="{__version__}",python="{platform.python_version()}"', 1)])
        lines += _gauge("gatewayd_start_time_seconds", "when the daemon started (Unix time)",
                        [("", round(self.started_at, 3))])
        return "\n".join(lines) + "\n"

    def _counters(self, counters: Counter) -> list[str]:
        known = {"channel": CHANNELS, "destination": self._push_destinations()}
        lines = []
        for name, (key, text) in HELP.items():
            values = Counter({(key, v): 0 for v in known[key]})
            values.update({label: count for (n, label), count in counters.items()
                           if n == name})
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            lines += [f'{name}{{{k}="{v}"}} {count}' for (k, v), count in sorted(values.items())]
        return lines

    def _latency(self, latency: dict) -> list[str]:
        name = "gatewayd_ack_latency_seconds"
        lines = [f"# HELP {name} from a message in hand to its answer (after the commit), "
                 "per channel", f"# TYPE {name} histogram"]
        for channel, counts in sorted(latency.items()):
            running = 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts):
                running += count
                lines.append(f'{name}_bucket{{channel="{channel}",le="{bound}"}} {running}')
            lines += [f'{name}_sum{{channel="{channel}"}} {counts[-1]:.6f}',
                      f'{name}_count{{channel="{channel}"}} {running}']
        return lines

    def _queues(self) -> list[str]:
        stats: dict = {}
        for found in operations.stats(self.intake, self.clock()):
            key = (_destination(found["destination"]), found["state"])
            if key in stats:             # several mailboxes nobody mapped: one "unrouted"
                depth = stats[key]["depth"] + found["depth"]
                oldest = max(stats[key]["oldest_age_seconds"], found["oldest_age_seconds"])
                found = {**found, "depth": depth, "oldest_age_seconds": oldest}
            stats[key] = found
        for destination in self.intake.tables.institutions:
            for state in QUEUE_STATES:
                stats.setdefault((destination, state), {"depth": 0, "oldest_age_seconds": 0})
        lines = []
        for name, field, text in (("gatewayd_queue_depth", "depth",
                                   "messages per destination and state"),
                                  ("gatewayd_queue_oldest_age_seconds", "oldest_age_seconds",
                                   "age of the oldest message per destination and state")):
            lines += _gauge(name, text, [(f'destination="{d}",state="{s}"', stats[d, s][field])
                                         for d, s in sorted(stats)])
        return lines

    def _push_destinations(self) -> list[str]:
        tables = self.intake.tables
        return [i.agb for i in tables.institutions.values() if i.delivery != "pull"] + \
            [f"answers:{r.agb}" for r in tables.referrers.values() if r.answer_address]

    def _certificates(self) -> list[tuple[str, float]]:
        """(name, expiry as Unix time) of the server certificate, each CA certificate and
        each identity's client certificate found on disk."""
        if self.settings is None:
            return []
        settings = self.settings
        paths = [("server", settings.tls_cert)] + [
            (f"client:{i.name}", pki.client_cert_path(settings, i.name))
            for i in settings.identities]
        found = [(f"ca:{name}", when) for name, when in _expiries(settings.tls_ca)]
        for name, path in paths:
            found += [(name, when) for _, when in _expiries(path)[:1]]
        return found


def _expiries(path: Path) -> list[tuple[str, float]]:
    """(common name, expiry) of each certificate in a PEM file (none if unreadable)."""
    try:
        certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError):
        return []
    return [(_common_name(c), c.not_valid_after_utc.timestamp()) for c in certificates]


def _common_name(certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return _label(str(names[0].value)) if names else "?"


_DESTINATION = re.compile(r"(?:answers:)?[0-9]{8}")


def _destination(destination: str) -> str:
    """A destination as a label: an AGB code (or answers:AGB); anything else a sender may
    have written (an unmapped mailbox name) is "unrouted" — no sender text in labels, and
    no series per made-up name."""
    return destination if destination and _DESTINATION.fullmatch(destination) else "unrouted"


def _label(value: str) -> str:
    """A label value as the exposition format writes it (backslash, quote, newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _gauge(name: str, text: str, samples: list[tuple[str, object]]) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} gauge"] + [
        f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in samples]


def _why(error: BaseException) -> str:
    return str(error) if isinstance(error, GatewayError) else \
        f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"[:200]


class LocalStatus(resource.Resource):
    """``/metrics`` and ``/healthz`` on the local, certificate-free port. ``/healthz`` is
    200 ``ok``, or 503 with the reason the daemon cannot store."""

    isLeaf = True

    CACHE_SECONDS = 1.0      # scrapes in the same second get the same text: no query storm

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics
        self.rendered: tuple[float, bytes] = (float("-inf"), b"")

    def render_GET(self, request):
        if request.path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4")
            now = self.metrics.clock()
            if now - self.rendered[0] >= self.CACHE_SECONDS:
                self.rendered = (now, self.metrics.render().encode())
            return self.rendered[1]
        if request.path == b"/healthz":
            request.setHeader(b"content-type", b"text/plain")
            problem = self.metrics.store_problem()
            if problem:
                request.setResponseCode(503)
                return f"cannot store: {problem}\n".encode()
            return b"ok\n"
        request.setResponseCode(404)
        return b"not found\n"


def add_latency(into: dict, more: dict) -> dict:
    """Add the ACK latency histograms ``more`` (channel -> bucket counts, their sum last)
    into ``into``; give ``into``."""
    for channel, counts in more.items():
        mine = into.setdefault(channel, [0] * len(counts))
        into[channel] = [a + b for a, b in zip(mine, counts)]
    return into
