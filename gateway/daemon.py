"""gatewayd: wires the configuration to the listeners and runs the Twisted reactor.

``gatewayd -c CONFIG`` runs in the foreground (systemd does the daemonizing) and
logs one line per event to stdout, never patient data. It serves HL7 over MLLP
and the HTTPS API, both with mutual TLS: every message goes through the same
``Intake.accept`` as ``gatewayctl submit``, and the ACK (or 202) is written only
after the store committed. Storing runs on a writer thread with its own SQLite
connection; what arrives while one batch is stored is committed together as the
next (group commit). Every second the dispatcher starts due pushes to
institutions with ``mllp://`` delivery and writes answers into ``sftp:`` outboxes.
SFTP drops (key-only accounts for the identities with an ``ssh_key``) feed the
same intake. Payloads are sealed with the key file's keys (a missing or wrong
key file stops gatewayd at start); notifications go out every few seconds and
the retention purge runs daily (see ``gateway.notify`` and ``gateway.retention``).

A client certificate's common name names its identity; an unknown name has no
mandates, so everything it sends is refused. SIGHUP reloads the route tables,
identities, TLS certificates and the key file (each one that fails to load is
refused, the old one kept, and a line logged; open connections are not
dropped); SIGTERM stops.
Under systemd it sends READY=1, RELOADING=1/READY=1 around a reload, STOPPING=1
and WATCHDOG=1 pings.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from twisted.conch.ssh import keys as ssh_keys
from twisted.internet import defer, reactor, ssl, task, threads
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.threadpool import ThreadPool
from twisted.web import server

from gateway import audit, config, keys, notify, retention, routes, systemd
from gateway.errors import ConfigError, GatewayError
from gateway.intake import Envelope, Intake
from gateway.metrics import LocalStatus, Metrics
from gateway.spool.delivery import Dispatcher
from gateway.spool.store import Store
from gateway.transports import http, sftp, ssh, tls, uploads
from gateway.transports.batch import GroupCommit
from gateway.transports.guard import Budget, Guard
from gateway.transports.hl7handler import AckingHandler
from gateway.transports.mllp import MLLPFactory
from gateway.transports.mllp_client import MLLPDeliverer

EX_CONFIG = 78
BACKLOG = 256           # connections waiting to be accepted (Twisted's default is 50)
DAY = 86400
log = Logger(namespace="gatewayd")


class ByScheme:
    """Hands each push to the deliverer for its delivery address's scheme."""

    def __init__(self, deliverers: dict):
        self.deliverers = deliverers

    def deliver(self, row, payload: bytes):
        scheme = next(s for s in self.deliverers if row["delivery"].startswith(s))
        return self.deliverers[scheme].deliver(row, payload)


