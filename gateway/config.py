"""Every setting of gatewayd, declared once: name, type, default, bounds, help.

``load(path)`` reads a TOML file into a frozen Config; an unknown key, a wrong
type or a value out of bounds is a ConfigError that names the key. Paths are
taken relative to the configuration file's folder. ``render()`` writes the
default file that ``gatewayctl init`` installs, so it never drifts from here.
Identities (``[identities.NAME]``) are described in ``gateway/identities.py``.
"""

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gateway import identities
from gateway.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    key: str            # "section.name" in the TOML file
    type: type          # int or str or Path
    default: object
    help: str
    low: int | None = None
    high: int | None = None
    choices: tuple = ()       # for str settings: the values allowed (empty: any)
    prefixes: tuple = ()      # for str settings: empty, or starting with one of these
    pattern: str = ""         # for str settings: empty, or matching this whole (and its length)
    shown: str = ""           # the pattern as the help shows it

    @property
    def attribute(self) -> str:
        return self.key.replace(".", "_")


MINUTE, HOUR, DAY = 60, 3600, 86400
SETTINGS = (
    Setting("paths.spool", Path, "spool", "spool: the SQLite store (rows, audit log, sealed "
            "payloads) unless store.url names another; the control socket and its lock"),
    Setting("store.url", str, "", "the store in PostgreSQL, as postgresql://USER@HOST:PORT/DB "
            "(a password from ~/.pgpass or PGPASSWORD); empty: SQLite in paths.spool",
            prefixes=("postgresql://", "postgres://")),
    Setting("store.tables_poll_seconds", int, 2, "how often a node asks the store whether "
            "the route tables or identities in force changed (another node's change)", 1, 60),
    Setting("paths.routes", Path, "routes",
            "route tables (institutions.csv, referrers.csv, optional mailboxes.csv)"),
    Setting("paths.sftp", Path, "sftp", "SFTP account folders (inbox/, outbox/, errors/)"),
    Setting("paths.ssh_host_key", Path, "ssh/host_key", "the SFTP server's host key (0600)"),
    Setting("paths.keys", Path, "keys/gatewayd.keys",
            "payload and audit keys (0600, outside the spool; gatewayctl keys init)"),
    Setting("retry.first_seconds", int, 5 * MINUTE, "first retry of a failed push", 1, DAY),
    Setting("retry.max_seconds", int, HOUR, "longest gap between retries", 1, 7 * DAY),
    Setting("retry.lifetime_seconds", int, 5 * DAY,
            "after this long undelivered, a push goes to fallback", MINUTE, 60 * DAY),
    Setting("delivery.max_in_flight", int, 4, "pushes at once per destination, all nodes "
            "together", 1, 100),
    Setting("delivery.timeout_seconds", int, 30, "a push (MLLP: connection, TLS handshake "
            "and ACK) not done within this long is aborted and retried", 1, 600),
    Setting("delivery.lease_seconds", int, 60, "a node's claim on a push it makes: renewed "
            "while the push runs; when its node dies, another node pushes the message again "
            "this long after (at least the push timeout + 5 s)", 6, 3600),
    Setting("node.name", str, "", "this node's name in delivery claims and job leases, "
            "different on every node of one store; empty: host name:process id",
            pattern=r"[A-Za-z0-9._:-]{0,64}", shown="letters, digits, . _ : -, at most 64"),
    Setting("node.job_lease_seconds", int, 30, "a once-only job (purge, notifications) runs "
            "on one node, which renews its lease every 5 s; when that node dies, another takes "
            "the job over this long after", 10, 3600),
    Setting("limits.max_message_bytes", int, 16 * 1024 * 1024, "largest message accepted",
            1024, 256 * 1024 * 1024),
    Setting("listen.host", str, "127.0.0.1", "address the listeners bind to"),
    Setting("listen.mllp_port", int, 2575, "HL7 over MLLP with mutual TLS", 1, 65535),
    Setting("listen.https_port", int, 8443, "HTTPS API with mutual TLS", 1, 65535),
    Setting("listen.sftp_port", int, 2222, "SFTP drops, public keys only", 1, 65535),
    Setting("limits.max_upload_bytes", int, 16 * 1024 * 1024, "largest SFTP upload",
            1024, 256 * 1024 * 1024),
    Setting("listen.metrics_port", int, 9464,
            "/metrics and /healthz without TLS, on 127.0.0.1 only", 1, 65535),
    Setting("tls.ca", Path, "tls/ca.pem", "CA that client certificates must chain to"),
    Setting("tls.cert", Path, "tls/server.pem", "the gateway's certificate"),
    Setting("tls.key", Path, "tls/server.key", "the gateway's private key (0600)"),
    Setting("limits.max_frame_bytes", int, 16 * 1024 * 1024,
            "largest MLLP frame; a larger one closes the connection", 1024, 256 * 1024 * 1024),
    Setting("limits.idle_timeout_seconds", int, 300,
            "close connections silent this long (MLLP, HTTPS, SFTP)", 1, 86400),
    Setting("limits.handshake_seconds", int, 30,
            "a TLS handshake or an SSH login must be done within this long", 1, 3600),
    Setting("limits.frame_seconds", int, 120, "an MLLP frame or an HTTPS request (headers "
            "and body) must arrive whole within this long of its first byte", 1, 3600),
    Setting("limits.max_buffered_bytes", int, 64 * 1024 * 1024, "bytes of incoming messages "
            "(MLLP frames, HTTPS bodies) held until answered, all connections together; the "
            "connection that pushes past it is closed", 1024 * 1024, 4 * 1024 * 1024 * 1024),
    Setting("limits.max_connections", int, 500, "open connections per listener", 1, 100000),
    Setting("limits.max_connections_per_client", int, 50, "open connections per listener "
            "from one address, and from one certificate identity", 1, 100000),
    Setting("limits.max_segments", int, 10000, "segments (lines) in one HL7 or EDIFACT "
            "message", 100, 10000000),
    Setting("limits.sftp_uploads_per_account", int, 20, "SFTP uploads an account may have "
            "open or staged (.part/.tmp, closed but not renamed) at once", 1, 10000),
    Setting("limits.sftp_bytes_per_account", int, 64 * 1024 * 1024, "bytes of open and staged "
            "SFTP uploads held in memory for one account", 1024, 4 * 1024 * 1024 * 1024),
    Setting("limits.sftp_bytes_total", int, 256 * 1024 * 1024, "bytes of open and staged SFTP "
            "uploads held in memory, all accounts together", 1024, 16 * 1024 * 1024 * 1024),
    Setting("limits.sftp_staged_seconds", int, HOUR, "a staged upload (.part/.tmp) not "
            "renamed within this long is discarded", 1, 7 * DAY),
    Setting("limits.sftp_handles_per_session", int, 64, "files and folders one SFTP session "
            "may have open at once", 1, 10000),
    Setting("limits.sftp_channels_per_connection", int, 4, "SSH session channels (each an "
            "SFTP session) open at once on one connection", 1, 1000),
    Setting("limits.sftp_error_files", int, 1000, ".err files kept in an SFTP account's "
            "errors/ folder; past it the oldest go", 10, 1000000),
    Setting("limits.min_free_mb", int, 64, "below this much free space on the spool's file "
            "system, /healthz answers 503 (the store is about to fail)", 0, 1024 * 1024),
    Setting("process.workers", int, 1, "gatewayd processes on this machine serving the MLLP, "
            "HTTPS and SFTP listeners together: the main one and workers-1 worker processes "
            "(1: one process, as before)", 1, 64),
    Setting("operations.cancel_days", int, 180, "a referral can be cancelled this long after "
            "sending", 1, 3650),
    Setting("retention.referral_days", int, 180, "referrals, cancellations and supplements are "
            "purged this long after the last message of their case", 1, 36500),
    Setting("retention.teleconsult_days", int, 548, "teleconsult requests and answers are "
            "purged this long after the last one (548 days: 18 months)", 1, 36500),
    Setting("retention.audit_days", int, 1827, "audit records are kept this long (5 years)",
            1, 36500),
    Setting("retention.sftp_error_days", int, 30, ".err files in SFTP errors/ folders are "
            "removed this long after they were written", 1, 36500),
    Setting("notify.email_to", str, "", "comma-separated addresses for notifications "
            "(empty: no e-mail)"),
    Setting("notify.email_from", str, "gatewayd@localhost", "sender address of notifications"),
    Setting("notify.smtp_host", str, "localhost", "SMTP server (STARTTLS when it offers it)"),
    Setting("notify.smtp_port", int, 25, "SMTP port", 1, 65535),
    Setting("notify.webhook_url", str, "", "HTTPS URL notifications are POSTed to as JSON "
            "(empty: none)"),
    Setting("notify.ca", str, "", "CA file the SMTP server's (STARTTLS) and the webhook's "
            "certificates must chain to (empty: the system's trusted CAs)"),
    Setting("log.format", str, "text", "text, or json for log shippers (one object a line)",
            choices=("text", "json")),
    Setting("log.level", str, "info", "write events at this level and above",
            choices=("debug", "info", "warning", "error")),
    Setting("notify.unpulled_hours", int, 24, "notify when an institution leaves a message "
            "unpulled this long", 1, 24 * 365),
)
_BY_KEY = {setting.key: setting for setting in SETTINGS}
PORTS = ("listen.mllp_port", "listen.https_port", "listen.sftp_port", "listen.metrics_port")

