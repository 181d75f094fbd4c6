"""Two active gatewayd nodes (separate processes, separate ports) on one PostgreSQL
database, proven the hard way: MLLP/TLS senders spread over both nodes and resend what
was not acknowledged to either; one node at a time is killed with SIGKILL, the
database's connections are terminated, the database server is stopped and started;
an MLLP/TLS institution counts what is pushed to it. Every acknowledged message is
stored once, every stored message is delivered, a repeated delivery is only ever a
retry after a kill or a lost database connection, and the one audit chain verifies.

The kill test runs 4 kills by default and 50 in its ``slow`` variant (``-m slow``).
"""

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway import keys
from gateway.codecs import hl7v2
from gateway.spool import db as database
from tests.helpers import daemon, nodes as cluster_of
from tests.helpers.fakes import numbered_referral
from tests.helpers.institution import Institution, push_route
from tests.helpers.senders import Senders
from tests.test_crash import check
from tests.test_daemon_e2e import curl

# A failed push retries soon; 50 pushes at once (the dispatcher starts a round a second); a
# claim whose node could not record its push (the database gone) expires soon.
QUICK = {"retry__first_seconds": 1, "retry__max_seconds": 2, "delivery__max_in_flight": 50,
         "delivery__timeout_seconds": 3, "delivery__lease_seconds": 8}
DRAIN_SECONDS = 40     # for every stored message to be delivered (a push cut off waits its lease)


@pytest.fixture
def two_nodes(tmp_path):
    """``two_nodes(url)``: two started nodes on the store at ``url`` that push every
    referral (Ziekenhuis Eemland, 06005678) to an Institution that knows which node pushed
    what; (nodes, institution). Whatever runs is stopped afterwards."""
    made: list = []

    def start(url: str) -> tuple[list[cluster_of.Node], Institution]:
        nodes = cluster_of.make(tmp_path, 2, url, **QUICK)
        made.append(nodes)
        setup = nodes[0].made
        institution = Institution(Path(setup["ca"]).parent, lambda: cluster_of.pids(nodes))
        push_route(Path(setup["routes"]) / "institutions.csv", "06005678", institution.port)
        cluster_of.start_all(nodes)
        return nodes, institution
    yield start
    for nodes in made:
        cluster_of.stop_all(nodes)


def settle(nodes, institution: Institution, url: str, acked: set[str],
           outages: tuple[tuple[float, float], ...] = ()) -> tuple[list[str], list[str]]:
    """Wait (DRAIN_SECONDS at most) until every stored message is delivered; stop the
    nodes; return (every problem: acknowledged messages lost or stored twice, payloads
    that do not open, stored messages not delivered or never received, a broken audit
    chain; the pushes repeated while the nodes lived, i.e. not explained by a kill or by
    the ``outages``: monotonic spans every node was cut from its database)."""
    daemon.until(lambda: not _undelivered(url), DRAIN_SECONDS)
    made = nodes[0].made
    problems = check(Path(made["spool"]), acked, keys.load(Path(made["keys"])), url)
    received = {hl7v2.decode(message)[0].zd_number for message in institution.received}
    problems += [f"message {i} ({zd}) is {state}" for i, zd, state in _undelivered(url)]
    problems += [f"message {i} ({zd}) never reached the institution"
                 for i, zd in _stored(url) if zd not in received]
    repeats = institution.repeats({node.name: [(at, at) for at in node.kills] + list(outages)
                                   for node in nodes})
    print(f"\n{summary(nodes, institution, acked, repeats)}")
    audit = daemon.ctl(made, "audit", "verify", check=False)
    if audit.returncode != 0:
        problems.append(f"audit verify: {audit.stderr.decode().strip()}")
    cluster_of.stop_all(nodes)
    kills = {node.name: node.kills for node in nodes}
    return problems, [f"pushed {c} again while the nodes lived: {first} then {then} "
                      f"{after - before:.2f} s later; {first} killed "
                      f"{[round(at - before, 2) for at in kills.get(first, [])]} s after the first"
                      for c, first, then, before, after in repeats["while alive"]]


def no_repeats(repeats: list[str]) -> None:
    """No push repeated while the nodes lived (delivery claims)."""
    assert repeats == []


