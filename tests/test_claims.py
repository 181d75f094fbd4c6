"""Delivery claims across nodes: two stores (two nodes' connections) on one database never
claim the same message, the in-flight limit per destination holds over both, an expired
lease is taken over, a running push keeps its claim, and a settled push drops it."""

import random
import threading
import time

import pytest
from twisted.logger import Logger

from gateway import config, routes
from gateway.errors import DeliveryError
from gateway.intake import Envelope, Intake
from gateway.spool import claims, delivery
from gateway.spool.store import ClaimLost
from tests.helpers.fakes import (RING, PendingDestination, numbered_referral, run_together,
                                 write_tables)

PUSH = ("mllp://",)
AGBS = ("06005678", "06009876", "06001111")      # three push destinations
ADMIN = Envelope("admin", "test")


class Node:
    """One node: its own store connection on the shared database, its dispatcher and a
    destination whose pushes stay open until the test settles them."""

    def __init__(self, backend, folder, clock, name: str, thread: bool = False):
        self.store = backend.store(folder / "spool", clock.seconds, RING, other_thread=thread)
        self.settings = config.defaults(folder)
        self.destination = PendingDestination()
        self.events: list = []
        self.dispatcher = delivery.Dispatcher(self.store, self.settings, self.destination,
                                              clock.seconds, node=name)
        self.dispatcher.log = Logger(observer=self.events.append)


def messages(backend, folder, clock, count: int, thread: bool = False) -> list[int]:
    """``count`` pushes spread over the destinations AGBS; their message ids."""
    tables = write_tables(folder / "routes", "".join(
        f"{agb},Inst{agb},hl7,mllp://127.0.0.1:{2575 + i},\n" for i, agb in enumerate(AGBS)),
        "01234567,V,*,\n")
    intake = Intake(backend.store(folder / "spool", clock.seconds, RING, other_thread=thread),
                    routes.load(tables), 1 << 24)
    ids = []
    for index in range(count):
        data = numbered_referral(index).replace(b"06005678^VEKTIS",
                                                f"{AGBS[index % 3]}^VEKTIS".encode())
        ids += [receipt.id for receipt in intake.accept(data, ADMIN)]
    return ids


def test_two_nodes_claiming_at_once_never_get_the_same_message(backend, tmp_path, clock):
    """Two nodes (own connections, own threads) claim and settle 150 pushes as fast as they
    can: every message is claimed by exactly one of them, once, and ends delivered with no
    claim left (on SQLite, whose writers take turns, one may do it all)."""
    ids = messages(backend, tmp_path, clock, 150)
    nodes = [Node(backend, tmp_path, clock, name, thread=True) for name in ("a", "b")]
    taken: dict[str, list[int]] = {"a": [], "b": []}
    failures: list = []

    start = threading.Barrier(2)

    def work(node: Node, name: str) -> None:
        start.wait(10)
        try:
            while True:
                rows = claims.take(node.store.db, name, clock.seconds(), 60, 100, PUSH, limit=7)
                if not rows:
                    return
                taken[name] += [row["id"] for row in rows]
                for row in rows:
                    node.store.settle(row["id"], name, "delivered", "delivery")
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
    run_together(work, list(zip(nodes, ("a", "b"))))
    assert failures == []
    everything = taken["a"] + taken["b"]
    assert sorted(everything) == sorted(ids) and len(set(everything)) == len(ids)
    assert (taken["a"] and taken["b"]) or backend.name == "sqlite", "both nodes took part"
    store = nodes[0].store
    assert [row["state"] for row in store.listing(limit=1000)] == ["delivered"] * len(ids)
    assert store.db.value("SELECT count(*) FROM claims") == 0


def test_in_flight_limit_holds_across_two_dispatchers(backend, tmp_path, clock):
    """With max_in_flight 4, two dispatchers on one store start 4 pushes per destination
    between them; a settled push frees one place, for whichever node ticks first."""
    messages(backend, tmp_path, clock, 30)
    a, b = Node(backend, tmp_path, clock, "a"), Node(backend, tmp_path, clock, "b")
    assert len(a.dispatcher.tick()) == 12                  # 4 for each of 3 destinations
    assert b.dispatcher.tick() == [] and a.dispatcher.tick() == []
    assert claims.live(a.store.db, clock.seconds()) == {agb: 4 for agb in AGBS}
    a.destination.open[0].callback(None)                   # one of each of two destinations
    a.destination.open[1].errback(DeliveryError("refused"))
    assert len(b.dispatcher.tick()) == 2                   # the deferred one waits 5 minutes
    assert a.dispatcher.tick() == []
    assert claims.live(a.store.db, clock.seconds()) == {agb: 4 for agb in AGBS}
    b.destination.open[0].callback(None)
    assert len(a.dispatcher.tick()) == 1 and b.dispatcher.tick() == []
    assert claims.live(a.store.db, clock.seconds()) == {agb: 4 for agb in AGBS}


