"""Retention and purge: each case kept exactly as long as its rule says, then its payloads,
rows and space gone, with a clear answer for a purged ZD number."""

import base64
import datetime as dt
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from gateway import config, operations, retention, routes
from gateway.intake import Envelope, Intake
from gateway.spool.store import Store
from gateway.transports.sftp import Outbox
from tests.helpers import daemon
from tests.helpers.fakes import RING, ROOT, numbered_referral

DAY = 86400
SAMPLES = ROOT / "gateway" / "routes" / "samples"
HL7 = ROOT / "fixtures" / "hl7"
ADMIN = Envelope("admin", "test")
T0 = 1_800_000_000.0


class Setup:
    def __init__(self, folder: Path, backend=None):
        self.now = T0
        self.settings = config.defaults(folder)
        self.store = backend.store(folder / "spool", lambda: self.now, RING) if backend else \
            Store(folder / "spool", lambda: self.now, RING)
        self.intake = Intake(self.store, routes.load(SAMPLES), 1 << 24)

    def at(self, day: float, data: bytes) -> list:
        self.now = T0 + day * DAY
        return self.intake.accept(data, ADMIN)

    def purge(self, day: float, dry_run: bool = False) -> retention.Report:
        return retention.purge(self.store, self.settings, T0 + day * DAY, dry_run)

    def zd_numbers(self) -> set[str]:
        return {row[0] for row in self.store.db.execute("SELECT zd_number FROM messages")}

    def payloads(self) -> set[tuple[int, str]]:
        return {tuple(row) for row in self.store.db.execute(
            "SELECT message_id, which FROM payloads")}


@pytest.fixture
def setup(tmp_path, backend):
    """A store on each backend in turn."""
    return Setup(tmp_path, backend)


@pytest.fixture
def sqlite_setup(tmp_path):
    """A store in SQLite (whose file shows the space purging gives back)."""
    return Setup(tmp_path)


def test_each_case_is_kept_as_long_as_its_rule(setup):
    """A referral lives 180 days after its last message (a cancellation extends it), a
    teleconsult 548 days after its answer; input without a ZD number 180 days."""
    setup.at(0, numbered_referral(1))                                  # ZD500000001
    setup.at(0, numbered_referral(2))                                  # ZD500000002 ...
    setup.at(100, (HL7 / "cancellation.hl7").read_bytes().replace(    # ... cancelled on day 100
        b"ZD100200300", b"ZD500000002"))
    setup.at(0, (HL7 / "teleconsult-request.hl7").read_bytes())        # ZD100200301
    setup.at(10, (HL7 / "teleconsult-answer-crlf.hl7").read_bytes())   # ZD100200301_ANTW
    with pytest.raises(Exception):
        setup.at(0, b"MSH|^~\\&|broken")                               # rejected, kept
    assert setup.purge(179.9).messages == 0
    assert setup.purge(180.1).messages == 2                            # ZD500000001, the reject
    assert "ZD500000001" not in setup.zd_numbers()
    assert setup.purge(280.1).messages == 2                            # the referral + cancellation
    assert setup.zd_numbers() == {"ZD100200301", "ZD100200301_ANTW"}
    assert setup.purge(557.9).messages == 0
    assert setup.purge(558.1).messages == 2
    assert setup.zd_numbers() == set() and setup.payloads() == set()


def test_dry_run_shows_and_keeps(setup):
    setup.at(0, numbered_referral(1))
    stored = setup.payloads()
    report = setup.purge(181, dry_run=True)
    assert retention.describe(report)["zd_numbers"] == ["ZD500000001"]
    assert setup.zd_numbers() == {"ZD500000001"} and setup.payloads() == stored


def test_purge_removes_payloads_rows_and_space(setup):
    """After a purge no payload of a purged message is left, no history row, and the
    database file shrinks; the counts per month, kind and destination remain."""
    for index in range(300):
        setup.at(0, numbered_referral(index))
    setup.at(200, numbered_referral(1000))
    sqlite = setup.store.db.backend == "sqlite"
    if sqlite:
        setup.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = (setup.store.root / "gateway.db").stat().st_size
    report = setup.purge(181)
    assert report.messages == 300 and report.payloads == 600
    assert setup.zd_numbers() == {"ZD500001000"}
    assert setup.payloads() == {(301, "raw"), (301, "out")}
    assert setup.store.db.execute("SELECT count(*) FROM history").fetchone()[0] == 2
    if sqlite:
        assert setup.store.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
        assert (setup.store.root / "gateway.db").stat().st_size < before    # audit records stay
        assert (setup.store.root / "gateway.db-wal").stat().st_size == 0
    counts = setup.store.db.execute("SELECT kind, destination, messages FROM purge_counts").fetchall()
    assert [tuple(c) for c in counts] == [("referral", "06005678", 300)]


