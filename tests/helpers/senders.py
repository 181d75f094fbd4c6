"""Senders for the crash and outage tests: threads that send numbered referrals to one or
more gatewayd nodes over MLLP/TLS and HTTPS, each resending a message until it is
acknowledged (AA with its MSH-10, or 202) — to any node, chosen at random for every
attempt — and only then going on with the next. ``acked`` holds the control ids
acknowledged; a message never acknowledged may or may not be stored."""

import random
import ssl
import threading
import time

from tests.helpers.fakes import Threads, numbered_referral
from tests.test_daemon_e2e import curl, identity, msa, send


class Senders(Threads):
    """``mllp`` MLLP/TLS senders (control ids ``MLLP-…``, ``MLLP1-…``, …) and ``https``
    HTTPS senders (``HTTP-…``, …) to the setups ``nodes`` (``gatewayctl init`` output
    with each node's ports), all as his-brink; each sender's ZD numbers are its own."""

    def __init__(self, nodes: list[dict], mllp: int = 1, https: int = 1, seed: int = 0):
        super().__init__(timeout=60)
        self.nodes, self.acked = nodes, set()
        self.rng, self.lock = random.Random(seed), threading.Lock()
        brink = identity(nodes[0], "his-brink")
        self.threads = [threading.Thread(target=self._loop, args=(
            _name("MLLP", n), 500_000_000 + n * 10_000_000,
            lambda node, data, control: msa(send(node["ports"]["mllp"], node, data, brink["cert"],
                                                 brink["key"])) == [b"MSA", b"AA", control]))
            for n in range(mllp)]
        self.threads += [threading.Thread(target=self._loop, args=(
            _name("HTTP", n), 700_000_000 + n * 10_000_000,
            lambda node, data, _: curl(node, "/v1/messages", "his-brink", data=data)[0] == 202))
            for n in range(https)]

    def _node(self) -> dict:
        with self.lock:
            return self.rng.choice(self.nodes)

    def _loop(self, prefix: str, zd_base: int, deliver) -> None:
        index = 0
        while not self.stop.is_set():
            index += 1
            control = f"{prefix}-{index:06d}"
            data = numbered_referral(index, prefix, zd_base=zd_base)
            while not self.stop.is_set():
                try:
                    if deliver(self._node(), data, control.encode()):
                        with self.lock:
                            self.acked.add(control)
                        break
                except (OSError, ssl.SSLError, IndexError):
                    pass
                time.sleep(0.05)


def _name(kind: str, number: int) -> str:
    return kind if number == 0 else f"{kind}{number}"
