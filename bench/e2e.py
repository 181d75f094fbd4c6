"""End-to-end throughput of a running gatewayd over MLLP/TLS (and HTTPS posts).

Starts a fresh gatewayd (``gatewayctl init`` in a temporary folder) and, as the
baseline, a minimal non-durable MLLP/TLS server on Twisted that answers AA at
once (``bench/echo_server.py``), then drives both with the same client: 1, 8 and
64 connections sending back to back, a fixed offered load of 200 messages/s for
p50/p99 ACK latency, and HTTPS posts. Prints messages/s, latencies, the ratio to
the baseline, the CPU time (user + system, from /proc/PID/stat) each server
spent per message, and gatewayd's peak RSS.

With ``--store postgresql://…`` a second gatewayd runs the same on a PostgreSQL
store (a scratch schema of that database, dropped afterwards), against the same
baseline, followed by its ratios to the SQLite gatewayd of this run. With ``--nodes N``
as well, N gatewayd nodes (processes with ports of their own, ``tests/helpers/nodes.py``)
run on one more scratch schema, the connections spread over them (connection n goes
to node n mod N), CPU per message summed over the nodes, peak RSS per node.

With ``--workers N`` gatewayd runs as N processes (``process.workers``); CPU time and
peak RSS are then those of all its processes together (RSS: the sum of each one's peak).

Run: ``.venv/bin/python bench/e2e.py [--seconds S] [--workers N] [--store URL [--nodes N]]``.
Aims (issue 12): 8 connections >= 0.25x the baseline, 64 connections >= 0.3x; p99 <= 20 ms
at 200 messages/s; peak RSS of all processes <= 150 MB. Issue 13, two nodes on PostgreSQL: 8
connections >= 0.3x the baseline, p99 <= 20 ms at 200 messages/s, RSS <= 150 MB a node.
"""

import argparse
import http.client
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import daemon  # noqa: E402
from tests.helpers.fakes import free_port, numbered_referral  # noqa: E402
from tests.helpers.nodes import Node, node_setup, stop_all  # noqa: E402
from tests.helpers.pgcluster import scratch_schema  # noqa: E402


