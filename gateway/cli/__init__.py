"""gatewayctl: the administrator's command line.

Commands are thin: they call the same functions the daemon uses. Exit codes
follow sysexits: 0 success, 64 usage, 65 bad input, 66 unreadable file, 69 no
gatewayd running (``reload``), 70 an internal error (a bug; ``GATEWAY_DEBUG=1`` shows its traceback), 78 bad
configuration or route tables (each table problem on a line of its own). Every
failure is one line on stderr, ``gatewayctl: error E-…: what, where``.
"""

import os
import sys

from gateway.cli.common import Unreadable, UsageError
from gateway.cli.live import NotRunning
from gateway.cli.parser import build_parser
from gateway.errors import ConfigError, GatewayError
from gateway.routes import TableError

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE, EX_SOFTWARE, EX_CONFIG = \
    0, 64, 65, 66, 69, 70, 78


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("no command given (see gatewayctl --help)")
        return args.func(args, print)
    except UsageError as exc:
        return _fail(exc, EX_USAGE)
    except Unreadable as exc:
        return _fail(exc, EX_NOINPUT)
    except TableError as exc:          # each problem once, then what it means
        for problem in exc.problems:
            print(f"gatewayctl: {problem}", file=sys.stderr)
        print(f"gatewayctl: error {exc.code}: {len(exc.problems)} problem(s) in the route "
              "tables; nothing changed", file=sys.stderr)
        return EX_CONFIG
    except NotRunning as exc:
        return _fail(exc, EX_UNAVAILABLE)
    except ConfigError as exc:
        return _fail(exc, EX_CONFIG)
    except GatewayError as exc:
        return _fail(exc, EX_DATAERR)
    except BrokenPipeError:
        return EX_OK
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("GATEWAY_DEBUG"):
            raise
        print(f"gatewayctl: internal error E-INTERNAL: {type(exc).__name__} "
              "(set GATEWAY_DEBUG=1 for details)", file=sys.stderr)
        return EX_SOFTWARE


def _fail(exc: GatewayError, status: int) -> int:
    print(f"gatewayctl: error {exc}", file=sys.stderr)
    return status