def test_purging_large_payloads_gives_their_space_back(sqlite_setup):
    """Twelve teleconsult requests with a 1.5 MB attachment each grow the database file by
    at least their size twice (raw and converted); purged, it shrinks back by as much."""
    template = (ROOT / "fixtures" / "xml" / "teleconsult-request-attachment.xml").read_bytes()
    empty = (sqlite_setup.store.root / "gateway.db").stat().st_size
    for index in range(12):
        data = base64.b64encode(random.Random(index).randbytes(1_500_000))
        sqlite_setup.at(0, _with_attachment(template, index, data))
    sqlite_setup.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = (sqlite_setup.store.root / "gateway.db").stat().st_size
    assert full - empty > 12 * 2 * 1_500_000
    report = sqlite_setup.purge(600)
    assert report.messages == 12 and report.payloads == 24
    after = (sqlite_setup.store.root / "gateway.db").stat().st_size
    assert full - after > 12 * 2 * 1_500_000 and after < empty + 1_000_000
    assert (sqlite_setup.store.root / "gateway.db-wal").stat().st_size == 0


def _with_attachment(template: bytes, index: int, data: bytes) -> bytes:
    """The XML teleconsult request fixture with its own ZD number, Bundle id and attachment."""
    start = template.index(b"<content value=\"") + len(b"<content value=\"")
    end = template.index(b"\"", start)
    return (template[:start] + data + template[end:]).replace(
        b"ZD100200301", f"ZD7{index:08d}".encode()).replace(
        b"a9e38604e300e394662c5679adcacb13", f"big-{index}".encode())


def test_a_purged_zd_number_is_answered_clearly(setup):
    """resend, cancel, supplement and status say when and under which rule it went."""
    setup.at(0, numbered_referral(1))
    setup.purge(181)
    expected = f"ZD500000001 was purged on {dt.date.fromtimestamp(T0 + 181 * DAY)} under the " \
               "retention rule (referral: 180 days)"
    for attempt in (lambda: operations.resend(setup.intake, "ZD500000001", "t"),
                    lambda: operations.cancel(setup.intake, "ZD500000001", "r",
                                              dt.datetime.now(dt.timezone.utc), 180, "t"),
                    lambda: operations.supplement(setup.intake, "ZD500000001", "a.txt", b"x",
                                                  dt.datetime.now(dt.timezone.utc), "t")):
        with pytest.raises(operations.Refused) as refused:
            attempt()
        assert (refused.value.code, refused.value.message) == ("E-PURGED", expected)


def test_outbox_and_quarantine_leftovers_are_swept(setup):
    """An outbox file an older gatewayd left on disk for a purged message goes once it is a
    day old, a quarantined outbox file once it is past the referral rule; a fresh one
    stays. The purged message leaves the outbox in the store too."""
    setup.at(0, numbered_referral(1))
    row = setup.store.get(1)
    outbox = Outbox(setup.settings.paths_sftp, setup.store)
    outbox.deliver({**dict(row), "delivery": "sftp:his-brink", "format": "hl7"}, b"x")
    assert outbox.files("his-brink", None, 9)
    (setup.settings.paths_sftp / "his-brink" / "outbox").mkdir(parents=True)
    (setup.settings.paths_sftp / "his-brink" / "outbox" / "ZD1.hl7").write_bytes(
        RING.seal(b"x", row["id"]))
    quarantine = setup.store.root / "quarantine"
    quarantine.mkdir()
    (quarantine / "his-brink-old.hl7").write_bytes(b"sealed")
    (quarantine / "his-brink-new.hl7").write_bytes(b"sealed")
    old = time.time() - 200 * DAY
    for path in [*setup.settings.paths_sftp.glob("*/outbox/*"), quarantine / "his-brink-old.hl7"]:
        os.utime(path, (old, old))
    assert setup.purge(181).files == 2
    assert list(setup.settings.paths_sftp.glob("*/outbox/*")) == []
    assert outbox.files("his-brink", None, 9) == []
    assert setup.store.db.value("SELECT count(*) FROM outbox") == 0
    assert [p.name for p in quarantine.iterdir()] == ["his-brink-new.hl7"]


