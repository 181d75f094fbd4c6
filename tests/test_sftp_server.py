"""The SFTP subsystem (gateway.transports.ssh.Server) fed raw SFTP packets on a
StringTransport: malformed requests, handle limits, truncation, downloads within the
memory limits, and what a session holds."""

import os
import struct

import pytest
from twisted.conch.ssh import filetransfer as ft
from twisted.conch.ssh.common import NS
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from gateway import audit
from gateway.transports import ssh, uploads
from tests.test_sftp import make_account

LIMITS = uploads.Limits(max_bytes=100_000, files=3, account_bytes=25_000, total_bytes=40_000,
                        staged_seconds=60, handles=3)


@pytest.fixture
def logged():
    """The lines gatewayd's SFTP logger writes (level, text), and whether any event
    carried a failure (a traceback)."""
    lines = []

    def observe(event):
        if event.get("log_namespace") == "gatewayd.sftp" or "log_failure" in event:
            lines.append((event["log_level"].name, formatEvent(event),
                          "log_failure" in event))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def account(tmp_path):
    return make_account(tmp_path, holdings=uploads.Holdings(LIMITS, task.Clock()))


class Session:
    """A Server on a StringTransport, spoken to in SFTP packets."""

    def __init__(self, account):
        self.server, self.transport = ssh.Server(avatar=account), StringTransport()
        self.server.makeConnection(self.transport)
        self.send(ft.FXP_INIT, struct.pack(">L", 3))
        self.answers()
        self.ids = 100

    def send(self, kind: int, body: bytes) -> None:
        self.server.dataReceived(struct.pack(">LB", len(body) + 1, kind) + body)

    def request(self, kind: int, *fields: bytes) -> int:
        self.ids += 1
        self.send(kind, struct.pack(">L", self.ids) + b"".join(fields))
        return self.ids

    def answers(self) -> list[tuple[int, int, bytes]]:
        """(type, request id, body) of each packet sent since the last call."""
        data, found = self.transport.value(), []
        self.transport.clear()
        while data:
            length, kind = struct.unpack(">LB", data[:5])
            body, data = data[5:4 + length], data[4 + length:]
            found.append((kind, struct.unpack(">L", body[:4])[0], body[4:]))
        return found

    def status(self) -> tuple[int, str]:
        (kind, _, body), = self.answers()
        assert kind == ft.FXP_STATUS
        return struct.unpack(">L", body[:4])[0], body[8:8 + struct.unpack(">L", body[4:8])[0]
                                                     ].decode()

    def open(self, path: bytes, flags: int = ft.FXF_READ) -> bytes:
        self.request(ft.FXP_OPEN, NS(path), struct.pack(">LL", flags, 0))
        (kind, _, body), = self.answers()
        assert kind == ft.FXP_HANDLE, body
        return body[4:]

    def closed(self) -> bool:
        return self.transport.disconnecting


WRITE = ft.FXF_WRITE | ft.FXF_CREAT | ft.FXF_TRUNC


@pytest.mark.parametrize("kind, body, code", [
    (ft.FXP_OPEN, b"\x00\x00", ft.FX_BAD_MESSAGE),                           # cut short
    (ft.FXP_SETSTAT, NS(b"/") + struct.pack(">LL", 0x80000000, 99), ft.FX_BAD_MESSAGE),
    (ft.FXP_RENAME, NS(b"/"), ft.FX_BAD_MESSAGE),                            # one path
    (ft.FXP_READ, NS(b"nope") + struct.pack(">QL", 0, 3), ft.FX_FAILURE),   # no such handle
    (ft.FXP_WRITE, NS(b"nope") + struct.pack(">Q", 0) + NS(b"abc"), ft.FX_FAILURE),
    (ft.FXP_READDIR, NS(b"nope"), ft.FX_FAILURE),
    (250, b"zzz", ft.FX_OP_UNSUPPORTED),                                     # unknown type
])
def test_a_malformed_request_gets_a_status_and_one_warning(account, logged, kind, body, code):
    """A request cut short, on a handle not open, or of an unknown type is answered with
    an SFTP status under its request id and one WARNING line — no traceback."""
    session = Session(account)
    request = session.request(kind, body)
    assert session.answers()[0][:2] == (ft.FXP_STATUS, request)
    session.request(kind, body)
    assert session.status()[0] == code
    assert [level for level, _, _ in logged] == ["warn", "warn"]
    assert not any(failure for _, _, failure in logged) and not session.closed()


