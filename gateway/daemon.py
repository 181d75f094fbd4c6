"""gatewayd: the daemon (TLS, SFTP and delivery come with the daemon issue).

Until then ``gatewayd`` says so and exits with EX_UNAVAILABLE; ``make run``
shows the codecs at work instead.
"""

import sys

EX_UNAVAILABLE = 69


def main(argv: list[str] | None = None) -> int:
    print("gatewayd: the network daemon is not part of this release yet; "
          "use gatewayctl inspect/convert/validate", file=sys.stderr)
    return EX_UNAVAILABLE
