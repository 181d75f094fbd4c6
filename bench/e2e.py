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
baseline, followed by its ratios to the SQLite gatewayd of this run.

With ``--workers N`` gatewayd runs as N processes (``process.workers``); CPU time and
peak RSS are then those of all its processes together (RSS: the sum of each one's peak).

Run: ``.venv/bin/python bench/e2e.py [--seconds S] [--store URL] [--workers N]``. Aims (issue 12): 8
connections >= 0.25x the baseline, 64 connections >= 0.3x; p99 <= 20 ms at 200
messages/s; peak RSS <= 150 MB.
"""

import argparse
import http.client
import os
import json
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
from tests.helpers.fakes import free_port, numbered_referral  # noqa: E402
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


def drive(port: int, made: dict, connections: int, seconds: float, prefix: str,
          rate_each: float | None = None) -> tuple[int, list[float]]:
    """Send for ``seconds`` on ``connections`` connections (paced at ``rate_each``/s each
    when given); return (messages acknowledged, latencies)."""
    latencies: list[float] = []
    counts = [0] * connections
    deadline = time.perf_counter() + seconds

    def worker(number: int):
        client = Client(port, made)
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


def https_posts(made: dict, seconds: float, connections: int = 8) -> int:
    hoog = next(i for i in made["identities"] if i["name"] == "his-hoogveld")
    data = (ROOT / "fixtures" / "medvri" / "two-messages-unoc.edi").read_bytes()
    counts = [0] * connections
    deadline = time.perf_counter() + seconds

    def worker(number: int):
        context = ssl.create_default_context(cafile=made["ca"])
        context.load_cert_chain(hoog["cert"], hoog["key"])
        conn = http.client.HTTPSConnection("127.0.0.1", made["ports"]["https"], context=context)
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
    """``gatewayctl init`` in ``folder`` on free ports."""
    made = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", str(folder), "--json",
         "--mllp-port", str(free_port()), "--https-port", str(free_port()),
         "--metrics-port", str(free_port()), "--sftp-port", str(free_port())],
        capture_output=True, check=True, cwd=ROOT).stdout)
    config = Path(made["config"])        # 64 connections come from one client address
    config.write_text(config.read_text().replace(
        "max_connections_per_client = 50", "max_connections_per_client = 100").replace(
        "\nworkers = 1\n", f"\nworkers = {workers}\n"))
    return made


def on_postgres(made: dict, url: str) -> dict:
    """The same setup (certificates, ports) with its store in PostgreSQL at ``url``."""
    config = Path(made["config"])
    config.write_text(config.read_text().replace('\nurl = ""', f'\nurl = "{url}"'))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="gatewayd processes "
                        "(process.workers)")
    parser.add_argument("--store", default="", help="also run a gatewayd on PostgreSQL in "
                        "this database (postgresql://…; a scratch schema, dropped afterwards)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        made = setup(folder / "gw", args.workers)
        echo_port = free_port()
        echo = start([sys.executable, str(ROOT / "bench" / "echo_server.py"), made["config"],
                      str(echo_port)], folder / "echo.log")
        try:
            print(f"gatewayd on SQLite, {args.workers} process(es)")
            sqlite = run(made, echo_port, echo, folder / "gatewayd.log", args.seconds)
            if args.store:
                with scratch_schema(args.store) as url:
                    print(f"gatewayd on PostgreSQL ({args.store})")
                    found = run(on_postgres(made, url), echo_port, echo,
                                folder / "gatewayd-pg.log", args.seconds)
                print("PostgreSQL against SQLite in this run: " + ", ".join(
                    f"{name} {found[name] / sqlite[name]:.2f}x" for name in sqlite))
        finally:
            echo.terminate()


def run(made: dict, echo_port: int, echo, log: Path, seconds: float) -> dict:
    gateway = start([sys.executable, "-m", "gateway.daemon", "-c", made["config"]], log)
    try:
        return report(made, echo_port, gateway, echo, seconds)
    finally:
        gateway.terminate()
        gateway.wait()


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


def measured(pid: int, run) -> tuple[int, float]:
    """(messages ``run()`` got acknowledged, CPU ms per message the server ``pid`` spent)."""
    used = cpu_seconds(pid)
    done, _ = run()
    return done, (cpu_seconds(pid) - used) / max(done, 1) * 1000


def report(made: dict, echo_port: int, gateway: subprocess.Popen, echo: subprocess.Popen,
           seconds: float) -> dict:
    """Print the figures; return the messages/s per connection count and the HTTPS posts/s."""
    port = made["ports"]["mllp"]
    figures = {}
    print(f"MLLP/TLS, {seconds:g}s per run; baseline = non-durable Twisted MLLP/TLS server answering AA")
    print(f"{'connections':>11} {'gatewayd msg/s':>15} {'baseline msg/s':>15} {'ratio':>6} "
          f"{'gatewayd CPU ms/msg':>20} {'baseline CPU ms/msg':>20}")
    for connections in (1, 8, 64):
        done, used = measured(gateway.pid, lambda: drive(port, made, connections, seconds,
                                                         f"C{connections}-"))
        base, base_used = measured(echo.pid, lambda: drive(echo_port, made, connections, seconds,
                                                           f"E{connections}-"))
        figures[f"{connections} connections"] = done / seconds
        print(f"{connections:>11} {done / seconds:>15,.0f} {base / seconds:>15,.0f} "
              f"{done / base:>6.2f} {used:>20.3f} {base_used:>20.3f}")
    _, latencies = drive(port, made, 8, seconds, "P-", rate_each=25)
    _, base = drive(echo_port, made, 8, seconds, "Q-", rate_each=25)
    print(f"offered 200 msg/s on 8 connections: p50 {percentile(latencies, 0.5):.1f} ms, "
          f"p99 {percentile(latencies, 0.99):.1f} ms (baseline p50 {percentile(base, 0.5):.1f} ms, "
          f"p99 {percentile(base, 0.99):.1f} ms)")
    posts = https_posts(made, seconds)
    print(f"HTTPS posts (2 messages each), 8 connections: {posts / seconds:,.0f} posts/s")
    pids = processes(gateway.pid)
    peak = sum(int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text()
                        .splitlines() if line.startswith("VmHWM"))) for pid in pids)
    print(f"gatewayd peak RSS: {peak / 1024:.0f} MB ({len(pids)} process(es), each one's peak added)")
    figures["HTTPS posts"] = posts / seconds
    return figures


if __name__ == "__main__":
    main()