class Client:
    """One MLLP/TLS connection that sends a message and waits for its ACK."""

    def __init__(self, port: int, made: dict):
        brink = next(i for i in made["identities"] if i["name"] == "his-brink")
        context = ssl.create_default_context(cafile=made["ca"])
        context.load_cert_chain(brink["cert"], brink["key"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.conn = context.wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""

    def send(self, message: bytes) -> float:
        start = time.perf_counter()
        self.conn.sendall(b"\x0b" + message + b"\x1c\x0d")
        while b"\x1c\x0d" not in self.buffer:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        ack, _, self.buffer = self.buffer.partition(b"\x1c\x0d")
        if b"MSA|AA|" not in ack:
            raise RuntimeError(f"not AA: {ack[-80:]!r}")
        return time.perf_counter() - start


def drive(ports: list[int], made: dict, connections: int, seconds: float, prefix: str,
          rate_each: float | None = None) -> tuple[int, list[float]]:
    """Send for ``seconds`` on ``connections`` connections, connection n to ``ports[n mod
    len(ports)]`` (paced at ``rate_each``/s each when given); return (messages
    acknowledged, latencies)."""
    latencies: list[float] = []
    counts = [0] * connections
    deadline = time.perf_counter() + seconds

    def worker(number: int):
        client = Client(ports[number % len(ports)], made)
        sent = 0
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            if rate_each:
                wait = started + sent / rate_each - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            latencies.append(client.send(numbered_referral(sent, f"{prefix}{number:02d}")))
            sent += 1
        counts[number] = sent

    _run_all(worker, connections)
    return sum(counts), latencies


def https_posts(setups: list[dict], seconds: float, connections: int = 8) -> int:
    """HTTPS posts for ``seconds`` on ``connections`` connections, connection n to node
    n mod len(setups); how many were answered 202."""
    made = setups[0]
    hoog = next(i for i in made["identities"] if i["name"] == "his-hoogveld")
    data = (ROOT / "fixtures" / "medvri" / "two-messages-unoc.edi").read_bytes()
    counts = [0] * connections
    deadline = time.perf_counter() + seconds

    def worker(number: int):
        context = ssl.create_default_context(cafile=made["ca"])
        context.load_cert_chain(hoog["cert"], hoog["key"])
        conn = http.client.HTTPSConnection(
            "127.0.0.1", setups[number % len(setups)]["ports"]["https"], context=context)
        sent = 0
        while time.perf_counter() < deadline:
            body = data.replace(b"REF2604150815", f"H{number:02d}{sent:09d}".encode())
            conn.request("POST", "/v1/messages", body)
            response = conn.getresponse()
            response.read()
            assert response.status == 202, response.status
            sent += 1
        counts[number] = sent

    _run_all(worker, connections)
    return sum(counts)


def _run_all(worker, count: int) -> None:
    """Run ``worker(0..count-1)`` in threads and wait for all of them."""
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(300):
        if "listening" in log.read_text():
            return process
        time.sleep(0.05)
    raise RuntimeError(f"did not start: {log.read_text()}")


def setup(folder: Path, workers: int = 1) -> dict:
    """``gatewayctl init`` in ``folder`` on free ports; 64 connections come from one
    client address."""
    made = daemon.init(folder)
    daemon.configure(made, limits__max_connections_per_client=100, process__workers=workers)
    return made


def on_postgres(made: dict, url: str) -> dict:
    """The same setup (certificates, ports) with its store in PostgreSQL at ``url``."""
    daemon.configure(made, store__url=f'"{url}"')
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="gatewayd processes "
                        "(process.workers)")
    parser.add_argument("--store", default="", help="also run a gatewayd on PostgreSQL in "
                        "this database (postgresql://…; a scratch schema, dropped afterwards)")
    parser.add_argument("--nodes", type=int, default=1, help="with --store: also run this "
                        "many gatewayd nodes on one more scratch schema")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        made = setup(folder / "gw", args.workers)
        echo_port = free_port()
        echo = start([sys.executable, str(ROOT / "bench" / "echo_server.py"), made["config"],
                      str(echo_port)], folder / "echo.log")
        try:
            print(f"gatewayd on SQLite, {args.workers} process(es)")
            sqlite = run([made], echo_port, echo, folder / "sqlite", args.seconds)
            if args.store:
                postgres(args, made, echo_port, echo, folder, sqlite)
        finally:
            echo.terminate()


def postgres(args, made: dict, echo_port: int, echo, folder: Path, sqlite: dict) -> None:
    """One gatewayd on PostgreSQL, then (``--nodes``) several, each with its ratios."""
    with scratch_schema(args.store) as url:
        print(f"\ngatewayd on PostgreSQL ({args.store})")
        single = run([on_postgres(made, url)], echo_port, echo, folder / "pg", args.seconds)
    print(_against("one PostgreSQL node against SQLite in this run", single, sqlite))
    if args.nodes > 1:
        with scratch_schema(args.store) as url:
            on_postgres(made, url)
            setups = [node_setup(made, number) for number in range(args.nodes)]
            print(f"\n{args.nodes} gatewayd nodes on one PostgreSQL database ({args.store}), "
                  f"connections spread over them")
            several = run(setups, echo_port, echo, folder / "nodes", args.seconds)
        print(_against(f"{args.nodes} nodes against one PostgreSQL node", several, single))
        print(_against(f"{args.nodes} nodes against SQLite", several, sqlite))


def _against(title: str, found: dict, base: dict) -> str:
    return f"{title}: " + ", ".join(f"{name} {found[name] / base[name]:.2f}x" for name in base)


def run(setups: list[dict], echo_port: int, echo, logs: Path, seconds: float) -> dict:
    """Start a gatewayd for each setup (logging into ``logs``-N.log), measure, stop them."""
    nodes = [Node(f"node{number}", made, Path(f"{logs}-{number}.log"))
             for number, made in enumerate(setups)]
    try:
        for node in nodes:
            node.start()
        return report(nodes, echo_port, echo, seconds)
    finally:
        stop_all(nodes)


def processes(pid: int) -> list[int]:
    """``pid`` and its child processes (gatewayd's workers)."""
    try:
        return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except OSError:
        return [pid]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children so far (fields 14 and 15
    of /proc/PID/stat)."""
    total = 0
    for each in processes(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured(pids: list[int], run) -> tuple[int, float]:
    """(messages ``run()`` got acknowledged, CPU ms per message the servers ``pids`` spent)."""
    used = sum(cpu_seconds(pid) for pid in pids)
    done, _ = run()
    return done, (sum(cpu_seconds(pid) for pid in pids) - used) / max(done, 1) * 1000


def report(nodes: list[Node], echo_port: int, echo: subprocess.Popen, seconds: float) -> dict:
    """Print the figures; return the messages/s per connection count and the HTTPS
    posts/s."""
    made, ports = nodes[0].made, [node.made["ports"]["mllp"] for node in nodes]
    pids = [node.pid for node in nodes]
    figures = {}
    print(f"MLLP/TLS, {seconds:g}s per run; baseline = non-durable Twisted MLLP/TLS server answering AA")
    print(f"{'connections':>11} {'gatewayd msg/s':>15} {'baseline msg/s':>15} {'ratio':>6} "
          f"{'gatewayd CPU ms/msg':>20} {'baseline CPU ms/msg':>20}")
    for connections in (1, 8, 64):
        done, used = measured(pids, lambda: drive(ports, made, connections, seconds,
                                                  f"C{connections}-"))
        base, base_used = measured([echo.pid], lambda: drive([echo_port], made, connections,
                                                             seconds, f"E{connections}-"))
        figures[f"{connections} connections"] = done / seconds
        print(f"{connections:>11} {done / seconds:>15,.0f} {base / seconds:>15,.0f} "
              f"{done / base:>6.2f} {used:>20.3f} {base_used:>20.3f}")
    _, latencies = drive(ports, made, 8, seconds, "P-", rate_each=25)
    _, base = drive([echo_port], made, 8, seconds, "Q-", rate_each=25)
    print(f"offered 200 msg/s on 8 connections: p50 {percentile(latencies, 0.5):.1f} ms, "
          f"p99 {percentile(latencies, 0.99):.1f} ms (baseline p50 {percentile(base, 0.5):.1f} ms, "
          f"p99 {percentile(base, 0.99):.1f} ms)")
    posts = https_posts([node.made for node in nodes], seconds)
    print(f"HTTPS posts (2 messages each), 8 connections: {posts / seconds:,.0f} posts/s")
    print("gatewayd peak RSS: " + ", ".join(
        f"{sum(map(_peak_mb, processes(pid))):.0f} MB" for pid in pids)
        + " (a node's processes' peaks added)")
    figures["HTTPS posts"] = posts / seconds
    return figures


def _peak_mb(pid: int) -> float:
    """Peak resident memory of process ``pid`` (VmHWM) in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM"))) / 1024


if __name__ == "__main__":
    main()