def summary(nodes, institution: Institution, acked: set[str], repeats: dict) -> str:
    """One line with the counts this test is about (repeats by the nodes that pushed the
    copy before and the repeat)."""
    by_node = Counter(receipt.node or "unknown" for receipt in institution.receipts)
    pairs = {kind: Counter(f"{first}>{then}" for _, first, then, *_ in found)
             for kind, found in repeats.items()}
    return (f"kills {sum(len(node.kills) for node in nodes)}, acknowledged {len(acked)}, "
            f"pushes received {len(institution.receipts)} of {len(institution.counts())} "
            f"messages ({_counts(by_node)}); repeats after a kill or outage "
            f"{len(repeats['after a failure'])} ({_counts(pairs['after a failure'])}), repeats "
            f"while alive {len(repeats['while alive'])} ({_counts(pairs['while alive'])})")


def _counts(counter: Counter) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items())) or "-"


def _undelivered(url: str) -> list:
    db = database.connect(url)
    try:
        return list(db.execute("SELECT id, zd_number, state FROM messages WHERE state <> "
                               "'delivered' ORDER BY id"))
    finally:
        db.close()


def _stored(url: str) -> list:
    db = database.connect(url)
    try:
        return list(db.execute("SELECT id, zd_number FROM messages ORDER BY id"))
    finally:
        db.close()


@pytest.mark.parametrize("kills", [4, pytest.param(50, marks=pytest.mark.slow)])
def test_one_node_killed_again_and_again(postgres, two_nodes, tmp_path, kills):
    """A message posted to one node and again to the other gets the first receipt; then
    one node or the other is killed with SIGKILL ``kills`` times (and started again)
    while two MLLP/TLS senders spread over both nodes: nothing acknowledged is lost or
    stored twice, everything is delivered, a push repeats only after a kill."""
    url = postgres.url(tmp_path / "store")
    nodes, institution = two_nodes(url)
    data = numbered_referral(1, "TWICE", zd_base=900_000_000)     # a ZD number of its own
    first, again = (curl(node.made, "/v1/messages", "his-brink", data=data) for node in nodes)
    assert first[0] == again[0] == 202
    assert json.loads(first[1])["id"] == json.loads(again[1])["id"]
    rng = random.Random(kills)
    with Senders([node.made for node in nodes], mllp=2, https=0, seed=kills) as senders:
        try:
            for _ in range(kills):
                time.sleep(rng.uniform(0.8, 1.6))
                victim = rng.choice(nodes)
                victim.kill()
                victim.start()
            time.sleep(1.0)
        finally:
            senders.stop.set()
    assert len(senders.acked) > 10 * kills ** 0.5, "too few acknowledged to mean anything"
    problems, repeats = settle(nodes, institution, url, senders.acked | {"TWICE-000001"})
    assert problems == []
    no_repeats(repeats)


def test_database_outages_under_load(cluster, two_nodes):
    """While senders stream to both nodes, their database connections are terminated
    twice, then the database server stops: each node's /healthz answers 503 naming
    PostgreSQL and nothing is acknowledged; the server back, both nodes recover by
    themselves and nothing acknowledged is lost or doubled."""
    nodes, institution = two_nodes(cluster.url)
    outages = []
    with Senders([node.made for node in nodes], mllp=2, https=1) as senders:
        for _ in range(2):
            time.sleep(1.0)
            assert cluster.terminate("gatewayd") >= 2
            outages.append((time.monotonic(), time.monotonic() + 1.0))   # back within 1 s
        time.sleep(1.5)
        stopped = time.monotonic()
        cluster.stop()
        down = [daemon.until(lambda node=node: _down(node), 15) for node in nodes]
        stalled = len(senders.acked)
        time.sleep(1.5)
        assert down == [True, True], [daemon.health(node.made) for node in nodes]
        assert len(senders.acked) == stalled, "acknowledged while the database was down"
        cluster.start()
        assert daemon.until(lambda: all(daemon.health(n.made)[0] == 200 for n in nodes), 30)
        outages.append((stopped, time.monotonic() + 1.0))
        assert daemon.until(lambda: len(senders.acked) > stalled + 5), "no recovery"
    assert all("lost the connection to PostgreSQL" in node.log.read_text() for node in nodes)
    problems, repeats = settle(nodes, institution, cluster.url, senders.acked, tuple(outages))
    assert problems == []
    no_repeats(repeats)


def _down(node) -> bool:
    status, text = daemon.health(node.made)
    return status == 503 and "PostgreSQL" in text
