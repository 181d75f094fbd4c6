"""gatewayd: wires the configuration to the listeners and runs the Twisted reactor.

``gatewayd -c CONFIG`` runs in the foreground (systemd does the daemonizing) and
logs one line per event to stdout, never patient data. It serves HL7 over MLLP
and the HTTPS API, both with mutual TLS: every message goes through the same
``Intake.accept`` as ``gatewayctl submit``, and the ACK (or 202) is written only
after the store committed. Storing runs on a writer thread with its own database
connection (SQLite in the spool, or PostgreSQL: ``store.url``); what arrives while
one batch is stored is committed together as the next (group commit), read on a
reader thread while the one before commits. While
PostgreSQL cannot be reached nothing is acknowledged, ``/healthz`` says why, and
each connection opens again by itself on its next use. Every second the dispatcher starts due pushes to
institutions with ``mllp://`` delivery and writes answers into ``sftp:`` outboxes.
SFTP drops (key-only accounts for the identities with an ``ssh_key``) feed the
same intake. Payloads are sealed with the key file's keys (a missing or wrong
key file stops gatewayd at start); notifications go out every few seconds and
the retention purge runs daily (see ``gateway.notify`` and ``gateway.retention``),
each on one node of the store at a time (``gateway.spool.jobs``).

A client certificate's common name names its identity; an unknown name has no
mandates, so everything it sends is refused. SIGHUP reloads the route tables,
identities, TLS certificates and the key file (each one that fails to load is
refused, the old one kept, and a line logged; open connections are not
dropped); SIGTERM stops. Route tables and identities go from the files into the
store, where every node takes them from (``gateway.inforce``, ``gateway.tablewatch``):
the store's are the ones in force, the same on every node.
Under systemd it sends READY=1, RELOADING=1/READY=1 around a reload, STOPPING=1
and WATCHDOG=1 pings. With ``process.workers`` above 1 it also starts worker processes
on its listening sockets (``gateway.workers``); a worker runs this same ``main``.
"""

import argparse
import os
import resource
import signal
import sys
import time
from pathlib import Path

from twisted.conch.ssh import keys as ssh_keys
from twisted.internet import defer, reactor, threads
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, globalLogBeginner
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from gateway import (__version__, config, control, inforce, keys, logs, notify, systemd,
                     tablewatch, workers)
from gateway.chores import Chores, every, failed
from gateway.errors import ConfigError, DecodeError, GatewayError
from gateway.intake import Intake
from gateway.reading import REFUSALS, Envelope
from gateway.reloading import RELOADABLE, Reloads
from gateway.logs import Throttle
from gateway.metrics import LocalStatus, Metrics
from gateway.routes import editing
from gateway.spool.store import Store
from gateway.transports import http, sftp, ssh, tls, uploads, webbounds
from gateway.transports.batch import GroupCommit
from gateway.transports.guard import Budget, Guard
from gateway.transports.hl7handler import AckingHandler
from gateway.transports.mllp import MLLPFactory

EX_OSERR, EX_TEMPFAIL, EX_CONFIG = 71, 75, 78
BACKLOG = 256           # connections waiting to be accepted (Twisted's default is 50)
LOCAL_CONNECTIONS = 32  # open connections to the metrics port (scrapers, health checks)
RESERVED_FILES = 128    # descriptors besides the listeners' connections: database, logs, pushes
log = Logger(namespace="gatewayd")



