"""gatewayd's log lines: levels that mean something, Twisted's internals at DEBUG,
journald priorities under systemd, JSON for shippers, nothing forged by a newline."""

import io
import json

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from gateway import logs


def emit(observer, namespace: str, level: LogLevel, text: str, **fields) -> None:
    publisher = LogPublisher(observer)
    getattr(Logger(namespace=namespace, observer=publisher), level.name)(text, **fields)


def test_text_line_with_utc_time_level_and_escaped_values():
    """A text line: UTC time with Z, the level, the system; a newline in a value is escaped
    so no second line can be forged."""
    out = io.StringIO()
    emit(logs.observer(out, environ={}), "gatewayd.sftp", LogLevel.warn,
         "SFTP {account} refused: {what}", account="his-brink",
         what="name 'x\n2026-01-01T00:00:00Z INFO forged'")
    (line,) = out.getvalue().splitlines()
    assert line.split()[0].endswith("Z") and " WARNING [gatewayd.sftp] SFTP his-brink refused" in line
    assert "\\n2026-01-01" in line


def test_twisted_internals_are_debug_and_filtered_at_info():
    """conch's chatter (even its ERROR 'Got remote error') is DEBUG: hidden at level info,
    shown at debug; an unhandled failure elsewhere stays one ERROR line, no traceback."""
    out = io.StringIO()
    observer = logs.observer(out, environ={})
    emit(observer, "twisted.conch.ssh.transport.SSHServerTransport", LogLevel.error,
         "Got remote error, code {code}\nreason: {description}", code=11, description="bye")
    emit(observer, "twisted.conch.ssh.transport.SSHServerTransport", LogLevel.info, "kex alg")
    assert out.getvalue() == ""
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    Logger(namespace="twisted.internet.defer", observer=LogPublisher(observer)).failure(
        "Unhandled error in Deferred", failure)
    (line,) = out.getvalue().splitlines()
    assert " ERROR " in line and "ZeroDivisionError" in line and "Traceback" not in line
    verbose = io.StringIO()
    emit(logs.observer(verbose, level="debug", environ={}), "twisted.conch.ssh", LogLevel.info,
         "kex alg")
    assert " DEBUG [twisted.conch.ssh] kex alg" in verbose.getvalue()


def test_journald_priorities_under_systemd():
    """With $JOURNAL_STREAM set each line starts with its syslog priority (<4> warning,
    <3> error, <6> info) and carries no time of its own."""
    out = io.StringIO()
    observer = logs.observer(out, environ={"JOURNAL_STREAM": "8:1234"})
    for level in (LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical):
        emit(observer, "gatewayd", level, "event {n}", n=1)
    assert [line[:3] for line in out.getvalue().splitlines()] == ["<6>", "<4>", "<3>", "<2>"]
    assert out.getvalue().splitlines()[1] == "<4>WARNING [gatewayd] event 1"


def test_json_lines_for_log_shippers():
    """log.format json: one object a line with time (Z), level, system, message and the
    event's fields; under journald the priority prefix comes first."""
    out = io.StringIO()
    emit(logs.observer(out, format="json", environ={}), "gatewayd.delivery", LogLevel.warn,
         "deferred id={id}: {reason}", id=7, reason="E-DELIVERY: refused\r\n")
    record = json.loads(out.getvalue())
    assert (record["level"], record["system"], record["id"]) == ("warning", "gatewayd.delivery", 7)
    assert record["message"] == "deferred id=7: E-DELIVERY: refused\\r\\n"
    assert record["time"].endswith("Z")
    journal = io.StringIO()
    emit(logs.observer(journal, format="json", environ={"JOURNAL_STREAM": "1:2"}), "gatewayd",
         LogLevel.error, "x")
    assert journal.getvalue().startswith("<3>{")


def test_every_unprintable_character_is_escaped():
    """C1 controls, NEL, line separators and bidi overrides cannot start a forged line or
    turn one around: each is written as an escape."""
    from gateway import logs
    forged = "x\u0085\u202e2026 CRITICAL forged\u2028y\x1b[31m\x9b"
    escaped = logs.escape(forged)
    assert escaped.isprintable() and len(escaped.splitlines()) == 1
    assert escaped == "x\\x85\\u202e2026 CRITICAL forged\\u2028y\\x1b[31m\\x9b"


def test_a_flood_of_refusals_is_kept_to_a_few_lines_a_minute():
    """Ten lines per address per minute; the next window's first line counts those held
    back; another address has its own ten."""
    from twisted.internet import task
    from gateway import logs

    class Lines:
        def __init__(self):
            self.written = []

        def warn(self, format, **fields):
            self.written.append(format.format(**fields))
    clock, lines = task.Clock(), Lines()
    throttle = logs.Throttle(clock.seconds, burst=10, window=60)
    for _ in range(500):
        throttle.warn(lines, "10.0.0.1", "refused {peer}", peer="10.0.0.1")
    throttle.warn(lines, "10.0.0.2", "refused {peer}", peer="10.0.0.2")
    assert len(lines.written) == 11
    clock.advance(60)
    throttle.warn(lines, "10.0.0.1", "refused {peer}", peer="10.0.0.1")
    assert lines.written[-1] == "refused 10.0.0.1 (490 similar line(s) held back before this one)"


def test_a_flood_of_one_kind_of_warning_is_held_back_errors_never():
    """Past 100 a minute, warnings of one kind are held back (counted in the next one
    written); another kind has its own count; errors are always written."""
    import io

    from twisted.internet import task
    from twisted.logger import Logger, LogPublisher

    from gateway import logs
    clock, out = task.Clock(), io.StringIO()
    log = Logger(namespace="gatewayd.test",
                 observer=LogPublisher(logs.observer(out, clock=clock.seconds)))
    for number in range(300):
        log.warn("refused {peer}", peer=f"10.0.{number // 256}.{number % 256}")
        log.error("store failed {number}", number=number)
    log.warn("another kind")
    clock.advance(60)
    log.warn("refused {peer}", peer="10.9.9.9")
    lines = out.getvalue().splitlines()
    assert sum("refused" in line for line in lines) == 101
    assert sum("store failed" in line for line in lines) == 300
    assert any("another kind" in line for line in lines)
    assert lines[-1].endswith("refused 10.9.9.9 (200 more like this held back in the last minute)")
