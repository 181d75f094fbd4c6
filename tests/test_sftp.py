"""SFTP uploads (gateway.transports.sftp) without sockets: when an upload is taken, and
when nothing of it is kept."""

import time

import pytest
from twisted.conch.ssh import filetransfer
from twisted.internet import task

from gateway import audit
from gateway.spool.store import Store
from gateway.transports import sftp, ssh, uploads
from tests.helpers.fakes import RING


LIMITS = uploads.Limits(max_bytes=1000, files=3, account_bytes=2500, total_bytes=4000,
                        staged_seconds=60)


def make_account(tmp_path, name="his-brink", holdings=None):
    """An account whose intake records what it was handed; audit records go to a real store."""
    store = Store(tmp_path / "spool", time.time, RING)
    taken = []
    holdings = holdings or uploads.Holdings(LIMITS, task.Clock())
    built = sftp.Account(name, tmp_path / "sftp" / name, frozenset({"01234567"}),
                         lambda data, envelope: taken.append(data) or [],
                         sftp.Outbox(tmp_path / "sftp", store), uploads.Shelf(holdings))
    built.taken, built.store = taken, store
    return built


@pytest.fixture
def account(tmp_path):
    return make_account(tmp_path)


def records(account) -> list[tuple[str, str]]:
    return [(r["result"], r["detail"]) for r in audit.query(account.store.db, who="sftp:his-brink")]


def upload(account, name: str = "referral.hl7") -> sftp.Upload:
    return account.openFile(f"inbox/{name}".encode(), filetransfer.FXF_WRITE |
                            filetransfer.FXF_CREAT, {})


def test_an_upload_is_taken_when_the_client_closes_it(account):
    """Chunks written in order and a close: the whole upload goes to the intake once."""
    handle = upload(account)
    handle.writeChunk(0, b"MSH|abc")
    handle.writeChunk(7, b"|def")
    handle.close()
    handle.close()
    assert account.taken == [b"MSH|abc|def"]


def test_a_session_lost_with_the_file_open_discards_it(account):
    """The connection drops before the close: nothing is taken, the cut-off is audited."""
    server = ssh.Server(avatar=account)
    handle = upload(account)
    handle.writeChunk(0, b"MSH|half a message")
    server.openFiles[b"1"] = handle
    server.connectionLost(None)
    assert account.taken == []
    assert records(account) == [("discarded", f"upload {account.tag('referral.hl7')} cut off "
                                               "after 18 bytes (session ended before close)")]
    assert not list((account.root / "errors").iterdir())


def test_a_write_over_the_cap_keeps_nothing(account):
    """A write past limits.max_upload_bytes is refused; the close that follows takes nothing."""
    handle = upload(account)
    handle.writeChunk(0, b"x" * 900)
    with pytest.raises(uploads.Refused, match="larger than 1000 bytes"):
        handle.writeChunk(900, b"x" * 200)
    handle.close()
    assert account.taken == []
    assert records(account) == [("refused", "E-TOO-LARGE: upload larger than 1000 bytes "
                                             f"({account.tag('referral.hl7')})")]
    assert (account.root / "errors" / "referral.hl7.err").read_text().startswith("E-TOO-LARGE")


@pytest.mark.parametrize("offset, refusal", [(10, "follow on"), (2**40, "larger than")])
def test_a_write_leaving_a_gap_keeps_nothing(account, offset, refusal):
    """A write beyond the bytes written so far (a sparse file) is refused, never zero-filled."""
    handle = upload(account)
    handle.writeChunk(0, b"MSH|")
    with pytest.raises(uploads.Refused, match=refusal):
        handle.writeChunk(offset, b"x")
    handle.close()
    assert account.taken == []
    assert records(account)[0][0] == "refused"


def test_a_staged_upload_is_taken_at_its_rename(account):
    """A .part file closed is kept aside; its rename to the final name hands it over."""
    handle = upload(account, "referral.hl7.part")
    handle.writeChunk(0, b"MSH|whole")
    handle.close()
    assert account.taken == []
    account.renameFile(b"inbox/referral.hl7.part", b"inbox/referral.hl7")
    assert account.taken == [b"MSH|whole"]


