"""SFTP uploads (gateway.transports.sftp) without sockets: when an upload is taken, and
when nothing of it is kept."""

import time

import pytest
from twisted.conch.ssh import filetransfer

from gateway import audit
from gateway.spool.store import Store
from gateway.transports import sftp
from tests.helpers.fakes import RING


@pytest.fixture
def account(tmp_path):
    """An account whose intake records what it was handed; audit records go to a real store."""
    store = Store(tmp_path / "spool", time.time, RING)
    taken = []
    built = sftp.Account("his-brink", tmp_path / "sftp" / "his-brink", frozenset({"01234567"}),
                         lambda data, envelope: taken.append(data) or [], 1000,
                         sftp.Outbox(tmp_path / "sftp", store))
    built.taken, built.store = taken, store
    return built


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
    server = sftp.Server(avatar=account)
    handle = upload(account)
    handle.writeChunk(0, b"MSH|half a message")
    server.openFiles[b"1"] = handle
    server.connectionLost(None)
    assert account.taken == []
    assert records(account) == [("discarded", "upload cut off after 18 bytes (session ended "
                                               "before close)")]
    assert not list((account.root / "errors").iterdir())


def test_a_write_over_the_cap_keeps_nothing(account):
    """A write past limits.max_upload_bytes is refused; the close that follows takes nothing."""
    handle = upload(account)
    handle.writeChunk(0, b"x" * 900)
    with pytest.raises(sftp.Refused, match="larger than 1000 bytes"):
        handle.writeChunk(900, b"x" * 200)
    handle.close()
    assert account.taken == []
    assert records(account) == [("refused", "E-TOO-LARGE: upload larger than 1000 bytes")]
    assert (account.root / "errors" / "referral.hl7.err").read_text().startswith("E-TOO-LARGE")


@pytest.mark.parametrize("offset, refusal", [(10, "follow on"), (2**40, "larger than")])
def test_a_write_leaving_a_gap_keeps_nothing(account, offset, refusal):
    """A write beyond the bytes written so far (a sparse file) is refused, never zero-filled."""
    handle = upload(account)
    handle.writeChunk(0, b"MSH|")
    with pytest.raises(sftp.Refused, match=refusal):
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
