"""Two gatewayd processes on one PostgreSQL database, each with its own folders and ports,
serve one SFTP outbox: an answer node A delivered is listed and read through node B
(OpenSSH sftp), a pickup on B is gone on A at once, and two answers with one ZD number
are two files on both nodes. And a node that starts with outbox files an older gatewayd
left on its disk takes them into the store."""

import shutil
import time
from pathlib import Path

import pytest

from gateway import keys
from gateway.spool.store import Store
from tests.helpers import daemon
from tests.helpers.fakes import ROOT, free_port
from tests.test_daemon_e2e import curl, outbox_names, sftp

ANSWER = (ROOT / "fixtures" / "hl7" / "teleconsult-answer-crlf.hl7").read_bytes()
PORTS = ("mllp", "https", "sftp", "metrics")


def second_node(made: dict, folder: Path) -> dict:
    """A copy of ``made``'s setup (same keys, certificates, SSH keys, tables and store URL)
    in ``folder``, on free ports of its own."""
    shutil.copytree(Path(made["config"]).parent, folder)
    (folder / "spool" / "gateway.db").unlink(missing_ok=True)
    old = str(Path(made["config"]).parent)
    other = {key: value.replace(old, str(folder)) if isinstance(value, str) else value
             for key, value in made.items()}
    other["identities"] = [{key: value.replace(old, str(folder)) if isinstance(value, str)
                            else value for key, value in who.items()} for who in made["identities"]]
    ports = set(made["ports"].values())
    while len(ports) < 2 * len(PORTS):          # four of its own, none of them A's
        ports.add(free_port())
    other["ports"] = dict(zip(PORTS, sorted(ports - set(made["ports"].values()))))
    daemon.configure(other, **{f"listen__{name}_port": port
                               for name, port in other["ports"].items()})
    return other


def answer(index: int) -> bytes:
    """The teleconsult answer (ZD100200301_ANTW) with a control id of its own."""
    return ANSWER.replace(b"|ZIS-777|", f"|ZIS-777-{index}|".encode())


@pytest.fixture
def two_nodes(postgres, tmp_path):
    url = postgres.url(tmp_path / "db")
    made = daemon.init(tmp_path / "a")
    daemon.configure(made, store__url=f'"{url}"')
    other = second_node(made, tmp_path / "b")
    processes = []
    yield made, other, processes
    for process in processes:
        process.kill()
        process.wait()


def test_one_outbox_served_by_two_nodes(two_nodes, tmp_path):
    made, other, processes = two_nodes
    processes.append(daemon.start(made, tmp_path / "a.log"))
    assert curl(made, "/v1/messages", "zis-eemland", data=answer(1))[0] == 202
    assert daemon.until(lambda: daemon.ctl_json(made, "status", "ZD100200301_ANTW")[0]["state"]
                 == "delivered"), "node A did not deliver the answer"
    processes.append(daemon.start(other, tmp_path / "b.log"))      # B starts after A delivered
    assert outbox_names(other, tmp_path) == {"ZD100200301_ANTW.edi"} == outbox_names(made, tmp_path)
    result = sftp(other, "his-brink", "get outbox/ZD100200301_ANTW.edi\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ZD100200301_ANTW.edi").read_bytes().startswith(b"UNA:+.? '")
    assert not [p for p in (tmp_path / "a" / "sftp").rglob("*") if p.is_file()]
    # picked up on B: gone on A at once, confirmed in the history both nodes show
    assert sftp(other, "his-brink", "rm outbox/ZD100200301_ANTW.edi\n", tmp_path).returncode == 0
    assert outbox_names(made, tmp_path) == set()
    history = daemon.ctl_json(made, "status", "ZD100200301_ANTW")[0]["history"]
    assert history[-1]["reason"] == "pickup confirmed"
    records = daemon.ctl_json(made, "audit", "query", "--who", "sftp:his-brink")
    assert [r["action"] for r in records] == ["pull", "pickup"]
    # two more answers with the same ZD number, sent to either node: two new names
    assert curl(made, "/v1/messages", "zis-eemland", data=answer(2))[0] == 202
    assert curl(other, "/v1/messages", "zis-eemland", data=answer(3))[0] == 202
    expected = {"ZD100200301_ANTW-2.edi", "ZD100200301_ANTW-3.edi"}
    assert daemon.until(lambda: outbox_names(made, tmp_path) == expected), \
        outbox_names(made, tmp_path)
    assert outbox_names(other, tmp_path) == expected
    for name, node in zip(sorted(expected), (made, other)):
        assert sftp(node, "his-brink", f"get outbox/{name}\n", tmp_path).returncode == 0
        assert (tmp_path / name).read_bytes().startswith(b"UNA:+.? '")
    assert daemon.ctl_json(made, "audit", "verify")["records"] > 10


def test_outbox_files_of_an_older_gatewayd_are_taken_in_at_start(tmp_path):
    """SQLite, one node: an answer's outbox file as an older gatewayd wrote it (sealed, on
    disk, no row) is listed under its name after a restart, served from the store and
    gone from disk; a file that does not open is quarantined."""
    made = daemon.init(tmp_path / "gw")
    process = daemon.start(made, tmp_path / "gatewayd.log")
    try:
        assert curl(made, "/v1/messages", "zis-eemland", data=answer(1))[0] == 202
        assert daemon.until(lambda: outbox_names(made, tmp_path) == {"ZD100200301_ANTW.edi"})
    finally:
        process.kill()
        process.wait()
    store = Store(Path(made["spool"]), time.time, keys.load(Path(made["keys"])))
    (row,) = store.by_zd("ZD100200301_ANTW")
    plain = store.payload(row, "out")
    with store.db.transaction():                       # as before this gatewayd: no row...
        store.db.execute("DELETE FROM outbox")
    store.close()
    folder = tmp_path / "gw" / "sftp" / "his-brink" / "outbox"   # ...but a sealed file
    (folder / "ZD100200301_ANTW.edi").write_bytes(store.ring.seal(plain, row["id"]))
    (folder / "ZD1.edi").write_bytes(b"not sealed")
    process = daemon.start(made, tmp_path / "restarted.log")
    try:
        assert outbox_names(made, tmp_path) == {"ZD100200301_ANTW.edi"}
        result = sftp(made, "his-brink", "get outbox/ZD100200301_ANTW.edi\n", tmp_path)
        assert result.returncode == 0 and (tmp_path / "ZD100200301_ANTW.edi").read_bytes() == plain
    finally:
        process.kill()
        process.wait()
    assert not list(folder.iterdir())
    assert [p.name for p in (tmp_path / "gw" / "spool" / "quarantine").iterdir()] == \
        ["his-brink-ZD1.edi"]
    log = (tmp_path / "restarted.log").read_text()
    assert "1 SFTP outbox file(s) from disk taken into the store" in log
    assert "ALERT outbox file ZD1.edi of sftp:his-brink failed its seal" in log