def test_uploads_per_account_are_bounded(account):
    """An account may hold limits.sftp_uploads_per_account files open or staged; the next
    open is refused with the reason; removing a staged one makes room."""
    for index in range(2):
        handle = upload(account, f"{index}.part")
        handle.writeChunk(0, b"MSH|")
        handle.close()
    upload(account, "open.hl7")
    with pytest.raises(uploads.Refused, match="E-UPLOAD-LIMIT: 3 uploads"):
        upload(account, "one-too-many.hl7")
    account.removeFile(b"inbox/0.part")
    upload(account, "now-there-is-room.hl7")


def test_bytes_held_per_account_and_in_total_are_bounded(tmp_path):
    """Past limits.sftp_bytes_per_account the write is refused and nothing of that upload
    kept; past limits.sftp_bytes_total the same holds across accounts."""
    holdings = uploads.Holdings(LIMITS, task.Clock())
    first = make_account(tmp_path, "his-brink", holdings)
    for index in range(2):
        upload(first, f"{index}.part").writeChunk(0, b"x" * 1000)
    refused = upload(first, "third.hl7")
    with pytest.raises(uploads.Refused, match="this account held in memory pass 2500"):
        refused.writeChunk(0, b"x" * 600)
    assert holdings.held == 2000
    second = make_account(tmp_path, "his-hoogveld", holdings)
    upload(second, "a.hl7").writeChunk(0, b"x" * 1000)
    upload(second, "b.hl7").writeChunk(0, b"x" * 900)
    with pytest.raises(uploads.Refused, match="gateway holds more than 4000 bytes"):
        upload(second, "c.hl7").writeChunk(0, b"x" * 200)
    assert holdings.held == 3900


def test_staged_uploads_are_listed_and_expire(account):
    """A staged .part file shows in the inbox listing with its size, and is discarded
    (audited) once limits.sftp_staged_seconds pass without a rename."""
    handle = upload(account, "referral.hl7.part")
    handle.writeChunk(0, b"MSH|staged")
    handle.close()
    listing = account.openDirectory(b"inbox")
    assert [(name, attrs["size"]) for name, _, attrs in listing] == [("referral.hl7.part", 10)]
    account.shelf.holdings.clock.advance(61)
    assert not account.shelf.staged and account.shelf.holdings.held == 0
    assert records(account) == [("discarded", f"staged upload {account.tag('referral.hl7.part')} "
                                               "of 10 bytes not renamed within 60 s")]
    with pytest.raises(filetransfer.SFTPError):
        account.renameFile(b"inbox/referral.hl7.part", b"inbox/referral.hl7")
    assert account.taken == []


@pytest.mark.parametrize("name", [b"inbox/\xff\xfe.hl7", b"inbox/a\x00b", b"inbox/" + b"n" * 300,
                                  b"/" + b"a/" * 600])
def test_unusable_file_names_are_refused(account, name):
    """Names that are not UTF-8, hold a NUL or are over-long are refused as permission
    denied, not with an exception conch would log as a traceback."""
    with pytest.raises(uploads.Refused):
        account.openFile(name, filetransfer.FXF_WRITE | filetransfer.FXF_CREAT, {})


def test_opening_a_file_as_a_folder_is_no_such_folder(account):
    """opendir on a file answers 'no such file', without a traceback."""
    (account.root / "errors" / "x.err").write_text("E-X\n")
    with pytest.raises(filetransfer.SFTPError) as refused:
        account.openDirectory(b"errors/x.err")
    assert refused.value.code == filetransfer.FX_NO_SUCH_FILE


def test_a_closed_upload_counts_until_the_store_has_it(tmp_path):
    """Closing hands the upload to the intake; its bytes and its file slot stay counted
    until the store answers."""
    from twisted.internet import defer
    account = make_account(tmp_path)
    storing = defer.Deferred()
    account.accept = lambda data, envelope: storing
    handle = upload(account)
    handle.writeChunk(0, b"MSH|12345")
    handle.close()
    assert account.shelf.held == 9 and len(account.shelf.open) == 1
    storing.callback([])
    assert account.shelf.held == 0 and not account.shelf.open


@pytest.mark.parametrize("name", ["a\nFORGED WARNING line.hl7", "\x1b[31mred.hl7", "x\u2028y.hl7",
                                  "x\u0085y.hl7", "tab\there.hl7"])
