"""The gatewayctl command line: every command, its arguments and its help."""

import argparse
import datetime as dt

from gateway import __version__, codecs
from gateway.cli import admin, codec, privacy
from gateway.cli.common import Parser
from gateway.spool.states import STATES

FORMATS = sorted(codecs.CODECS)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gatewayctl", description="Administer gatewayd and convert messages.")
    parser.add_argument("--version", action="version", version=f"gatewayctl {__version__}")
    parser.add_argument("-c", "--config", help="configuration file (default: $GATEWAY_CONFIG)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _codec_commands(commands)
    _message_commands(commands)
    _queue_commands(commands)
    _route_commands(commands)
    _privacy_commands(commands)
    return parser


def _command(group, name, func, help_text, file=False, json_flag=True):
    sub = group.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(func=func)
    if file:
        sub.add_argument("file", metavar="FILE", help="message file, or - for stdin")
    if json_flag:
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
    return sub


def _group(commands, name, help_text):
    return commands.add_parser(name, help=help_text).add_subparsers(
        dest=f"{name}_command", metavar="ACTION", required=True, parser_class=Parser)


def _codec_commands(commands) -> None:
    def codec_command(name, func, help_text, json_flag=False):
        sub = _command(commands, name, func, help_text, file=True, json_flag=json_flag)
        sub.add_argument("--from", dest="input_format", choices=FORMATS,
                         help="input format (default: sniffed from the first bytes)")
        return sub

    codec_command("inspect", codec.cmd_inspect, "show the decoded document(s)", json_flag=True)
    codec_command("convert", codec.cmd_convert, "convert a message to another format (stdout)"
                  ).add_argument("--to", required=True, choices=FORMATS, help="output format")
    codec_command("validate", codec.cmd_validate, "check a message without converting it")


def _message_commands(commands) -> None:
    init = _command(commands, "init", admin.cmd_init, "write a working local setup in DIR")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--mllp-port", type=int, help="port for HL7 over MLLP/TLS (default 2575)")
    init.add_argument("--https-port", type=int, help="port for the HTTPS API (default 8443)")
    init.add_argument("--sftp-port", type=int, help="port for SFTP drops (default 2222)")
    init.add_argument("--metrics-port", type=int, help="local port for /metrics (default 9464)")
    _command(commands, "submit", admin.cmd_submit, "ingest a message as if received", file=True
             ).add_argument("--as", dest="identity", metavar="IDENTITY",
                            help="send as this identity (default: the local administrator)")
    _command(commands, "status", admin.cmd_status, "state and history of a message").add_argument(
        "key", metavar="ZD|ID")
    _command(commands, "resend", admin.cmd_resend, "offer a delivered referral again").add_argument(
        "zd", metavar="ZD")
    cancel = _command(commands, "cancel", admin.cmd_cancel, "cancel a referral")
    cancel.add_argument("zd", metavar="ZD")
    cancel.add_argument("--reason", required=True, help="why (sent to the institution)")
    supplement = _command(commands, "supplement", admin.cmd_supplement,
                          "send additional information after a referral")
    supplement.add_argument("zd", metavar="ZD")
    supplement.add_argument("file", metavar="FILE", help="a text file (its lines) or an attachment")
    export = _command(commands, "export", admin.cmd_export, "CSV report of a period (stdout)",
                      json_flag=False)
    export.add_argument("--from", dest="start", required=True, type=_date, metavar="YYYY-MM-DD")
    export.add_argument("--to", dest="end", required=True, type=_date, metavar="YYYY-MM-DD")
    _command(commands, "stats", admin.cmd_stats, "queue depth and oldest age per destination")


def _queue_commands(commands) -> None:
    queue = _group(commands, "queue", "list and act on queued messages")
    _command(queue, "ls", admin.cmd_queue_ls, "list messages, optionally in one state").add_argument(
        "--state", choices=STATES)
    for action, text in (("hold", "stop a message until released"),
                         ("release", "put a held message back in its queue"),
                         ("retry", "try a deferred push again now")):
        _command(queue, action, admin.cmd_queue_action, text).add_argument(
            "id", type=int, metavar="ID")
    fallback = _group(commands, "fallback", "the fallback queue")
    _command(fallback, "ls", admin.cmd_queue_ls, "list messages in fallback").set_defaults(
        state="fallback")
    _command(fallback, "reroute", admin.cmd_fallback_reroute,
             "route the messages in fallback again with the tables in force")


def _route_commands(commands) -> None:
    tables = _group(commands, "routes", "AGB route tables")
    _command(tables, "check", admin.cmd_routes_check, "validate the route tables")
    _command(tables, "ls", admin.cmd_routes_ls, "show the route tables")
    _command(tables, "explain", admin.cmd_routes_explain, "where would this message go, and why",
             file=True)
    add = _command(tables, "add", admin.cmd_routes_change, "add an institution or a referrer")
    add.add_argument("table", choices=("institution", "referrer"))
    add.add_argument("agb", metavar="AGB")
    add.add_argument("name", metavar="NAME")
    add.add_argument("values", nargs="*", metavar="FORMAT DELIVERY | INSTITUTIONS")
    add.add_argument("--options", help="institution options, ;-separated")
    add.add_argument("--answer-address", help="referrer's answer address (sftp:ACCOUNT)")
    remove = _command(tables, "rm", admin.cmd_routes_change, "remove an institution or a referrer")
    remove.add_argument("table", choices=("institution", "referrer"))
    remove.add_argument("agb", metavar="AGB")
    _command(tables, "import", admin.cmd_routes_change,
             "replace both tables with the CSV files in FOLDER").add_argument("folder", metavar="FOLDER")
    _command(tables, "export", admin.cmd_routes_export, "copy both tables to FOLDER").add_argument(
        "folder", metavar="FOLDER")
    _command(tables, "log", admin.cmd_routes_log, "changes applied to the tables")


def _privacy_commands(commands) -> None:
    keys = _group(commands, "keys", "payload and audit keys")
    _command(keys, "init", privacy.cmd_keys_init, "create the key file (0600)")
    _command(keys, "rotate", privacy.cmd_keys_rotate, "add a new key for new files"
             ).add_argument("--reencrypt", action="store_true",
                            help="also seal every stored payload and outbox file again")
    _command(keys, "retire", privacy.cmd_keys_retire,
             "remove a key that no stored file is sealed with").add_argument("key", metavar="KEY")
    purge = _command(commands, "purge", privacy.cmd_purge,
                     "delete what the retention rules no longer allow to keep")
    purge.add_argument("--dry-run", action="store_true", help="only show what would be purged")
    purge.add_argument("--as-of", type=_date, metavar="YYYY-MM-DD",
                       help="apply the rules as on this date (default: now)")
    trail = _group(commands, "audit", "the NEN 7513 audit log")
    _command(trail, "verify", privacy.cmd_audit_verify, "check the hash chain")
    query = _command(trail, "query", privacy.cmd_audit_query, "who touched what, when")
    query.add_argument("--zd", metavar="ZD", help="a ZD number (its answer included)")
    query.add_argument("--patient", metavar="BSN", help="a patient's BSN (searched by its hash)")
    query.add_argument("--who", metavar="ACTOR", help="e.g. https:zis-eemland, sftp:his-brink")
    query.add_argument("--from", dest="start", type=_date, metavar="YYYY-MM-DD")
    query.add_argument("--to", dest="end", type=_date, metavar="YYYY-MM-DD",
                       help="up to the start of this day")
    show = _command(commands, "show", privacy.cmd_show,
                    "print a stored message's content (audited)", json_flag=False)
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--converted", action="store_true",
                      help="the converted content instead of what was received")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