Config = dataclasses.make_dataclass(
    "Config", [(s.attribute, s.type) for s in SETTINGS] + [("base", Path), ("identities", tuple)],
    frozen=True)
Config.__doc__ = "The settings in force; build it with load() or defaults()."


def identity(settings: "Config", name: str) -> "identities.Identity":
    """The identity called ``name``; raise ConfigError if there is none."""
    for found in settings.identities:
        if found.name == name:
            return found
    raise ConfigError(f"no identity {name!r} in the configuration", code="E-CONFIG-IDENTITY")


def defaults(base: Path = Path(".")) -> "Config":
    """A Config with every default, paths relative to ``base``."""
    return _build({}, base)


def load(path: Path) -> "Config":
    """Read the TOML file at ``path``; raise ConfigError naming any bad key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", code="E-CONFIG-FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=str(path), code="E-CONFIG-SYNTAX") from None
    return _from_data(data, Path(path))


def loads_checked(text: str, path: Path) -> "Config":
    """The Config that ``text`` would be as the file ``path`` (nothing is written); raise
    ConfigError naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=str(path), code="E-CONFIG-SYNTAX") from None
    return _from_data(data, Path(path))


def _from_data(data: dict, path: Path) -> "Config":
    found = identities.parse(data.pop("identities", {}), str(path))
    values = {}
    for section, entries in data.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"unknown setting {section!r}", where=str(path), code="E-CONFIG-KEY")
        for name, value in entries.items():
            values[f"{section}.{name}"] = value
    return _build(values, Path(path).resolve().parent, str(path), found)