def test_names_with_characters_that_are_not_printable_are_refused(account, name):
    """A name with a line break, an escape, U+2028 or U+0085 is refused before anything
    is written (no .err file with such a name either)."""
    with pytest.raises(uploads.Refused):
        upload(account, name)
    assert not list((account.root / "errors").iterdir())


def test_log_lines_and_audit_records_name_a_file_by_its_tag(account, tmp_path):
    """A refused upload's name (here a patient's) is in no log line and no audit record:
    its tag stands there, and the .err file the client reads carries the same tag."""
    from twisted.logger import formatEvent, globalLogPublisher
    lines = []
    globalLogPublisher.addObserver(lines.append)
    try:
        handle = upload(account, "Jansen-123456782.hl7")
        with pytest.raises(uploads.Refused):
            handle.writeChunk(5, b"x")
    finally:
        globalLogPublisher.removeObserver(lines.append)
    tag = account.tag("Jansen-123456782.hl7")
    assert tag.startswith("#") and tag.endswith(".hl7") and len(tag) == 13
    text = " ".join(formatEvent(event) for event in lines)
    assert tag in text and "Jansen" not in text and "123456782" not in text
    assert all("Jansen" not in detail for _, detail in records(account))
    assert (account.root / "errors" / "Jansen-123456782.hl7.err").read_text().endswith(
        f"logged as {tag}\n")


def test_error_files_per_account_are_bounded(tmp_path):
    """Past limits.sftp_error_files .err files, the oldest go."""
    limits = uploads.Limits(1000, 3, 2500, 4000, 60, error_files=10)
    account = make_account(tmp_path, holdings=uploads.Holdings(limits, task.Clock()))
    for index in range(15):
        with pytest.raises(uploads.Refused):
            upload(account, f"{index:02d}.hl7").writeChunk(5, b"x")
        time.sleep(0.002)
    assert sorted(p.name for p in (account.root / "errors").iterdir()) == \
        [f"{index:02d}.hl7.err" for index in range(5, 15)]


def test_renaming_a_staged_upload_keeps_its_first_deadline(account):
    """x.part renamed to y.part before its expiry is still discarded when x.part would
    have been: a rename does not restart the clock."""
    handle = upload(account, "x.part")
    handle.writeChunk(0, b"MSH|x")
    handle.close()
    clock = account.shelf.holdings.clock
    for old, new in (("x.part", "y.part"), ("y.part", "z.part"), ("z.part", "w.tmp")):
        clock.advance(15)
        account.renameFile(f"inbox/{old}".encode(), f"inbox/{new}".encode())
    assert list(account.shelf.staged) == ["w.tmp"]
    clock.advance(15)                          # 60 s after x.part was closed
    assert not account.shelf.staged and account.shelf.held == 0


def test_a_staged_upload_not_stored_at_its_rename_is_staged_again(account):
    """When the store fails at the rename (a full disk), the client is told to send again
    and the upload is back under its staged name, so the rename can be retried."""
    from twisted.internet import defer
    from gateway.errors import StoreError
    handle = upload(account, "r.hl7.part")
    handle.writeChunk(0, b"MSH|whole")
    handle.close()
    account.accept = lambda data, envelope: defer.fail(StoreError("disk full"))
    failed = account.renameFile(b"inbox/r.hl7.part", b"inbox/r.hl7")
    failure = []
    failed.addErrback(failure.append)
    assert failure[0].value.message == "not stored; send again"
    assert list(account.shelf.staged) == ["r.hl7.part"] and account.shelf.held == 9
    account.accept = lambda data, envelope: account.taken.append(data) or []
    account.renameFile(b"inbox/r.hl7.part", b"inbox/r.hl7")
    assert account.taken == [b"MSH|whole"] and account.shelf.held == 0


def test_a_renamed_upload_counts_until_the_store_has_it(account):
    """After its rename a staged upload's bytes and file slot count until the store
    answers (renames without waiting cannot pile up uncounted)."""
    from twisted.internet import defer
    handle = upload(account, "r.hl7.part")
    handle.writeChunk(0, b"MSH|12345")
    handle.close()
    storing = defer.Deferred()
    account.accept = lambda data, envelope: storing
    account.renameFile(b"inbox/r.hl7.part", b"inbox/r.hl7")
    assert account.shelf.held == 9 and account.shelf.uploads() == 1
    storing.callback([])
    assert account.shelf.held == 0 and account.shelf.uploads() == 0
