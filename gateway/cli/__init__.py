"""gatewayctl: the administrator's command line.

Commands are thin: they call the same functions the daemon uses. Exit codes
follow sysexits: 0 success, 64 usage, 65 bad input, 66 unreadable file, 70 an
internal error (a bug; ``GATEWAY_DEBUG=1`` shows its traceback), 78 bad
configuration or route tables (each table problem on a line of its own). Every
failure is one line on stderr, ``gatewayctl: error E-…: what, where``.
"""

import argparse
import datetime as dt
import json
import os
import sys

from gateway import __version__, codecs
from gateway.cli import admin
from gateway.cli.render import as_dict, as_text
from gateway.spool.states import STATES
from gateway.errors import ConfigError, GatewayError
from gateway.routes import TableError

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_SOFTWARE, EX_CONFIG = 0, 64, 65, 66, 70, 78


class UsageError(GatewayError):
    code = "E-USAGE"


class Unreadable(GatewayError):
    code = "E-FILE"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see gatewayctl --help)")


def read_input(path: str) -> bytes:
    """The bytes of ``path`` (``-`` is stdin); raise Unreadable."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror}") from None


def _decode(path: str, fmt: str | None):
    data = read_input(path)
    name = fmt or codecs.sniff(data)
    return name, codecs.get(name).decode(data)


def cmd_inspect(args, out) -> int:
    """Print the decoded document(s), readable or as JSON."""
    _, docs = _decode(args.file, args.input_format)
    if args.json:
        data = [as_dict(doc) for doc in docs]
        out(json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False))
    else:
        out("\n\n".join(as_text(doc) for doc in docs))
    return EX_OK


def cmd_convert(args, out) -> int:
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


def cmd_validate(args, out) -> int:
    """Check a message without converting it."""
    name, docs = _decode(args.file, args.input_format)
    for doc in docs:
        out(f"ok: {name} {doc.kind} {doc.zd_number}")
    return EX_OK


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gatewayctl", description="Administer gatewayd and convert messages.")
    parser.add_argument("--version", action="version", version=f"gatewayctl {__version__}")
    parser.add_argument("-c", "--config", help="configuration file (default: $GATEWAY_CONFIG)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    formats = sorted(codecs.CODECS)

    def command(group, name, func, help_text, file=False, json_flag=True):
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        if file:
            sub.add_argument("file", metavar="FILE", help="message file, or - for stdin")
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sub

    def codec_command(name, func, help_text, json_flag=False):
        sub = command(commands, name, func, help_text, file=True, json_flag=json_flag)
        sub.add_argument("--from", dest="input_format", choices=formats,
                         help="input format (default: sniffed from the first bytes)")
        return sub

    codec_command("inspect", cmd_inspect, "show the decoded document(s)", json_flag=True)
    codec_command("convert", cmd_convert, "convert a message to another format (stdout)").add_argument(
        "--to", required=True, choices=formats, help="output format")
    codec_command("validate", cmd_validate, "check a message without converting it")
    command(commands, "init", admin.cmd_init, "write a working local setup in DIR").add_argument(
        "dir", metavar="DIR")
    command(commands, "submit", admin.cmd_submit, "ingest a message as if received",
            file=True).add_argument("--as", dest="identity", metavar="IDENTITY",
                                    help="send as this identity (default: the local administrator)")
    command(commands, "status", admin.cmd_status, "state and history of a message").add_argument(
        "key", metavar="ZD|ID")
    queue = commands.add_parser("queue", help="list queued messages").add_subparsers(
        dest="queue_command", metavar="ACTION", required=True, parser_class=_Parser)
    command(queue, "ls", admin.cmd_queue_ls, "list messages, optionally in one state").add_argument(
        "--state", choices=STATES)
    for action, text in (("hold", "stop a message until released"),
                         ("release", "put a held message back in its queue"),
                         ("retry", "try a deferred push again now")):
        command(queue, action, admin.cmd_queue_action, text).add_argument("id", type=int,
                                                                            metavar="ID")
    command(commands, "resend", admin.cmd_resend, "offer a delivered referral again").add_argument(
        "zd", metavar="ZD")
    cancel = command(commands, "cancel", admin.cmd_cancel, "cancel a referral")
    cancel.add_argument("zd", metavar="ZD")
    cancel.add_argument("--reason", required=True, help="why (sent to the institution)")
    supplement = command(commands, "supplement", admin.cmd_supplement,
                         "send additional information after a referral")
    supplement.add_argument("zd", metavar="ZD")
    supplement.add_argument("file", metavar="FILE", help="a text file (its lines) or an attachment")
    export = command(commands, "export", admin.cmd_export, "CSV report of a period (stdout)",
                     json_flag=False)
    export.add_argument("--from", dest="start", required=True, type=_date, metavar="YYYY-MM-DD")
    export.add_argument("--to", dest="end", required=True, type=_date, metavar="YYYY-MM-DD")
    command(commands, "stats", admin.cmd_stats, "queue depth and oldest age per destination")
    fallback = commands.add_parser("fallback", help="the fallback queue").add_subparsers(
        dest="fallback_command", metavar="ACTION", required=True, parser_class=_Parser)
    command(fallback, "ls", admin.cmd_queue_ls, "list messages in fallback").set_defaults(
        state="fallback")
    command(fallback, "reroute", admin.cmd_fallback_reroute,
            "route the messages in fallback again with the tables in force")
    tables = commands.add_parser("routes", help="AGB route tables").add_subparsers(
        dest="routes_command", metavar="ACTION", required=True, parser_class=_Parser)
    command(tables, "check", admin.cmd_routes_check, "validate the route tables")
    command(tables, "ls", admin.cmd_routes_ls, "show the route tables")
    command(tables, "explain", admin.cmd_routes_explain, "where would this message go, and why",
            file=True)
    add = command(tables, "add", admin.cmd_routes_change, "add an institution or a referrer")
    add.add_argument("table", choices=("institution", "referrer"))
    add.add_argument("agb", metavar="AGB")
    add.add_argument("name", metavar="NAME")
    add.add_argument("values", nargs="*", metavar="FORMAT DELIVERY | INSTITUTIONS")
    add.add_argument("--options", help="institution options, ;-separated")
    add.add_argument("--answer-address", help="referrer's answer address (sftp:ACCOUNT)")
    remove = command(tables, "rm", admin.cmd_routes_change, "remove an institution or a referrer")
    remove.add_argument("table", choices=("institution", "referrer"))
    remove.add_argument("agb", metavar="AGB")
    command(tables, "import", admin.cmd_routes_change,
            "replace both tables with the CSV files in FOLDER").add_argument(
        "folder", metavar="FOLDER")
    command(tables, "export", admin.cmd_routes_export, "copy both tables to FOLDER").add_argument(
        "folder", metavar="FOLDER")
    command(tables, "log", admin.cmd_routes_log, "changes applied to the tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("no command given (see gatewayctl --help)")
        return args.func(args, print)
    except (UsageError, admin.UsageError) as exc:
        return _fail(exc, EX_USAGE)
    except Unreadable as exc:
        return _fail(exc, EX_NOINPUT)
    except TableError as exc:
        for problem in exc.problems:
            print(f"gatewayctl: {problem}", file=sys.stderr)
        return _fail(exc, EX_CONFIG)
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