def _build(values: dict, base: Path, where: str = "defaults",
           known: tuple = ()) -> "Config":
    unknown = sorted(set(values) - set(_BY_KEY))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(_BY_KEY)})",
                          where=where, code="E-CONFIG-KEY")
    built = {}
    for setting in SETTINGS:
        value = values.get(setting.key, setting.default)
        built[setting.attribute] = _check(setting, value, base, where)
    if built["delivery_lease_seconds"] < built["delivery_timeout_seconds"] + 5:
        least = built["delivery_timeout_seconds"] + 5
        raise ConfigError(f"delivery.lease_seconds = {built['delivery_lease_seconds']} must be at "
                          f"least delivery.timeout_seconds + 5 ({least}): a claim may not run "
                          "out while its push can still succeed", where=where,
                          code="E-CONFIG-VALUE")
    ports = [(key, built[key.replace(".", "_")]) for key in PORTS]
    for index, (key, port) in enumerate(ports):
        for other, same in ports[:index]:
            if port == same:
                raise ConfigError(f"{key} = {port} is also {other}; each listener needs its "
                                  "own port", where=where, code="E-CONFIG-VALUE")
    return Config(**built, base=base, identities=known)


def _check(setting: Setting, value, base: Path, where: str):
    if setting.type is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{setting.key} must be a path", where=where, code="E-CONFIG-VALUE")
        return (base / value).resolve()
    if setting.type is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{setting.key} must be a whole number", where=where,
                              code="E-CONFIG-VALUE")
        if not setting.low <= value <= setting.high:
            raise ConfigError(f"{setting.key} = {value} is outside {setting.low}..{setting.high}",
                              where=where, code="E-CONFIG-VALUE")
        return value
    if not isinstance(value, setting.type):
        raise ConfigError(f"{setting.key} must be a {setting.type.__name__}", where=where,
                          code="E-CONFIG-VALUE")
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{setting.key} = {value!r} is not one of {', '.join(setting.choices)}",
                          where=where, code="E-CONFIG-VALUE")
    if setting.pattern and not re.fullmatch(setting.pattern, value):
        raise ConfigError(f"{setting.key} = {value!r} must be {setting.shown}", where=where,
                          code="E-CONFIG-VALUE")
    if setting.prefixes and value and not value.startswith(setting.prefixes):
        raise ConfigError(f"{setting.key} must be empty or start with "
                          f"{' or '.join(setting.prefixes)}", where=where, code="E-CONFIG-VALUE")
    return value


def render(samples: bool = False) -> str:
    """The default configuration file, with each setting's help and bounds as comments;
    with ``samples``, also the sample identities that match the sample route tables."""
    lines = ["# gatewayd configuration: every setting with its default."]
    sections = dict.fromkeys(setting.key.split(".")[0] for setting in SETTINGS)
    for section in sections:
        lines += ["", f"[{section}]"]
        for setting in SETTINGS:
            head, name = setting.key.split(".")
            if head != section:
                continue
            bounds = f" ({setting.low}..{setting.high})" if setting.low is not None else \
                f" ({', '.join(setting.choices)})" if setting.choices else \
                f" ({setting.shown})" if setting.shown else ""
            lines.append(f"# {setting.help}{bounds}")
            value = f'"{setting.default}"' if setting.type in (str, Path) else str(setting.default)
            lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n" + (identities.SAMPLES if samples else "")
