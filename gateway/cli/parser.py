"""The gatewayctl command line: every command, its arguments and its help."""

import argparse
import datetime as dt

from gateway import __version__, codecs
from gateway.cli import admin, codec, identities as identities_cli, live, privacy, storage
from gateway.cli import queue as queue_cli
from gateway.cli.common import Parser

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
    identities_cli.add_commands(_group(commands, "identities", "who may connect: onboarding"),
                                _command)
    _storage_commands(commands)
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


def _queue_commands(commands) -> None:
    queue = _group(commands, "queue", "list and act on queued messages")
    _listing(_command(queue, "ls", queue_cli.cmd_queue_ls,
                      "queued messages, oldest first (--state all: every message)"), "queue")
    for action, text in (("hold", "stop messages until released"),
                         ("release", "put held messages back in their queue"),
                         ("retry", "try deferred pushes again now")):
        sub = _command(queue, action, queue_cli.cmd_queue_action, text)
        sub.add_argument("id", type=int, metavar="ID", nargs="?", help="one message")
        sub.add_argument("--destination", metavar="AGB", help="every one at this destination")
        sub.add_argument("--all", action="store_true", help="every one, everywhere")
    fallback = _group(commands, "fallback", "the fallback queue")
    _listing(_command(fallback, "ls", queue_cli.cmd_queue_ls, "messages in fallback, oldest first"),
             "fallback")
    _command(fallback, "reroute", queue_cli.cmd_fallback_reroute,
             "route the messages in fallback again with the tables in force")
    discard = _command(commands, "discard", queue_cli.cmd_discard,
                       "throw away messages in fallback or held (kept in history, audited)")
    discard.add_argument("ids", type=int, nargs="+", metavar="ID")
    discard.add_argument("--reason", required=True, help="why (kept in the history)")
    reroute = _command(commands, "reroute", queue_cli.cmd_reroute,
                       "send one message in fallback or held to another institution")
    reroute.add_argument("id", type=int, metavar="ID")
    reroute.add_argument("--to", required=True, metavar="AGB", help="the institution's AGB code")
    stats = _command(commands, "stats", queue_cli.cmd_stats,
                     "queue depth and oldest age per destination and state")
    stats.add_argument("--ages", action="store_true",
                       help="messages per destination in age buckets (minutes), like qshape")
    stats.add_argument("--destination", metavar="AGB", help="only this destination")
    _command(commands, "reload", live.cmd_reload,
             "make the running gatewayd reload tables, identities, certificates and keys")


def _listing(sub, view: str) -> None:
    sub.set_defaults(queue_view=view)
    if view == "queue":
        sub.add_argument("--state", action="append", metavar="STATE",
                         help="only this state (repeatable; all: every state)")
    else:
        sub.set_defaults(state=None)
    sub.add_argument("--destination", metavar="AGB", help="only this destination")
    sub.add_argument("--since", metavar="TIME", help="received at or after (ISO 8601; local "
                     "time unless an offset is given)")
    sub.add_argument("--until", metavar="TIME", help="received before (ISO 8601)")
    sub.add_argument("--zd", metavar="ZD", help="this ZD number (and its answer)")
    sub.add_argument("--sender", metavar="AGB", help="only this sender AGB")
    sub.add_argument("--limit", type=int, default=100, metavar="N", help="page size (100)")
    sub.add_argument("--after", type=int, metavar="ID",
                     help="the page after this message (the last id of the previous page)")


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
    change = _command(tables, "set", admin.cmd_routes_change,
                      "change columns of one row in place")
    change.add_argument("table", choices=("institution", "referrer"))
    change.add_argument("agb", metavar="AGB")
    for column in ("name", "format", "delivery", "options", "institutions", "answer-address"):
        change.add_argument(f"--{column}", metavar="VALUE")
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
    show.add_argument("--raw", action="store_true",
                      help="the bytes as stored (in a terminal HL7 is shown a segment a line)")


def _storage_commands(commands) -> None:
    store = _group(commands, "store", "the store: schema and checks")
    _command(store, "upgrade", storage.cmd_store_upgrade,
             "bring an older store to the current schema (gatewayd does it at start)")
    _command(store, "verify", storage.cmd_store_verify,
             "integrity check, audit chain and every payload of the store")
    _command(store, "migrate", storage.cmd_store_migrate,
             "copy the SQLite store into an empty PostgreSQL database (gatewayd stopped; "
             "resumable)").add_argument("--to", required=True, metavar="URL",
                                        help="postgresql://USER@HOST:PORT/DATABASE")
    backup = _command(commands, "backup", storage.cmd_backup,
                      "backup DEST: a consistent copy while gatewayd runs; backup verify SRC")
    backup.add_argument("words", nargs="+", metavar="DEST | verify SRC")
    backup.add_argument("--with-keys", metavar="FILE",
                        help="also write the key file to FILE, outside DEST (keep them apart)")
    backup.add_argument("--keys", metavar="FILE",
                        help="backup verify: the key file to open it with (default: the one "
                             "configured)")
    _command(commands, "restore", storage.cmd_restore,
             "put the backup SRC into the empty spool in use").add_argument("src", metavar="SRC")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