def test_every_node_sweeps_its_own_old_files(tmp_path):
    """The daily sweep a node runs besides the (one node's) purge removes its own .err
    files past retention.sftp_error_days and quarantined files past the referral rule,
    and leaves fresh ones."""
    settings = config.defaults(tmp_path)
    errors, quarantine = settings.paths_sftp / "his-brink" / "errors", settings.paths_spool / "quarantine"
    for folder in (errors, quarantine):
        folder.mkdir(parents=True)
        for name in ("old", "new"):
            (folder / f"{name}.err").write_bytes(b"x")
        old = time.time() - 200 * DAY
        os.utime(folder / "old.err", (old, old))
    assert retention.sweep(settings, RING) == 2
    assert [p.name for p in errors.iterdir()] == [p.name for p in quarantine.iterdir()] == ["new.err"]


def test_cli_purge_as_of_and_status(tmp_path):
    """gatewayctl purge --dry-run --as-of shows the future; purge does it; status then says
    purged (exit 65), the audit log keeps the purge."""
    made = daemon.init(tmp_path / "gw")
    daemon.ctl(made, "submit", str(ROOT / "fixtures" / "medvri" / "referral-crlf.edi"))
    later = str(dt.date.today() + dt.timedelta(days=181))
    assert daemon.ctl_json(made, "purge", "--dry-run", "--as-of", str(dt.date.today()))[
        "messages"] == 0
    shown = daemon.ctl_json(made, "purge", "--dry-run", "--as-of", later)
    assert (shown["messages"], shown["zd_numbers"]) == (1, ["ZD100200300"])
    done = daemon.ctl(made, "purge", "--as-of", later).stdout.decode()
    assert done.startswith("purged 1 message(s) of 1 ZD number(s)\n  referral: 180 days: 1")
    result = daemon.ctl(made, "status", "ZD100200300", check=False)
    assert result.returncode == 65 and b"was purged on" in result.stderr
    assert [r["action"] for r in daemon.ctl_json(made, "audit", "query", "--zd", "ZD100200300")][
        -1] == "purge"


CASE_KINDS = {"referral": lambda n: numbered_referral(n, "P", 600_000_000),
              "teleconsult": lambda n: (HL7 / "teleconsult-request.hl7").read_bytes().replace(
                  b"ZD100200301", f"ZD{600_000_000 + n}".encode()).replace(
                  b"HISX-000043", f"TC-{n:06d}".encode())}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(sorted(CASE_KINDS)), st.integers(0, 700)),
                min_size=1, max_size=6), st.integers(0, 1300))
@example([("referral", 0), ("teleconsult", 0)], 180)       # the last day is still kept
@example([("referral", 0), ("teleconsult", 0)], 548)
def test_purge_keeps_exactly_what_the_rules_allow(cases, as_of):
    """For any cases received on any days, purging as of any day leaves exactly the cases
    whose rule has not run out, each still readable, and no file of a purged one."""
    with tempfile.TemporaryDirectory() as folder:
        setup = Setup(Path(folder))
        for number, (kind, day) in enumerate(cases):
            setup.at(day, CASE_KINDS[kind](number))
        setup.purge(as_of)
        rules = {"referral": 180, "teleconsult": 548}
        expected = {f"ZD{600_000_000 + n}" for n, (kind, day) in enumerate(cases)
                    if day + rules[kind] >= as_of}
        assert setup.zd_numbers() == expected
        for row in setup.store.listing():
            assert setup.store.payload(row, "raw")
        expected = {(row["raw_owner"], "raw") for row in setup.store.listing()} | {
            (row["id"], "out") for row in setup.store.listing() if row["state"] != "fallback"}
        assert setup.payloads() == expected


def test_a_message_arriving_during_the_purge_stays(setup):
    """A follow-up that arrives after the purge decided its case had run out stays, and
    keeps its own retention."""
    setup.at(0, numbered_referral(1))
    (group,) = retention.due(setup.store, setup.settings, T0 + 181 * DAY)
    setup.at(181, (HL7 / "cancellation.hl7").read_bytes().replace(b"ZD100200300", b"ZD500000001"))
    setup.store.purge([(group.key, group.rule, group.last_received)], "retention", T0 + 181 * DAY)
    assert setup.zd_numbers() == {"ZD100200302"}


def test_sftp_error_files_expire(setup):
    """.err files in SFTP errors/ folders go once older than retention.sftp_error_days (30);
    a younger one stays."""
    errors = setup.settings.paths_sftp / "his-brink" / "errors"
    errors.mkdir(parents=True)
    for name, age in (("old.hl7.err", 31), ("new.hl7.err", 29)):
        (errors / name).write_text("E-FORMAT-UNKNOWN\n")
        stamp = time.time() - age * DAY
        os.utime(errors / name, (stamp, stamp))
    assert setup.purge(0).files == 1
    assert [p.name for p in errors.iterdir()] == ["new.hl7.err"]