def test_the_third_malformed_request_closes_the_session(account, logged):
    """After MAX_MALFORMED malformed requests the session is closed, said in the last line."""
    session = Session(account)
    for _ in range(ssh.MAX_MALFORMED):
        session.request(ft.FXP_READDIR, NS(b"nope"))
    assert session.closed()
    assert "session closed after 3" in logged[-1][1] and len(logged) == 3


def test_an_over_long_request_closes_the_session(account, logged):
    """A request announcing more than MAX_SFTP_PACKET bytes is not waited for: closed."""
    session = Session(account)
    session.server.dataReceived(struct.pack(">LBL", 2**31, ft.FXP_WRITE, 1) + b"x" * 100)
    assert session.closed() and "SFTP request of 2147483648 bytes" in logged[-1][1]


def test_open_files_and_folders_are_bounded_per_session(account, logged):
    """The open past limits.sftp_handles_per_session is refused with E-SFTP-HANDLES (logged
    once); closing one makes room."""
    (account.root / "errors" / "a.err").write_text("E-X\n")
    session = Session(account)
    handles = [session.open(b"errors/a.err") for _ in range(2)]
    session.request(ft.FXP_OPENDIR, NS(b"inbox"))
    assert session.answers()[0][0] == ft.FXP_HANDLE
    for _ in range(2):
        session.request(ft.FXP_OPENDIR, NS(b"errors"))
        code, message = session.status()
        assert code == ft.FX_FAILURE and message.startswith("E-SFTP-HANDLES: 3 files")
    assert sum("E-SFTP-HANDLES" in text for _, text, _ in logged) == 1
    session.request(ft.FXP_CLOSE, NS(handles[0]))
    assert session.status()[0] == ft.FX_OK
    session.open(b"errors/a.err")


def test_a_truncate_shortens_an_open_upload(account):
    """FSETSTAT with a size shortens the upload being written: the close hands over the
    shortened bytes."""
    session = Session(account)
    handle = session.open(b"inbox/r.hl7", WRITE)
    session.request(ft.FXP_WRITE, NS(handle), struct.pack(">Q", 0), NS(b"MSH|abcdef"))
    session.request(ft.FXP_FSETSTAT, NS(handle), struct.pack(">LQ", ft.FILEXFER_ATTR_SIZE, 4))
    session.request(ft.FXP_CLOSE, NS(handle))
    assert [body[:4] for _, _, body in session.answers()] == [b"\0\0\0\0"] * 3   # FX_OK
    assert account.taken == [b"MSH|"] and account.shelf.held == 0


def test_a_size_that_would_grow_an_upload_or_touch_another_file_is_refused(account):
    """A size past the bytes written (a gap) fails that upload, kept nowhere; a size
    set by path (SETSTAT) is refused."""
    session = Session(account)
    handle = session.open(b"inbox/r.hl7", WRITE)
    session.request(ft.FXP_WRITE, NS(handle), struct.pack(">Q", 0), NS(b"abc"))
    session.answers()
    session.request(ft.FXP_FSETSTAT, NS(handle), struct.pack(">LQ", ft.FILEXFER_ATTR_SIZE, 9))
    assert session.status()[0] == ft.FX_PERMISSION_DENIED
    session.request(ft.FXP_CLOSE, NS(handle))
    (account.root / "errors" / "x.err").write_text("E-X\n")
    session.request(ft.FXP_SETSTAT, NS(b"errors/x.err"), struct.pack(">LQ", ft.FILEXFER_ATTR_SIZE, 0))
    assert session.answers()[-1][2][:4] == struct.pack(">L", ft.FX_PERMISSION_DENIED)
    assert account.taken == [] and (account.root / "errors" / "x.err").read_text() == "E-X\n"
    assert "E-UPLOAD-GAP: size 9 set after 3 bytes" in (
        account.root / "errors" / "r.hl7.err").read_text()


