"""gatewayctl: the administrator's command line.

Commands are thin: they call the same functions the daemon uses. Exit codes
follow sysexits: 0 success, 64 usage, 65 bad input, 66 unreadable file, 70 an
internal error (a bug; ``GATEWAY_DEBUG=1`` shows its traceback). Every
failure is one line on stderr, ``gatewayctl: error E-…: what, where``.
"""

import argparse
import json
import os
import sys

from gateway import __version__, codecs
from gateway.cli.render import as_dict, as_text
from gateway.errors import GatewayError

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_SOFTWARE = 0, 64, 65, 66, 70


class UsageError(GatewayError):
    code = "E-USAGE"


class Unreadable(GatewayError):
    code = "E-FILE"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see gatewayctl --help)")


def _read(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None


def _decode(path: str, fmt: str | None):
    data = _read(path)
    name = fmt or codecs.sniff(data)
    return name, codecs.get(name).decode(data)


def cmd_inspect(args) -> int:
    """Print the decoded document(s), readable or as JSON."""
    _, docs = _decode(args.file, args.input_format)
    if args.json:
        data = [as_dict(doc) for doc in docs]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(as_text(doc) for doc in docs))
    return EX_OK


def cmd_convert(args) -> int:
    """Write the message converted to another format on stdout."""
    _, docs = _decode(args.file, args.input_format)
    if args.to == "xml" and len(docs) > 1:
        raise UsageError(f"the input holds {len(docs)} documents and an XML file holds one; "
                         "split the input first")
    target = codecs.get(args.to)
    output = b"".join(target.encode(doc) for doc in docs)
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
    return EX_OK


def cmd_validate(args) -> int:
    """Check a message without converting it."""
    name, docs = _decode(args.file, args.input_format)
    for doc in docs:
        print(f"ok: {name} {doc.kind} {doc.zd_number}")
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gatewayctl", description="Administer gatewayd and convert messages.")
    parser.add_argument("--version", action="version", version=f"gatewayctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    formats = sorted(codecs.CODECS)

    def command(name, func, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        sub.add_argument("file", metavar="FILE", help="message file, or - for stdin")
        sub.add_argument("--from", dest="input_format", choices=formats,
                         help="input format (default: sniffed from the first bytes)")
        return sub

    command("inspect", cmd_inspect, "show the decoded document(s)").add_argument(
        "--json", action="store_true", help="print JSON instead of text")
    command("convert", cmd_convert, "convert a message to another format (stdout)").add_argument(
        "--to", required=True, choices=formats, help="output format")
    command("validate", cmd_validate, "check a message without converting it")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("no command given (see gatewayctl --help)")
        return args.func(args)
    except UsageError as exc:
        return _fail(exc, EX_USAGE)
    except Unreadable as exc:
        return _fail(exc, EX_NOINPUT)
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
