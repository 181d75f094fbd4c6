"""gatewayd: wires the configuration to the listeners and runs the Twisted reactor.

``gatewayd -c CONFIG`` runs in the foreground (systemd does the daemonizing) and
logs one line per event to stdout, never patient data. It serves HL7 over MLLP
and the HTTPS API, both with mutual TLS: every message goes through the same
``Intake.accept`` as ``gatewayctl submit``, and the ACK (or 202) is written only
after the store committed. Every second the dispatcher starts due pushes to
institutions with ``mllp://`` delivery (SFTP outboxes come with the SFTP server).
A client certificate's common name names its identity; an unknown name has no
mandates, so everything it sends is refused (AR). SIGTERM and SIGINT stop it.
"""

import argparse
import os
import sys
from pathlib import Path

from twisted.internet import reactor, ssl, task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web import server

from gateway import config, routes
from gateway.errors import GatewayError
from gateway.intake import Envelope, Intake
from gateway.spool.delivery import Dispatcher
from gateway.spool.store import Store
from gateway.transports import http, tls
from gateway.transports.hl7handler import AckingHandler
from gateway.transports.mllp import MLLPFactory
from gateway.transports.mllp_client import MLLPDeliverer

EX_CONFIG = 78
log = Logger(namespace="gatewayd")


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
        settings = config.load(Path(args.config))
        start(settings)
    except GatewayError as exc:
        print(f"gatewayd: error {exc}", file=sys.stderr)
        return EX_CONFIG
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    reactor.run()
    return 0


def start(settings) -> None:
    """Open the store and route tables and start listening; raise GatewayError."""
    store = Store(settings.paths_spool, reactor.seconds)
    intake = Intake(store, routes.load(settings.paths_routes), settings.limits_max_message_bytes)
    identities = {identity.name: identity for identity in settings.identities}

    def envelope_for(peer: str) -> Envelope:
        identity = identities.get(peer)
        return Envelope(peer, "mllp", identity.agb if identity else frozenset())

    handler = AckingHandler(intake.accept, envelope_for)
    factory = MLLPFactory(handler, settings.limits_max_frame_bytes,
                          settings.limits_idle_timeout_seconds, tls.peer_identity)
    options = tls.server_options(settings.tls_ca, settings.tls_cert, settings.tls_key)
    mllp = reactor.listenSSL(settings.listen_mllp_port, factory, options,
                             interface=settings.listen_host).getHost()
    site = server.Site(http.Api(intake, settings))
    site.displayTracebacks = False
    https = reactor.listenSSL(settings.listen_https_port, site, options,
                              interface=settings.listen_host).getHost()
    log.info("gatewayd listening mllp={host}:{mllp} https={host}:{https}", host=mllp.host,
             mllp=mllp.port, https=https.port)
    deliverer = MLLPDeliverer(reactor, ssl.Certificate.loadPEM(settings.tls_ca.read_bytes()),
                              ssl.PrivateCertificate.loadPEM(settings.tls_cert.read_bytes()
                                                             + settings.tls_key.read_bytes()),
                              timeout=30)
    dispatcher = Dispatcher(store, settings, deliverer, reactor.seconds, schemes=("mllp://",))
    ticking = task.LoopingCall(dispatcher.tick)
    ticking.clock = reactor
    ticking.start(1.0, now=True).addErrback(lambda failure: log.failure("delivery loop", failure))
    reactor.addSystemEventTrigger("before", "shutdown", store.close)


if __name__ == "__main__":
    sys.exit(main())