class Gateway(Chores, Reloads):
    """The running gateway: store, intake, identities and TLS, and what reloads them."""

    def __init__(self, config_path: Path, settings, worker: bool = False):
        self.config_path = config_path
        self.started_at = time.time()
        ring = keys.load(settings.paths_keys)
        self.store = Store.configured(settings, reactor.seconds, ring,
                                      progress=lambda line: log.info("store: {line}", line=line))
        found = inforce.begin(self.store, settings, lambda line: log.warn("{line}", line=line),
                              follower=worker)
        self.settings = settings = inforce.in_force(settings, found)
        self.tables_version, tables = found.version, found.tables
        self.intake = Intake(self.store, tables, settings.limits_max_message_bytes,
                             settings.limits_max_segments)
        # The intake's commits run on one writer thread with its own connection.
        self.writer = Intake(Store.configured(settings, time.time, ring, other_thread=True),
                             tables, settings.limits_max_message_bytes, settings.limits_max_segments)
        self.pool = ThreadPool(1, 1, "writer")
        self.reader = ThreadPool(1, 1, "reader")      # reads the next batch while one commits
        self.identities = {identity.name: identity for identity in settings.identities}
        self.throttle = Throttle(reactor.seconds)     # refusal lines per client address
        self.tls = tls.Reloadable(self._tls_options(settings))
        self.metrics = Metrics(self.intake, reactor.seconds, settings, self.started_at)
        self.notifier = notify.Notifier(self.store, settings, reactor)
        self.group = GroupCommit(
            self.writer, reactor, lambda f, *a: threads.deferToThreadPool(reactor, self.pool, f, *a),
            gather=0.005,
            read=lambda f, *a: threads.deferToThreadPool(reactor, self.reader, f, *a))
        self.accept = self._logged(self.metrics.counting(self.group.accept))
        self.rerouter = tablewatch.Rerouter(
            reactor, lambda: Store.configured(self.settings, time.time, self.store.ring),
            lambda: self.intake.tables, (settings.limits_max_message_bytes,
                                         settings.limits_max_segments))
        # SFTP outboxes live in the store (audits with the group commit); files an older
        # gatewayd left on this node's disk are taken in once, here, by the main process
        self.outbox = sftp.Outbox(settings.paths_sftp, self.store, self.group.record)
        if not worker:
            self.outbox.import_files()
        # The main process puts reloaded files in force and reroutes fallback; a worker
        # process takes what its main process put in the store
        self.main_process = not worker
        self.supervisor = None   # the main process's workers (gateway.workers), if it has any

    def _logged(self, accept):
        """Wrap ``accept``: a WARNING line for each new message that went to fallback (with
        the reason), an ERROR line when storing failed (the sender gets no acknowledgement).
        The transports log what was accepted or refused."""
        def logged(raw: bytes, envelope: Envelope) -> defer.Deferred:
            def receipts(found):
                for receipt in found:
                    if receipt.state == "fallback" and not receipt.duplicate:
                        row = self.store.get(receipt.id)
                        log.warn("fallback id={id} zd={zd} at {destination}: {reason}",
                                 id=receipt.id, zd=receipt.zd_number,
                                 destination=receipt.destination or "-",
                                 reason=row["reason"] if row else "?")
                return found

            def failed(failure):
                if not failure.check(DecodeError, *REFUSALS):
                    log.error("not stored, not acknowledged: a message from {peer} on {channel}: "
                              "{error}", peer=envelope.identity, channel=envelope.channel,
                              error=str(failure.value) if failure.check(GatewayError) else
                              f"{failure.type.__name__}: {failure.getErrorMessage()}")
                return failure
            return defer.maybeDeferred(accept, raw, envelope).addCallbacks(receipts, failed)
        return logged

    def envelope_for(self, channel: str):
        def envelope(peer: str) -> Envelope:
            identity = self.identities.get(peer)
            return Envelope(peer, channel, identity.agb if identity else frozenset())
        return envelope

    def _factories(self) -> dict:
        """The MLLP, HTTPS and SFTP listeners' factories under their limits, and whether
        each speaks TLS: name -> (factory, tls)."""
        settings = self.settings
        self.budget = budget = Budget(settings.limits_max_buffered_bytes)
        factory = MLLPFactory(AckingHandler(self.accept, self.envelope_for("mllp")),
                              settings.limits_max_frame_bytes, settings.limits_idle_timeout_seconds,
                              tls.peer_identity, settings.limits_frame_seconds, budget)
        site = http.site(http.Api(self.intake, self.identities, settings.limits_max_message_bytes,
                                  self.accept, self.group.record, reactor.seconds), settings.limits_idle_timeout_seconds,
                         settings.limits_frame_seconds, budget)
        return {"mllp": (self._guard(factory, "MLLP"), True),
                "https": (self._guard(site, "HTTPS"), True),
                "sftp": (self._guard(self._sftp_factory(), "SFTP",
                                     settings.limits_idle_timeout_seconds, ssh.logged_in), False)}

    def listen(self) -> None:
        settings = self.settings
        listening = {"interface": settings.listen_host, "backlog": BACKLOG}
        made = self._factories()
        self.ports = {
            "mllp": reactor.listenSSL(settings.listen_mllp_port, made["mllp"][0], self.tls,
                                      **listening),
            "https": reactor.listenSSL(settings.listen_https_port, made["https"][0], self.tls,
                                       **listening),
            "sftp": reactor.listenTCP(settings.listen_sftp_port, made["sftp"][0], **listening)}
        mllp, https, sftp_port = (self.ports[name].getHost() for name in ("mllp", "https", "sftp"))
        status = webbounds.bounded_site(LocalStatus(self.metrics), 0, settings.limits_idle_timeout_seconds,
                                   settings.limits_frame_seconds, self.budget)
        metrics = reactor.listenTCP(settings.listen_metrics_port, Guard(
            status, "metrics", reactor, LOCAL_CONNECTIONS, LOCAL_CONNECTIONS,
            settings.limits_handshake_seconds, ready=lambda protocol: True,
            throttle=self.throttle), interface="127.0.0.1").getHost()
        control.listen(reactor, settings.paths_spool, self.control_commands())
        log.info("gatewayd listening mllp={host}:{mllp} https={host}:{https} sftp={host}:{sftp} "
                 "metrics=127.0.0.1:{metrics} store={store}", host=mllp.host, mllp=mllp.port,
                 https=https.port, sftp=sftp_port.port, metrics=metrics.port,
                 store=self.store.where)

    def adopt(self, inherited) -> None:
        """A worker process: serve the main process's listening sockets (``inherited``)."""
        made = self._factories()
        for name, fd in inherited.fds.items():
            factory, secure = made[name]
            if secure:
                factory = TLSMemoryBIOFactory(self.tls, False, factory)
            reactor.adoptStreamPort(fd, workers.family(fd), factory)
            os.close(fd)
        log.info("gatewayd worker {slot} serving {names} store={store}", slot=inherited.slot,
                 names=", ".join(inherited.fds), store=self.store.where)

    def control_commands(self) -> dict:
        """What gatewayctl may ask of the running daemon over the control socket."""
        def reload(request):
            parts = tuple(p for p in request.get("parts") or RELOADABLE if p in RELOADABLE)
            return self.reload(parts or RELOADABLE, str(request.get("actor", "cli"))[:80],
                               bool(request.get("recorded")), bool(request.get("reroute")))
        return {
            "status": lambda _: {"version": __version__, "started_at": self.started_at,
                                 "current_key": self.store.ring.current,
                                 "problem": self.metrics.store_problem(),
                                 "workers": {str(s): p for s, p in (
                                     self.supervisor.pids() if self.supervisor else {}).items()}},
            "reload": reload,
            "tables": lambda _: editing.as_data(self.intake.tables),
            "kick": lambda _: {"started": len(self.dispatcher.tick())},
            "reroute": lambda request: self.rerouter.run(str(request.get("actor", "cli"))[:80])
            .addCallback(lambda moved: {"moved": [vars(r) for r in moved]}),
        }

    def _guard(self, factory, name: str, idle: float | None = None,
               ready=lambda protocol: False) -> Guard:
        """``factory`` under the connection limits (TLS listeners pass their handshake
        in the Guard itself; ``ready`` says when an SSH login is done)."""
        settings = self.settings
        return Guard(factory, name, reactor, settings.limits_max_connections,
                     settings.limits_max_connections_per_client, settings.limits_handshake_seconds,
                     idle, ready, self.throttle)

    def _sftp_factory(self):
        """The SFTP server, for the accounts of the identities that have an SSH key (kept
        in two dicts that a reload updates in place)."""
        self.sftp_accounts, self.sftp_keys = {}, {}
        self.holdings = uploads.Holdings(uploads.Limits.from_settings(self.settings), reactor)
        self._update_sftp(self.settings)
        try:
            host_key = ssh_keys.Key.fromFile(str(self.settings.paths_ssh_host_key))
        except (OSError, ssh_keys.BadKeyError) as exc:
            raise ConfigError(f"SSH host key unusable: {exc}", code="E-CONFIG-SSH") from None
        return sftp.server_factory(host_key, self.sftp_accounts, self.sftp_keys)

    def _update_sftp(self, settings) -> None:
        """Make the SFTP accounts and their keys those of ``settings``' identities; raise
        ConfigError (nothing changed) when a key file is unusable."""
        accounts, authorized = {}, {}
        for identity in settings.identities:
            if not identity.ssh_key:
                continue
            try:
                authorized[identity.name] = [
                    ssh_keys.Key.fromString(identity.ssh_public_key) if identity.ssh_public_key
                    else ssh_keys.Key.fromFile(str(settings.base / identity.ssh_key))]
            except (OSError, ValueError, ssh_keys.BadKeyError) as exc:
                raise ConfigError(f"identities.{identity.name}.ssh_key unusable: {exc}",
                                  code="E-CONFIG-SSH") from None
            kept = self.sftp_accounts.get(identity.name)
            accounts[identity.name] = kept if kept and kept.mandates == identity.agb else \
                sftp.Account(identity.name, settings.paths_sftp / identity.name, identity.agb,
                             self.accept, self.outbox, uploads.Shelf(self.holdings))
        for live, new in ((self.sftp_accounts, accounts), (self.sftp_keys, authorized)):
            live.clear()
            live.update(new)

    def stop_writer(self) -> None:
        """Let the batches being read and stored finish, then close the writer's connection."""
        self.reader.stop()
        self.pool.stop()
        self.writer.store.close()

    def _tls_options(self, settings):
        pinned = frozenset(i.cert_sha256 for i in settings.identities if i.cert_sha256)
        return tls.server_options(settings.tls_ca, settings.tls_cert, settings.tls_key, pinned,
                                  self.throttle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatewayd", description="Run the gateway.")
    parser.add_argument("-c", "--config", default=os.environ.get("GATEWAY_CONFIG"),
                        help="configuration file (default: $GATEWAY_CONFIG)")
    args = parser.parse_args(argv)
    if not args.config:
        return _fail("E-CONFIG-FILE: pass -c CONFIG or set GATEWAY_CONFIG "
                     "(gatewayctl init DIR writes one)", EX_CONFIG)
    worker = workers.inherited()          # None: this is the main process
    if worker:
        workers.die_with_parent(worker.parent)
    try:
        settings = config.load(Path(args.config))
        _enough_descriptors(settings)
        spool_lock = None if worker else control.lock(settings.paths_spool)   # for its life
        gateway = Gateway(Path(args.config), settings, worker=bool(worker))
        gateway.adopt(worker) if worker else gateway.listen()
    except control.SpoolBusy as exc:
        return _fail(str(exc), EX_TEMPFAIL)
    except GatewayError as exc:
        return _fail(str(exc), EX_CONFIG)
    except CannotListenError as exc:
        return _fail(f"E-LISTEN: cannot listen on {exc.interface or '*'}:{exc.port}: "
                     f"{getattr(exc.socketError, 'strerror', None) or exc.socketError}", EX_OSERR)
    gateway.spool_lock = spool_lock
    observer = logs.observer(sys.stdout, settings.log_format, settings.log_level)
    globalLogBeginner.beginLoggingTo([workers.labelled(observer, worker.slot) if worker
                                      else observer], redirectStandardIO=False)
    shared = workers.Shared(settings.paths_spool / "workers")
    gateway.follow()          # the tables in force another node or process puts in the store
    if worker:
        workers.serve_as_worker(reactor, gateway, worker, shared, RELOADABLE)
    else:
        _serve_as_main(gateway, settings, Path(args.config), shared)
    reactor.callWhenRunning(gateway.pool.start)
    reactor.callWhenRunning(gateway.reader.start)
    reactor.addSystemEventTrigger("during", "shutdown", gateway.store.close)
    reactor.addSystemEventTrigger("during", "shutdown", gateway.stop_writer)
    reactor.run()
    return 0


def _serve_as_main(gateway: Gateway, settings, config_path: Path, shared) -> None:
    """The main process's part: pushes, chores, systemd, and its workers (if any)."""
    gateway.deliver()
    gateway.maintain()
    supervisor = gateway.supervisor = workers.Supervisor(
        reactor, config_path, gateway.ports, settings.process_workers, shared)
    shared.forget()
    gateway.metrics.elsewhere = lambda: shared.gather(range(1, settings.process_workers))
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(
        lambda: gateway.reload().addErrback(failed, "reload")))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: systemd.notify("STOPPING=1"))
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stop)
    reactor.callWhenRunning(supervisor.start)
    interval = systemd.watchdog_interval()
    if interval:
        every(interval, lambda: systemd.notify("WATCHDOG=1"), "watchdog")
    reactor.callWhenRunning(systemd.notify, "READY=1")


def _enough_descriptors(settings) -> None:
    """Raise the open-file limit to its hard maximum and check that every listener's
    connections fit, with room for the rest; raise ConfigError naming both if not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    needed = 3 * settings.limits_max_connections + LOCAL_CONNECTIONS + control.MAX_CLIENTS \
        + RESERVED_FILES
    if soft < needed:
        raise ConfigError(f"limits.max_connections = {settings.limits_max_connections} on three "
                          f"listeners needs {needed} open files, the limit is {soft} (raise "
                          "LimitNOFILE= or lower limits.max_connections)", code="E-CONFIG-LIMITS")


def _fail(text: str, status: int) -> int:
    """One line on stderr instead of a traceback; the exit status for systemd."""
    print(f"gatewayd: error {logs.escape(text)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