class Gateway:
    """The running gateway: store, intake, identities and TLS, and what reloads them."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.settings = settings = config.load(config_path)
        ring, tables = keys.load(settings.paths_keys), routes.load(settings.paths_routes)
        self.store = Store(settings.paths_spool, reactor.seconds, ring)
        self.outbox = sftp.Outbox(settings.paths_sftp, self.store)
        self.intake = Intake(self.store, tables, settings.limits_max_message_bytes,
                             settings.limits_max_segments)
        # The intake's commits run on one writer thread with its own connection.
        self.writer = Intake(Store(settings.paths_spool, time.time, ring, other_thread=True),
                             tables, settings.limits_max_message_bytes, settings.limits_max_segments)
        self.pool = ThreadPool(1, 1, "writer")
        self.identities = {identity.name: identity for identity in settings.identities}
        self.tls = tls.Reloadable(self._tls_options(settings))
        self.metrics = Metrics(self.intake, reactor.seconds)
        self.notifier = notify.Notifier(self.store, settings, reactor)
        self.accept = self.metrics.counting(GroupCommit(
            self.writer, reactor, lambda f, *a: threads.deferToThreadPool(reactor, self.pool, f, *a),
            gather=0.005).accept)

    def envelope_for(self, channel: str):
        def envelope(peer: str) -> Envelope:
            identity = self.identities.get(peer)
            return Envelope(peer, channel, identity.agb if identity else frozenset())
        return envelope

    def listen(self) -> None:
        settings = self.settings
        budget = Budget(settings.limits_max_buffered_bytes)
        factory = MLLPFactory(AckingHandler(self.accept, self.envelope_for("mllp")),
                              settings.limits_max_frame_bytes, settings.limits_idle_timeout_seconds,
                              tls.peer_identity, settings.limits_frame_seconds, budget)
        listening = {"interface": settings.listen_host, "backlog": BACKLOG}
        mllp = reactor.listenSSL(settings.listen_mllp_port, self._guard(factory, "MLLP"), self.tls,
                                 **listening).getHost()
        site = http.site(http.Api(self.intake, self.identities, settings.limits_max_message_bytes,
                                  self.accept), settings.limits_idle_timeout_seconds,
                         settings.limits_frame_seconds, budget)
        https = reactor.listenSSL(settings.listen_https_port, self._guard(site, "HTTPS"), self.tls,
                                  **listening).getHost()
        sftp_port = reactor.listenTCP(settings.listen_sftp_port, self._guard(
            self._sftp_factory(), "SFTP", settings.limits_idle_timeout_seconds, ssh.logged_in),
            **listening).getHost()
        status = server.Site(LocalStatus(self.metrics))
        status.displayTracebacks = False
        metrics = reactor.listenTCP(settings.listen_metrics_port, status,
                                    interface="127.0.0.1").getHost()
        log.info("gatewayd listening mllp={host}:{mllp} https={host}:{https} sftp={host}:{sftp} "
                 "metrics=127.0.0.1:{metrics}", host=mllp.host, mllp=mllp.port, https=https.port,
                 sftp=sftp_port.port, metrics=metrics.port)

    def _guard(self, factory, name: str, idle: float | None = None,
               ready=lambda protocol: False) -> Guard:
        """``factory`` under the connection limits (TLS listeners pass their handshake
        in the Guard itself; ``ready`` says when an SSH login is done)."""
        settings = self.settings
        return Guard(factory, name, reactor, settings.limits_max_connections,
                     settings.limits_max_connections_per_client, settings.limits_handshake_seconds,
                     idle, ready)

    def _sftp_factory(self):
        """SFTP accounts for the identities that have an SSH key."""
        settings = self.settings
        accounts, authorized = {}, {}
        holdings = uploads.Holdings(uploads.Limits.from_settings(settings), reactor)
        for identity in settings.identities:
            if not identity.ssh_key:
                continue
            try:
                authorized[identity.name] = [
                    ssh_keys.Key.fromFile(str(settings.base / identity.ssh_key))]
            except (OSError, ssh_keys.BadKeyError) as exc:
                raise ConfigError(f"identities.{identity.name}.ssh_key unusable: {exc}",
                                  code="E-CONFIG-SSH") from None
            accounts[identity.name] = sftp.Account(identity.name, settings.paths_sftp / identity.name,
                                                   identity.agb, self.accept, self.outbox,
                                                   uploads.Shelf(holdings))
        try:
            host_key = ssh_keys.Key.fromFile(str(settings.paths_ssh_host_key))
        except (OSError, ssh_keys.BadKeyError) as exc:
            raise ConfigError(f"SSH host key unusable: {exc}", code="E-CONFIG-SSH") from None
        return sftp.server_factory(host_key, accounts, authorized)

    def deliver(self) -> None:
        settings = self.settings
        deliverer = MLLPDeliverer(reactor, ssl.Certificate.loadPEM(settings.tls_ca.read_bytes()),
                                  ssl.PrivateCertificate.loadPEM(settings.tls_cert.read_bytes()
                                                                 + settings.tls_key.read_bytes()),
                                  timeout=30)
        deliverers = {"mllp://": deliverer, "sftp:": self.outbox}
        dispatcher = Dispatcher(self.store, settings,
                                self.metrics.counting_deliverer(ByScheme(deliverers)),
                                reactor.seconds, schemes=tuple(deliverers))
        _every(1.0, dispatcher.tick, "delivery loop")

    def stop_writer(self) -> None:
        """Let the batch being stored finish, then close the writer's connection."""
        self.pool.stop()
        self.writer.store.close()

    def maintain(self) -> None:
        """Notifications every 5 s (when configured); the retention purge a minute after
        start, then once a day."""
        if self.notifier.enabled:
            _every(5.0, self.notifier.tick, "notifications")
        reactor.callLater(60, _every, DAY, self.purge, "purge")

    def purge(self):
        """Run the retention purge in a thread, on its own connection, then log the audit head
        (a witness outside the database for the end of the chain)."""
        settings, ring = self.settings, self.store.ring

        def run():
            store = Store(settings.paths_spool, time.time, ring)
            try:
                return retention.purge(store, settings, time.time()), \
                    audit.verify(store.db, ring)
            finally:
                store.close()

        def done(result):
            report, (checked, problem, (seq, head)) = result
            log.info("purge: {messages} message(s), {files} file(s), {records} audit record(s) "
                     "removed", messages=report.messages, files=report.files,
                     records=report.audit_records)
            if problem:
                log.critical("ALERT audit chain broken: {problem}", problem=problem)
            log.info("audit head seq={seq} hash={hash}", seq=seq, hash=head)
        return threads.deferToThread(run).addCallback(done)

    def reload(self) -> None:
        """Reload route tables, certificates, keys and identities; keep whatever fails to load."""
        systemd.notify("RELOADING=1")
        try:
            settings = config.load(self.config_path)
        except GatewayError as exc:
            log.error("reload refused, configuration kept: {error}", error=str(exc))
            systemd.notify("READY=1")
            return
        for name, apply in (("route tables", lambda: self._reload_tables(settings)),
                            ("certificates", lambda: self.tls.replace(self._tls_options(settings))),
                            ("keys", lambda: self._reload_keys(settings))):
            try:
                apply()
                log.info("reloaded {name}", name=name)
            except GatewayError as exc:
                log.error("reload of {name} refused, old kept: {error}", name=name, error=str(exc))
        new = {identity.name: identity for identity in settings.identities}
        changed = sorted(name for name in set(new) | set(self.identities)
                         if new.get(name) != self.identities.get(name))
        if changed:
            self.store.record([audit.Event("reload", "identities-change",
                                           detail=f"changed: {', '.join(changed)}")])
        self.identities.clear()
        self.identities.update(new)
        systemd.notify("READY=1")

    def _reload_keys(self, settings) -> None:
        ring, old = keys.load(settings.paths_keys), self.store.ring
        if ring != old:
            self.store.ring = ring
            try:
                self.store.check_keys()
            except GatewayError:
                self.store.ring = old
                raise
            self.writer.store.ring = ring
            self.store.record([audit.Event("reload", "keys-reload",
                                           detail=f"current key {ring.current}")])

    def _reload_tables(self, settings) -> None:
        self.intake.tables = self.writer.tables = routes.load(settings.paths_routes)
        moved = self.intake.reroute_fallback("reload")
        if moved:
            log.info("{count} message(s) moved out of fallback", count=len(moved))

    @staticmethod
    def _tls_options(settings):
        return tls.server_options(settings.tls_ca, settings.tls_cert, settings.tls_key)