def test_in_flight_limit_holds_under_concurrent_claiming(pg_backend, tmp_path, clock):
    """Four connections claim (limit 3 per destination) and release at random, as fast as
    they can, while a fifth counts the claims: no destination ever has more than 3."""
    backend = pg_backend
    messages(backend, tmp_path, clock, 60)
    stores = [backend.store(tmp_path / "spool", clock.seconds, RING, other_thread=True)
              for _ in range(5)]
    stop, seen, failures = threading.Event(), [], []

    def claimer(store, name: str) -> None:
        rng, mine = random.Random(name), []
        try:
            while not stop.is_set():
                mine += [row["id"] for row in claims.take(store.db, name, clock.seconds(), 60,
                                                          3, PUSH, limit=5)]
                rng.shuffle(mine)
                while len(mine) > rng.randint(0, 2):
                    with store.db.transaction():
                        claims.release(store.db, mine.pop(), name)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    def counter(store) -> None:
        while not stop.is_set():
            seen.append(max(claims.live(store.db, clock.seconds()).values(), default=0))
    threads = [threading.Thread(target=claimer, args=(store, f"n{i}"))
               for i, store in enumerate(stores[:4])] + \
        [threading.Thread(target=counter, args=(stores[4],))]
    for thread in threads:
        thread.start()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert len(seen) > 50 and max(seen) == 3, (len(seen), max(seen))


def test_an_expired_lease_is_taken_over(backend, tmp_path, clock):
    """A node that stops renewing (it died mid-push) keeps its claim for the lease; then
    another node claims and pushes the message. The first node's late failure changes
    nothing (the claim is not its own any more); the second node's delivery counts."""
    (message_id,) = messages(backend, tmp_path, clock, 1)
    a, b = Node(backend, tmp_path, clock, "a"), Node(backend, tmp_path, clock, "b")
    assert len(a.dispatcher.tick()) == 1
    clock.advance(59)
    assert b.dispatcher.tick() == []                       # a's lease (60 s) still runs
    clock.advance(2)
    assert len(b.dispatcher.tick()) == 1
    assert a.store.db.value("SELECT node FROM claims WHERE message_id = ?", (message_id,)) == "b"
    with pytest.raises(ClaimLost):
        a.store.settle(message_id, "a", "deferred", "delivery", "late", next_attempt_at=0)
    a.destination.open[0].errback(DeliveryError("refused"))     # a comes back, too late
    assert a.store.get(message_id)["state"] == "outbound"
    assert any("failed after its claim expired" in e["log_format"] for e in a.events)
    b.destination.open[0].callback(None)
    assert a.store.get(message_id)["state"] == "delivered"
    assert a.store.db.value("SELECT count(*) FROM claims") == 0


def test_a_running_push_keeps_its_claim(backend, tmp_path, clock):
    """A node renews the claims of its pushes under way while it ticks: 200 s into a push
    (over three leases) no other node can take it; the renewal of a claim that did go
    elsewhere is reported."""
    messages(backend, tmp_path, clock, 1)
    a, b = Node(backend, tmp_path, clock, "a"), Node(backend, tmp_path, clock, "b")
    assert len(a.dispatcher.tick()) == 1
    for _ in range(10):
        clock.advance(20)
        assert a.dispatcher.tick() == [] and b.dispatcher.tick() == []
    clock.advance(61)
    assert len(b.dispatcher.tick()) == 1                   # a stopped ticking: taken over
    a.dispatcher.tick()
    assert any("expired while its push was under way" in e["log_format"] for e in a.events)


def test_a_settled_push_drops_its_claim(backend, tmp_path, clock):
    """Delivered, deferred and quarantined (a damaged payload) each drop the claim in the
    transaction that changes the state."""
    first, second, third = messages(backend, tmp_path, clock, 3)
    node = Node(backend, tmp_path, clock, "a")
    node.store.db.execute("UPDATE payloads SET sealed = substr(sealed, 1, 60) WHERE "
                          "message_id = ? AND which = 'out'", (third,))
    node.dispatcher.tick()
    assert node.store.get(third)["state"] == "fallback"
    assert claims.live(node.store.db, clock.seconds()) == {AGBS[0]: 1, AGBS[1]: 1}
    node.destination.open[0].callback(None)
    node.destination.open[1].errback(DeliveryError("refused"))
    assert [node.store.get(i)["state"] for i in (first, second)] == ["delivered", "deferred"]
    assert node.store.db.value("SELECT count(*) FROM claims") == 0


def test_a_restarted_node_takes_its_own_claims_back_at_once(backend, tmp_path, clock):
    """A node killed mid-push and started again under the same name pushes at once (its
    old claims dropped at start), not a lease later. On PostgreSQL another node's start
    leaves them alone; on SQLite (one node) every claim found at start is its own."""
    messages(backend, tmp_path, clock, 2)
    assert len(Node(backend, tmp_path, clock, "a").dispatcher.tick()) == 2
    again = Node(backend, tmp_path, clock, "a")
    assert len(again.dispatcher.tick()) == 2
    other = Node(backend, tmp_path, clock, "b").dispatcher.tick()
    assert len(other) == (2 if backend.name == "sqlite" else 0)
