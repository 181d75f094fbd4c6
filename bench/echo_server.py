"""The e2e benchmark's baseline: a minimal MLLP/TLS server on Twisted that answers AA
at once and stores nothing. Uses gatewayd's own framing and TLS setup, so that the
difference to gatewayd is the durable intake.

Run: ``python bench/echo_server.py CONFIG PORT``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from twisted.internet import reactor  # noqa: E402

from gateway import config  # noqa: E402
from gateway.codecs import hl7v2  # noqa: E402
from gateway.transports import tls  # noqa: E402
from gateway.transports.mllp import MLLPFactory  # noqa: E402


class Echo:
    def handle(self, message: bytes, peer: str) -> bytes:
        return hl7v2.ack(message, "AA")


def main(config_path: str, port: int) -> None:
    settings = config.load(Path(config_path))
    options = tls.server_options(settings.tls_ca, settings.tls_cert, settings.tls_key)
    reactor.listenSSL(port, MLLPFactory(Echo(), 16 << 20, 300), options, interface="127.0.0.1")
    print("echo listening", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
