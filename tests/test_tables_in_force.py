"""The same tables everywhere: route tables and identities in force live in the store.

Two real gatewayd processes on one PostgreSQL database: a change made on one node
(gatewayctl, reload) is in force on the other within seconds and recorded once; a
bad table is refused everywhere; a node whose files differ says so at its start
and the store wins. On both backends: seeding, what the store keeps, and routing
the fallback queue again off the reactor (a heartbeat keeps ticking)."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import config, inforce, keys, routes
from gateway.spool import db as database
from gateway.spool import inforce as sql
from gateway.spool.store import Store
from tests.helpers import daemon
from tests.helpers.daemon import wait_for
from tests.helpers.fakes import ROOT, free_port, numbered_referral, run_together
from tests.test_daemon_e2e import identity, msa, send

SAMPLES = ROOT / "gateway" / "routes" / "samples"
NEW_ROW = ("06001111", "Nieuw", "xml", "pull")


def second_node(made: dict, folder: Path) -> dict:
    """A copy of ``made``'s setup in ``folder`` (same CA, key file and store) on ports of
    its own, with a spool of its own."""
    shutil.copytree(Path(made["config"]).parent, folder,
                    ignore=shutil.ignore_patterns("spool", "*.log"))
    text = json.dumps(made).replace(str(Path(made["config"]).parent), str(folder))
    other = json.loads(text)
    other["ports"] = {name: free_port() for name in made["ports"]}
    daemon.configure(other, **{f"listen__{name}_port": port
                               for name, port in other["ports"].items()})
    return other


@pytest.fixture
def nodes(tmp_path, postgres):
    """Nodes A and B, both running, on one PostgreSQL database (A seeded the tables)."""
    a = daemon.init(tmp_path / "a")
    referrers = tmp_path / "a" / "routes" / "referrers.csv"      # M. Visser refers anywhere
    referrers.write_text(referrers.read_text().replace("M. Visser,06005678,", "M. Visser,*,"))
    daemon.configure(a, store__url=f'"{postgres.url(tmp_path / "shared")}"',
                     store__tables_poll_seconds=1)
    b = second_node(a, tmp_path / "b")
    for made in (a, b):
        made["log"] = Path(made["config"]).parent / "gatewayd.log"
        made["process"] = daemon.start(made, made["log"])
    yield a, b
    for process in (a["process"], b["process"]):          # a test may have started one again
        if process.poll() is None:
            process.kill()
            process.wait()


def institutions_of(made) -> set[str]:
    return {row["agb"] for row in daemon.ctl_json(made, "routes", "ls")["institutions"]}


def to_new_row(index: int) -> bytes:
    return numbered_referral(index, "TIF").replace(b"06005678^VEKTIS", b"06001111^VEKTIS")


def state_of(made, zd: str) -> tuple[str, str]:
    (row,) = daemon.ctl_json(made, "queue", "ls", "--zd", zd, "--state", "all")
    return row["state"], row["destination"]


def count(made, sql_text: str, params=()) -> int:
    """The one value ``sql_text`` gives in ``made``'s store."""
    db = database.connect(config.load(Path(made["config"])).store_url)
    try:
        return db.value(sql_text, params)
    finally:
        db.close()


def test_a_route_change_on_one_node_is_in_force_on_the_other_and_recorded_once(nodes):
    """routes add on node A: node B routes by the new row within seconds; the referral B
    had put in fallback is routed again by A alone; one route change, one audit record."""
    a, b = nodes
    brink = identity(b, "his-brink")
    assert msa(send(b["ports"]["mllp"], b, to_new_row(1), brink["cert"], brink["key"]))[1] == b"AA"
    assert state_of(b, "ZD500000001")[0] == "fallback"
    daemon.ctl(a, "routes", "add", "institution", *NEW_ROW)
    wait_for(lambda: "06001111" in institutions_of(b), "node B to take the new row", 10)
    assert msa(send(b["ports"]["mllp"], b, to_new_row(2), brink["cert"], brink["key"]))[1] == b"AA"
    assert state_of(b, "ZD500000002") == ("ready", "06001111")
    wait_for(lambda: state_of(a, "ZD500000001")[0] == "ready", "the fallback referral to move")
    assert count(a, "SELECT count(*) FROM route_changes WHERE change = ?",
                 ("+ institution 06001111",)) == 1
    assert count(a, "SELECT count(*) FROM audit WHERE action = 'routes-change' AND "
                 "detail = ?", ("+ institution 06001111",)) == 1
    assert count(a, "SELECT count(*) FROM history WHERE state = 'ready' AND "
                 "message_id = (SELECT id FROM messages WHERE zd_number = 'ZD500000001')") == 1
    assert a["log"].read_text().count("fallback routed again") == 1
    assert "fallback routed again" not in b["log"].read_text()       # only the changing node
    assert "in force from the store" in b["log"].read_text()
    daemon.ctl(a, "reload")                                          # nothing changed:
    assert a["log"].read_text().count("fallback routed again") == 1  # not routed again


