"""A push destination for end-to-end tests: a hospital's MLLP/TLS server that answers AA
and counts what it received, by MSH-10 and by the gatewayd process that pushed it.

Each connection is served on its own thread, so a gatewayd killed in the middle of a
push (a half-done handshake, a frame cut off) stops nothing. When the test names the
gatewayd processes (``senders``), each receipt says which of them pushed it: the
process that owns the other end of the connection (found in /proc). ``repeats`` sorts
the messages received more than once into repeats a failure explains (the node that
pushed the earlier copy was killed, or lost its database, before the repeat came) and
repeats while that node lived.
"""

import os
import re
import socket
import ssl
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, NamedTuple

from gateway.codecs import hl7v2


class Receipt(NamedTuple):
    at: float                 # time.monotonic() when its connection came (a node killed
                              # after writing the frame may leave it to be read later)
    control_id: str           # the pushed message's MSH-10
    node: str | None          # the name of the gatewayd process that pushed it, if known


class Institution:
    """Listens on a free port on 127.0.0.1 with the certificates in ``tls_folder`` (client
    certificates required); ``received`` holds the frames, ``receipts`` what came when
    from whom. ``senders()`` returns {pid: name} of the processes that may push. With
    ``delay``, each answer waits ``delay()`` seconds; ``most`` is the largest number of
    connections it had open at once."""

    def __init__(self, tls_folder: Path, senders: Callable[[], dict] = dict,
                 delay: Callable[[], float] | None = None):
        self.received: list[bytes] = []
        self.receipts: list[Receipt] = []
        self.senders, self.lock, self.delay = senders, threading.Lock(), delay
        self.open = self.most = 0
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                                  cafile=tls_folder / "ca.pem")
        self.context.load_cert_chain(tls_folder / "server.pem", tls_folder / "server.key")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer[1], time.monotonic()),
                             daemon=True).start()

    def _serve(self, conn: socket.socket, peer_port: int, at: float) -> None:
        node = _owner(peer_port, self.port, self.senders())
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)
        try:
            conn.settimeout(30)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                message, whole = _frame(tls)
                if not whole:
                    return                     # cut off: the sender went away
                if self.delay is not None:
                    with self.lock:
                        pause = self.delay()
                    time.sleep(pause)
                with self.lock:
                    self.received.append(message)
                    self.receipts.append(Receipt(at, _msh10(message), node))
                tls.sendall(b"\x0b" + hl7v2.ack(message, "AA") + b"\x1c\x0d")
        except OSError:
            pass                               # a sender killed mid-push: nothing to answer
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def counts(self) -> dict[str, int]:
        """How often each MSH-10 came."""
        found: dict[str, int] = defaultdict(int)
        for receipt in list(self.receipts):
            found[receipt.control_id] += 1
        return dict(found)

    def repeats(self, failures: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple]]:
        """Every second and later copy of a message, as {"after a failure": [...], "while
        alive": [...]} of (MSH-10, node of the copy before, node of the repeat, their
        times). A repeat is after a failure when the node that pushed the copy before it
        (any node, if unknown) failed between the two: ``failures`` maps node names to the
        spans (monotonic start, end) a node was killed or could not reach its database, so
        a push may have gone unrecorded."""
        found: dict[str, list[tuple]] = {"after a failure": [], "while alive": []}
        by_id: dict[str, list[Receipt]] = defaultdict(list)
        for receipt in sorted(self.receipts):
            by_id[receipt.control_id].append(receipt)
        for control_id, copies in by_id.items():
            for before, repeat in zip(copies, copies[1:]):
                suspects = [before.node] if before.node else list(failures)
                failed = any(start <= repeat.at and before.at <= end for name in suspects
                             for start, end in failures.get(name, []))
                found["after a failure" if failed else "while alive"].append(
                    (control_id, before.node or "?", repeat.node or "?", before.at, repeat.at))
        return found


def read_frame(conn) -> bytes:
    """One MLLP frame's content from a socket (what came, if it closes first)."""
    return _frame(conn)[0]


def _frame(conn) -> tuple[bytes, bool]:
    """(one MLLP frame's content, whether it came whole) from a socket."""
    data = b""
    while not data.endswith(b"\x1c\x0d"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.strip(b"\x0b\x1c\x0d"), data.endswith(b"\x1c\x0d")


def push_route(institutions: Path, agb: str, port: int) -> None:
    """Make ``agb``'s row in the route table ``institutions`` push HL7 to 127.0.0.1:``port``."""
    text = institutions.read_text()
    row = re.compile(rf"^({agb},[^,\n]*),[^,\n]*,[^,\n]*,", re.MULTILINE)
    assert row.search(text), f"no institution {agb} in {institutions}"
    institutions.write_text(row.sub(rf"\1,hl7,mllp://127.0.0.1:{port},", text))


def _msh10(message: bytes) -> str:
    fields = message.split(b"\r", 1)[0].split(b"|")
    return fields[9].decode("latin-1") if len(fields) > 9 else ""


def _owner(peer_port: int, own_port: int, senders: dict) -> str | None:
    """The name of the process in ``senders`` ({pid: name}) whose socket is 127.0.0.1:
    ``peer_port`` connected to ``own_port``, or None (looked up a few times: a read of
    /proc/net/tcp can miss a line while connections come and go)."""
    for _ in range(5 if senders else 0):
        inode = _socket(peer_port, own_port)
        found = next((name for pid, name in senders.items() if inode and _holds(pid, inode)), None)
        if found:
            return found
        time.sleep(0.02)
    return None


def _socket(local_port: int, remote_port: int) -> str | None:
    """The open TCP socket 127.0.0.1:``local_port`` -> ``remote_port`` as an fd links to it."""
    wanted = f":{local_port:04X}", f":{remote_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted[0]) and fields[2].endswith(wanted[1]) and fields[9] != "0":
            return f"socket:[{fields[9]}]"     # (a closed one, in TIME_WAIT, has inode 0)
    return None


def _holds(pid: int, inode: str) -> bool:
    """Whether process ``pid`` has the socket ``inode`` open."""
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False                         # gone
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") == inode:
                return True
        except OSError:
            continue                         # closed while looking
    return False
