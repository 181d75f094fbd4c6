"""gatewayd's log: one line per gateway event, at a level that means something.

``observer(stream, format, level, environ)`` is the one observer the daemon
installs. Events from gatewayd's own loggers (namespace ``gatewayd…``) keep
their level; everything Twisted and conch say about their internals (packet
dispatching, key exchange, a client's disconnect message) is DEBUG, except an
unhandled failure, which stays an ERROR line. Below ``log.level`` nothing is
written.

Formats: ``text`` (default) is ``TIME LEVEL [system] message``; ``json`` is one
object a line (``time``, ``level``, ``system``, ``message`` and the event's
plain fields) for log shippers. Under systemd (``$JOURNAL_STREAM`` set, so
stdout goes to journald) each text line starts with an sd-daemon ``<N>``
priority prefix and no time (journald stamps it), so ``journalctl -p warning``
selects by level. Times are UTC, ISO 8601 with ``Z``.

Values in events come from the network (certificate names, file names): every
control character in a line is escaped (``\\n``, ``\\x1b``), so nobody can forge
a line. A failure is one line: its type and message, never a traceback. What
callers log carries identifiers, never patient data.
"""

import datetime as dt
import json
import os
import time

from twisted.logger import (FilteringLogObserver, ILogObserver, LogLevel, PredicateResult,
                            formatEvent)
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warning": LogLevel.warn,
          "error": LogLevel.error}
FORMATS = ("text", "json")
NAMES = {LogLevel.debug: "DEBUG", LogLevel.info: "INFO", LogLevel.warn: "WARNING",
         LogLevel.error: "ERROR", LogLevel.critical: "CRITICAL"}
PRIORITIES = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3,
              LogLevel.critical: 2}        # syslog priorities, as sd-daemon(3) prefixes
OURS = "gatewayd"
WARNINGS_PER_MINUTE = 100     # lines of one kind of warning a minute
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with every character that is not printable — C0 and C1 controls, line and
    paragraph separators, bidirectional overrides — written as an escape: one line, read
    as it is stored, no forging."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _ESCAPES.get(c) or (
        f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}") for c in text)


def level_of(event: dict) -> LogLevel:
    """The level an event is written at: its own for gatewayd's events; DEBUG for
    Twisted's internals, ERROR for their unhandled failures."""
    level = event.get("log_level", LogLevel.info)
    if str(event.get("log_namespace", "")).startswith(OURS):
        return level
    if "log_failure" in event and level >= LogLevel.error:
        return LogLevel.error
    return LogLevel.debug


def message(event: dict) -> str:
    """The event's text on one line; a failure adds its type and message. gatewayd's own
    lines use plain ``{name}``/``{name!r}`` fields, formatted by ``str.format_map``
    (Twisted's general formatter costs several times as much on every accepted message)."""
    form = event.get("log_format")
    try:
        text = form.format_map(event) if str(event.get("log_namespace", "")).startswith(OURS) \
            else formatEvent(event)
    except (AttributeError, KeyError, IndexError, ValueError):
        text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}: {failure.type.__name__}: {failure.getErrorMessage()}"
    if event.get("log_held"):
        text += f" ({event['log_held']} more like this held back in the last minute)"
    return escape(text)


def _utc(seconds: float | None) -> str:
    moment = dt.datetime.fromtimestamp(seconds or 0, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(event: dict) -> dict:
    return {key: value for key, value in event.items() if not key.startswith("log_")
            and isinstance(value, (str, int, float, bool)) and key != "format"}


@implementer(ILogObserver)
class LineObserver:
    """Writes each event as one line (text, text with journald prefixes, or JSON)."""

    def __init__(self, stream, format: str = "text", journal: bool = False):
        self.stream, self.format, self.journal = stream, format, journal

    def __call__(self, event: dict) -> None:
        level = level_of(event)
        system = escape(str(event.get("log_system") or event.get("log_namespace") or "-"))
        if self.format == "json":
            data = {"time": _utc(event.get("log_time")), "level": NAMES[level].lower(),
                    "system": system, "message": message(event)}
            data.update({k: escape(v) if isinstance(v, str) else v
                         for k, v in _plain(event).items() if k not in data})
            line = json.dumps(data, ensure_ascii=False)
            if self.journal:
                line = f"<{PRIORITIES[level]}>{line}"
        elif self.journal:
            line = f"<{PRIORITIES[level]}>{NAMES[level]} [{system}] {message(event)}"
        else:
            line = f"{_utc(event.get('log_time'))} {NAMES[level]} [{system}] {message(event)}"
        self.stream.write(line + "\n")
        self.stream.flush()


def observer(stream, format: str = "text", level: str = "info", environ=os.environ,
             clock=time.monotonic) -> ILogObserver:
    """The daemon's observer: ``format`` text or json, nothing below ``level``, journald
    priority prefixes when ``$JOURNAL_STREAM`` says stdout is the journal. WARNING lines
    of one kind (one format) are kept to ``WARNINGS_PER_MINUTE`` a minute, so clients
    that cause refusals from many addresses cannot flood the log (and make journald's
    rate limit drop the lines that matter); the next one written says how many were held
    back. ERROR and CRITICAL lines are never held back."""
    threshold = LEVELS[level]
    warnings = Throttle(clock, burst=WARNINGS_PER_MINUTE)

    def wanted(event: dict) -> PredicateResult:
        level = level_of(event)
        if level < threshold:
            return PredicateResult.no
        if level == LogLevel.warn:
            held = warnings.allow(event.get("log_format"))
            if held is None:
                return PredicateResult.no
            if held:
                event["log_held"] = held
        return PredicateResult.yes
    return FilteringLogObserver(LineObserver(stream, format, bool(environ.get("JOURNAL_STREAM"))),
                                [wanted])


class Throttle:
    """Lines (or records) a client can cause, kept to ``burst`` per key (an address, an
    identity) per ``window`` seconds; those held back are counted and the next one
    written for that key says how many. Keys past ``max_keys`` are forgotten oldest first,
    so many addresses cannot grow it without bound."""

    def __init__(self, clock, burst: int = 10, window: float = 60.0, max_keys: int = 10_000):
        self.clock, self.burst, self.window, self.max_keys = clock, burst, window, max_keys
        self.seen: dict = {}          # key -> [window start, lines written, lines held back]

    def allow(self, key) -> int | None:
        """None when ``key`` is over its burst (one more held back); otherwise how many were
        held back before this one."""
        now = self.clock()
        entry = self.seen.pop(key, None)
        if entry is None or now - entry[0] >= self.window:
            entry = [now, 0, entry[2] if entry else 0]
        self.seen[key] = entry                  # most recent last: the oldest go first
        if len(self.seen) > self.max_keys:
            del self.seen[next(iter(self.seen))]
        if entry[1] >= self.burst:
            entry[2] += 1
            return None
        entry[1] += 1
        held, entry[2] = entry[2], 0
        return held

    def warn(self, logger, key, format: str, **fields) -> None:
        held = self.allow(key)
        if held is None:
            return
        if held:
            format += " ({held} similar line(s) held back before this one)"
            fields["held"] = held
        logger.warn(format, **fields)
