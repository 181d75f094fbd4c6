"""The gateway's recurring work: pushes every second (``gateway.spool.delivery``, claimed
in the store), notifications, the daily retention purge with its audit head line, and
each node's own file sweep. Notifications and the purge run on one node of the store at
a time (``gateway.spool.jobs``); a clean stop lets them go at once.

``Chores`` is a part of ``gateway.daemon.Gateway`` (it uses the gateway's store,
settings, outbox, metrics and notifier); ``every`` runs work in a loop whose failures
are logged, never fatal.
"""

import functools
import time

from twisted.internet import defer, reactor, ssl, task, threads
from twisted.logger import Logger

from gateway import audit, retention
from gateway.errors import GatewayError
from gateway.spool import claims, jobs
from gateway.spool.delivery import Dispatcher
from gateway.spool.store import Store
from gateway.transports.mllp_client import MLLPDeliverer

DAY = 86400
log = Logger(namespace="gatewayd")

class ByScheme:
    """Hands each push to the deliverer for its delivery address's scheme."""

    def __init__(self, deliverers: dict):
        self.deliverers = deliverers

    def deliver(self, row, payload: bytes):
        scheme = next(s for s in self.deliverers if row["delivery"].startswith(s))
        return self.deliverers[scheme].deliver(row, payload)


class Chores:
    """Pushes and the once-only jobs of a Gateway (the main process's part)."""

    @functools.cached_property
    def node(self) -> str:
        """This node's name in delivery claims and job leases (``node.name``, else host
        name:process id)."""
        return self.settings.node_name or claims.default_node()

    def deliver(self) -> None:
        settings = self.settings
        deliverer = MLLPDeliverer(reactor, ssl.Certificate.loadPEM(settings.tls_ca.read_bytes()),
                                  ssl.PrivateCertificate.loadPEM(settings.tls_cert.read_bytes()
                                                                 + settings.tls_key.read_bytes()),
                                  timeout=settings.delivery_timeout_seconds)
        deliverers = {"mllp://": deliverer, "sftp:": self.outbox}
        dispatcher = Dispatcher(self.store, settings,
                                self.metrics.counting_deliverer(ByScheme(deliverers)),
                                reactor.seconds, schemes=tuple(deliverers), node=self.node)
        self.dispatcher = dispatcher
        log.info("node {node}: delivery claims and once-only jobs", node=self.node)
        every(1.0, dispatcher.tick, "delivery loop")

    def maintain(self) -> None:
        """Notifications every 5 s (when configured); the retention purge once a day (looked
        at a minute after start, then every 5 minutes). Each runs on one node of the store at
        a time (``gateway.spool.jobs``); a clean stop lets them go at once. This node's own
        files past retention (SFTP, quarantine) are swept daily on every node."""
        self.jobs = jobs.Jobs(self.store, self.node, reactor.seconds,
                              self.settings.node_job_lease_seconds)
        every(5.0, self.jobs.renew, "job leases")
        if self.notifier.enabled:
            every(5.0, self.jobs.only("notifications", self.notifier.tick), "notifications")
        reactor.callLater(60, every, 300, self.jobs.daily("purge", DAY, self.purge), "purge")
        reactor.callLater(90, every, DAY, lambda: threads.deferToThread(
            retention.sweep, self.settings, self.store.ring), "file sweep")   # files: per node
        reactor.addSystemEventTrigger("before", "shutdown", self.jobs.stop)

    def purge(self):
        """Run the retention purge in a thread, on its own connection, then log the audit head
        (a witness outside the database for the end of the chain)."""
        settings, ring = self.settings, self.store.ring

        def run():
            store = Store.configured(settings, time.time, ring)
            try:
                return retention.purge(store, settings, time.time()), \
                    audit.verify(store.db, ring)
            finally:
                store.close()

        def done(result):
            report, (checked, problem, (seq, head)) = result
            log.info("purge: {messages} message(s), {payloads} payload(s), {files} file(s), "
                     "{records} audit record(s) removed", messages=report.messages,
                     payloads=report.payloads, files=report.files,
                     records=report.audit_records)
            if problem:
                log.critical("ALERT audit chain broken: {problem}", problem=problem)
            log.info("audit head seq={seq} hash={hash}", seq=seq, hash=head)
        return threads.deferToThread(run).addCallback(done)


def every(seconds: float, work, name: str) -> None:
    """Run ``work`` now and every ``seconds``; a failure is logged with its name and the
    next round runs as usual."""
    loop = task.LoopingCall(lambda: defer.maybeDeferred(work).addErrback(failed, name))
    loop.clock = reactor
    loop.start(seconds, now=True)


def failed(failure, name: str) -> None:
    """One line for a known failure (the store away: it reconnects by itself), a traceback
    for anything unexpected."""
    if failure.check(GatewayError):
        log.error("{name}: {error}", name=name, error=str(failure.value))
    else:
        log.failure(name, failure)