def _every(seconds: float, work, name: str) -> None:
    """Run ``work`` now and every ``seconds``; a failure is logged with its name and the
    next round runs as usual."""
    loop = task.LoopingCall(lambda: defer.maybeDeferred(work).addErrback(
        lambda failure: log.failure(name, failure)))
    loop.clock = reactor
    loop.start(seconds, now=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayd", description="Run the gateway.")
    parser.add_argument("-c", "--config", default=os.environ.get("GATEWAY_CONFIG"),
                        help="configuration file (default: $GATEWAY_CONFIG)")
    args = parser.parse_args(argv)
    if not args.config:
        print("gatewayd: error E-CONFIG-FILE: pass -c CONFIG or set GATEWAY_CONFIG "
              "(gatewayctl init DIR writes one)", file=sys.stderr)
        return EX_CONFIG
    try:
        gateway = Gateway(Path(args.config))
        gateway.listen()
    except GatewayError as exc:
        print(f"gatewayd: error {exc}", file=sys.stderr)
        return EX_CONFIG
    gateway.deliver()
    gateway.maintain()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gateway.reload))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: systemd.notify("STOPPING=1"))
    reactor.addSystemEventTrigger("before", "shutdown", gateway.store.close)
    reactor.callWhenRunning(gateway.pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", gateway.stop_writer)
    interval = systemd.watchdog_interval()
    if interval:
        task.LoopingCall(systemd.notify, "WATCHDOG=1").start(interval)
    reactor.callWhenRunning(systemd.notify, "READY=1")
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
