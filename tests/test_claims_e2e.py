"""Two gatewayd nodes (processes) on one PostgreSQL store push to one institution: every
message arrives once, never more than ``delivery.max_in_flight`` at once over both nodes;
with one node gone the other pushes."""

import functools
import random
import shutil
import time
from pathlib import Path

from gateway.codecs import hl7v2
from tests.helpers import daemon
from tests.helpers.fakes import free_port, numbered_referral
from tests.helpers.institution import Institution
from tests.test_daemon_e2e import identity, msa, send

COUNT = 24


def slow_institution(tls_folder: Path) -> Institution:
    """An institution that answers AA after 0.05 to 0.8 s (so that the nodes'
    once-a-second rounds do not fall into one rhythm)."""
    return Institution(tls_folder, delay=functools.partial(random.Random(13).uniform, 0.05, 0.8))


def two_nodes(tmp_path: Path, url: str) -> tuple[dict, dict, Institution]:
    """Node a's setup (gatewayctl init) pushing Ziekenhuis Eemland to a slow institution,
    and node b: a copy of its folder (the same key file, CA and tables) on other ports."""
    a = daemon.init(tmp_path / "a")
    institution = slow_institution(tmp_path / "a" / "tls")
    tables = tmp_path / "a" / "routes" / "institutions.csv"
    tables.write_text(tables.read_text().replace(
        "06005678,Ziekenhuis Eemland,xml,pull,",
        f"06005678,Ziekenhuis Eemland,hl7,mllp://127.0.0.1:{institution.port},"))
    daemon.configure(a, store__url=f'"{url}"', delivery__max_in_flight=2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = {**a, "config": str(tmp_path / "b" / Path(a["config"]).name),
         "ports": {name: free_port() for name in a["ports"]}}
    daemon.configure(a, node__name='"node-a"')
    daemon.configure(b, node__name='"node-b"', **{f"listen__{name}_port": port
                                                   for name, port in b["ports"].items()})
    return a, b, institution


def test_two_nodes_push_each_message_once_within_the_limit(postgres, tmp_path):
    """24 referrals sent to both nodes for one institution that answers slowly: each arrives
    there once, at most 2 (max_in_flight) at once over both nodes (and 2 at some moment).
    Then node a is killed (idle) and 6 more sent to b arrive too; no claim is left."""
    a, b, institution = two_nodes(tmp_path, postgres.url(tmp_path / "store"))
    processes = [daemon.start(made, tmp_path / f"{name}.log")
                 for made, name in ((a, "a"), (b, "b"))]
    try:
        sending(a, b, range(1, COUNT + 1))
        arrived(institution, COUNT)
        processes[0].kill()
        processes[0].wait(10)
        sending(b, b, range(COUNT + 1, COUNT + 7))
        arrived(institution, COUNT + 6)
        rows = daemon.ctl_json(b, "queue", "ls", "--state", "all")
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
    numbers = [hl7v2.decode(message)[0].zd_number for message in institution.received]
    assert sorted(numbers) == sorted(f"ZD{500_000_000 + i}" for i in range(1, COUNT + 7))
    assert institution.most == 2
    assert {row["state"] for row in rows} == {"delivered"} and len(rows) == COUNT + 6
    logs = [(tmp_path / f"{name}.log").read_text() for name in "ab"]
    assert "node node-a" in logs[0] and "node node-b" in logs[1]
    assert logs[1].count("delivered id=") >= 6
    schema = postgres.schemas[str((tmp_path / "store").resolve())]
    assert postgres.run(f"SELECT count(*) FROM {schema}.claims") == [(0,)]


def sending(first: dict, second: dict, numbers) -> None:
    """Referrals ``numbers`` over MLLP/TLS, to the two nodes in turn; each must get AA."""
    brink = identity(first, "his-brink")
    for index in numbers:
        made = (first, second)[index % 2]
        reply = send(made["ports"]["mllp"], made, numbered_referral(index, "TWO"),
                     brink["cert"], brink["key"])
        assert msa(reply) == [b"MSA", b"AA", f"TWO-{index:06d}".encode()]


def arrived(institution: Institution, count: int) -> None:
    """Wait (at most a minute) until ``count`` pushes arrived, then a second more: a
    repeat would come then."""
    deadline = time.time() + 60
    while len(institution.received) < count and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