def test_a_partial_request_counts_against_the_account(account, logged):
    """Bytes of a request still arriving, past FREE_BYTES, count against the account's
    memory limit; past it the session is closed, and what it held is let go."""
    session = Session(account)
    handle = session.open(b"inbox/r.hl7", WRITE)
    head = struct.pack(">LBL", 60_000, ft.FXP_WRITE, 1) + NS(handle) + struct.pack(">QL", 0, 59_000)
    session.server.dataReceived(head + b"x" * 20_000)
    assert account.shelf.held == len(head) + 20_000 - ssh.FREE_BYTES
    session.server.dataReceived(b"x" * 20_000)
    assert session.closed() and "over the memory limit" in logged[-1][1]
    session.server.connectionLost(None)
    assert account.shelf.held == 0 and account.taken == []


def test_downloads_share_one_copy_counted_against_the_account(account):
    """Handles on one file share one plain copy, counted once; a file that would pass the
    account's memory limit is refused with E-DOWNLOAD-LIMIT; the last close lets go."""
    errors = account.root / "errors"
    (errors / "big.err").write_bytes(b"x" * 20_000)
    (errors / "more.err").write_bytes(b"y" * 10_000)
    session = Session(account)
    first, second = session.open(b"errors/big.err"), session.open(b"errors/big.err")
    assert account.shelf.held == 20_000
    session.request(ft.FXP_OPEN, NS(b"errors/more.err"), struct.pack(">LL", ft.FXF_READ, 0))
    code, message = session.status()
    assert code == ft.FX_FAILURE and message.startswith("E-DOWNLOAD-LIMIT")
    for handle in (first, second):
        session.request(ft.FXP_CLOSE, NS(handle))
    assert account.shelf.held == 0 and not account.shelf.reads


def test_an_outbox_read_is_audited_once_a_session(account):
    """Opening the same outbox file again in one session writes no second audit record."""
    row = dict(account.store.get(_stored_answer(account)))
    account.outbox.deliver({**row, "zd_number": "ZD1_ANTW", "format": "hl7"},
                           account.store.payload(row, "out"))
    session = Session(account)
    for _ in range(3):
        session.request(ft.FXP_CLOSE, NS(session.open(b"outbox/ZD1_ANTW.hl7")))
        assert session.status()[0] == ft.FX_OK
    pulls = [r for r in audit.query(account.store.db, who="sftp:his-brink") if r["action"] == "pull"]
    assert len(pulls) == 1


def _stored_answer(account) -> int:
    """A stored message addressed to this account's outbox; its id."""
    from gateway.intake import Envelope, Intake
    from gateway import routes
    from tests.helpers.fakes import ROOT, numbered_referral
    intake = Intake(account.store, routes.load(ROOT / "gateway" / "routes" / "samples"), 1 << 20)
    receipt, = intake.accept(numbered_referral(1), Envelope("admin", "test"))
    with account.store.db.transaction():
        account.store.db.execute("UPDATE messages SET delivery = 'sftp:his-brink' WHERE id = ?",
                                 (receipt.id,))
    return receipt.id


def test_a_listing_holds_no_folder_and_no_names_between_requests(account):
    """A folder listing reads the folder per READDIR batch in name order: between requests
    it keeps no open descriptor and no names, and sees a file added meanwhile."""
    errors = account.root / "errors"
    for index in range(600):
        (errors / f"{index:04d}.err").write_text("E-X\n")
    descriptors = len(os.listdir("/proc/self/fd"))
    listing = account.openDirectory(b"errors")
    first = [next(listing)[0] for _ in range(250)]
    assert first == [f"{index:04d}.err" for index in range(250)]
    assert listing.batch == [] and len(os.listdir("/proc/self/fd")) == descriptors
    (errors / "0300x.err").write_text("E-X\n")
    rest = [name for name, _, _ in listing]
    assert rest[:52] == [f"{index:04d}.err" for index in range(250, 301)] + ["0300x.err"]
    assert len(rest) == 351