def test_a_bad_table_is_refused_everywhere_and_the_old_one_kept(nodes):
    """A bad row from gatewayctl on A and a bad hand-edited file reloaded on B are both
    refused with file:line; the store's version and both nodes' tables stay as they were."""
    a, b = nodes
    rows = institutions_of(a)
    before = count(a, "SELECT value FROM counters WHERE name = 'tables_version'")
    refused = daemon.ctl(a, "routes", "add", "institution", "0600", "X", "xml", "pull",
                         check=False)
    assert refused.returncode == 78 and b"institutions.csv:" in refused.stderr
    institutions = Path(b["routes"]) / "institutions.csv"
    institutions.write_text(institutions.read_text() + "06002222,Fout,pdf,pull,\n")
    reloaded = daemon.ctl(b, "reload", check=False)
    assert reloaded.returncode == 78 and b"format 'pdf'" in reloaded.stdout
    time.sleep(2.5)                                      # two polls of either node
    assert count(a, "SELECT value FROM counters WHERE name = 'tables_version'") == before
    assert institutions_of(a) == institutions_of(b) == rows


def test_an_identity_added_on_one_node_is_accepted_on_the_other(nodes):
    """identities add on A: B accepts the new certificate within seconds (HTTPS 202),
    audited once; B restarted with its old files warns once, the store's stay in force;
    gatewayctl reload on B then puts B's files in force everywhere, recorded once."""
    a, b = nodes
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(Path(a["routes"]).parent / "id")], check=True)
    added = daemon.ctl_json(a, "identities", "add", "his", "his-nieuw", "--agb", "01234567",
                            "--ssh-key", str(Path(a["routes"]).parent / "id.pub"))
    daemon.ctl(a, "routes", "add", "institution", *NEW_ROW)
    post = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", b["ca"],
            "--cert", added["cert"], "--key", added["key"], "--data-binary", "@-",
            f"https://127.0.0.1:{b['ports']['https']}/v1/messages"]

    def accepted(index):
        return subprocess.run(post, input=numbered_referral(index, "NIEUW"), capture_output=True,
                              timeout=30).stdout == b"202"
    wait_for(lambda: accepted(1), "node B to accept the new identity", 10)
    sftp = ["sftp", "-b", "-", "-i", str(Path(a["routes"]).parent / "id"), "-P",
            str(b["ports"]["sftp"]), "-o", "StrictHostKeyChecking=no", "-o",
            "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "his-nieuw@127.0.0.1"]
    listed = subprocess.run(sftp, input="ls\n", capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr          # B has the key without its file
    assert count(a, "SELECT count(*) FROM audit WHERE action = 'identities-add'") == 1
    assert count(a, "SELECT count(*) FROM audit WHERE action = "
                 "'identities-change'") == 0
    b["process"].terminate()
    b["process"].wait(timeout=30)
    mark = len(b["log"].read_text())
    b["process"] = daemon.start(b, b["log"])                  # waits for it to listen
    warnings = [line for line in b["log"].read_text()[mark:].splitlines()
                if "differ from the tables in force" in line]
    assert len(warnings) == 1 and "institutions.csv, identities.toml" in warnings[0]
    assert "06001111" in institutions_of(b) and accepted(2)
    daemon.ctl(b, "reload")
    wait_for(lambda: "06001111" not in institutions_of(a), "node A to take B's files", 10)
    wait_for(lambda: not accepted(3), "node A's identities from B's files", 10)
    assert count(a, "SELECT count(*) FROM route_changes WHERE change = ? AND "
                 "actor = 'reload'", ("- institution 06001111",)) == 1


def test_first_start_seeds_the_store_and_sqlite_files_win(backend, tmp_path):
    """A store without tables is seeded from the node's files (no change recorded). On
    SQLite the files win at the next start (one node, as before); on PostgreSQL the store
    wins and one warning names the files that differ."""
    made = daemon.init(tmp_path / "gw")
    settings = config.load(Path(made["config"]))
    ring = keys.load(settings.paths_keys)
    store = Store(settings.paths_spool, time.time, ring, url=backend.url(tmp_path / "db"))
    said = []
    found = inforce.begin(store, settings, said.append)
    assert found.tables == routes.load(SAMPLES) and said == []
    assert {i.name for i in found.identities} == {i.name for i in settings.identities}
    assert store.route_changes() == []
    (settings.paths_routes / "institutions.csv").write_text(
        (SAMPLES / "institutions.csv").read_text() + ",".join(NEW_ROW) + ",\n")
    worker = inforce.begin(store, settings, said.append, follower=True)
    assert "06001111" not in worker.tables.institutions       # a worker waits for a reload
    assert len(said) == 1 and "institutions.csv differ" in said.pop()
    again = inforce.begin(store, settings, said.append)
    if backend.name == "sqlite":
        assert "06001111" in again.tables.institutions and said == []
    else:
        assert "06001111" not in again.tables.institutions
        assert len(said) == 1 and "institutions.csv differ" in said[0]
    assert store.route_changes() == []


def test_stored_parts_are_the_files_text_and_identities_carry_their_keys(backend, tmp_path):
    """The store keeps each route table file's text as written (to export) and the
    identities as TOML with each SSH key written out, so another node needs no key file;
    publishing the same text again changes nothing (the version stays)."""
    made = daemon.init(tmp_path / "gw")
    settings = config.load(Path(made["config"]))
    store = Store(settings.paths_spool, time.time, keys.load(settings.paths_keys),
                  url=backend.url(tmp_path / "db"))
    inforce.begin(store, settings, lambda line: None)
    version, parts = sql.read(store.db)
    assert parts["institutions.csv"].content == (settings.paths_routes
                                                 / "institutions.csv").read_text()
    assert parts["mailboxes.csv"].content == (settings.paths_routes
                                              / "mailboxes.csv").read_text()
    brink = next(i for i in inforce.load(store.db).identities if i.name == "his-brink")
    assert brink.ssh_public_key.startswith("ssh-ed25519 ")
    again = inforce.publish(store, inforce.route_texts(settings.paths_routes), "test")
    assert (again.version, again.parts, again.route_changes) == (version, (), [])


def test_routing_fallback_again_leaves_the_reactor_free(backend, tmp_path):
    """Routing 3000 fallback messages again after a change runs off the reactor: a
    heartbeat every 10 ms keeps ticking meanwhile (done on the reactor, as before, the
    same heartbeat does not tick at all while 300 are routed)."""
    def child(folder, count, how):
        result = subprocess.run(
            [sys.executable, "-m", "tests.helpers.reroute_child", str(folder),
             backend.url(folder) or "-", str(count), how],
            capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])
    blocked = child(tmp_path / "control", 300, "reactor")
    assert blocked["moved"] == 300 and blocked["ticks"] <= 1
    free = child(tmp_path / "thread", 3000, "thread")
    assert free["moved"] == 3000 and free["ticks"] >= 20


def test_changes_made_at_once_on_two_nodes_get_versions_one_after_the_other(postgres, tmp_path):
    """Two nodes publishing different tables at the same moment take turns: each change
    gets its own version, every route change is recorded once, and the store ends with
    the one committed last."""
    made = daemon.init(tmp_path / "gw")
    settings = config.load(Path(made["config"]))
    ring, url = keys.load(settings.paths_keys), postgres.url(tmp_path / "db")
    stores = [Store(settings.paths_spool, time.time, ring, url=url) for _ in range(2)]
    inforce.begin(stores[0], settings, lambda line: None)
    base = (SAMPLES / "institutions.csv").read_text()
    texts = inforce.route_texts(settings.paths_routes)
    results: list = []          # (version, institutions.csv) of each publication

    def change(store, agb):
        for round_ in range(5):
            text = base + f"{agb[:6]}{round_:02d},Nieuw,xml,pull,\n"
            results.append((inforce.publish(store, {**texts, "institutions.csv": text},
                                            "node").version, text))
    run_together(change, list(zip(stores, ("06101100", "06202200"))), 60)
    assert sorted(v for v, _ in results) == list(range(2, 12))   # seeded as 1, then ten turns
    version, parts = sql.read(stores[0].db)
    assert version == 11 and parts["institutions.csv"].version == 11
    assert parts["institutions.csv"].content == dict(results)[11]    # the last committed
    logged = [row["change"] for row in stores[0].route_changes()]
    assert len(logged) == len(set(logged)) and len(logged) >= 10
