"""A legitimate sender's ACK latency while hostile clients press on gatewayd.

Starts a fresh gatewayd with its default limits and measures one legitimate
MLLP/TLS sender (a referral every 0.1 s) first on a quiet daemon, then while, at
the same time and from other loopback addresses: connection floods reopen
hundreds of bare TCP connections on every listener; MLLP clients trickle large
unterminated frames; HTTPS clients trickle bodies; and a sender posts 15 MB HL7
messages with the maximum number of segments back to back. Prints p50/p99/max
for both phases, their ratio, the aim (p99 within 200 ms under abuse), and
gatewayd's peak RSS.

Run: ``.venv/bin/python bench/abuse.py [--seconds S]``.
"""

import argparse
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
from bench.e2e import Client, percentile, start  # noqa: E402
from tests.helpers.fakes import free_port, numbered_referral  # noqa: E402


def legitimate(made: dict, seconds: float, prefix: str) -> list[float]:
    client, latencies = Client(made["ports"]["mllp"], made), []
    deadline, sent = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        latencies.append(client.send(numbered_referral(sent, prefix, 700_000_000)))
        sent += 1
        time.sleep(0.1)
    return latencies


def tls(made: dict, port: int, source: str) -> ssl.SSLSocket:
    who = next(i for i in made["identities"] if i["name"] == "his-hoogveld")
    context = ssl.create_default_context(cafile=made["ca"])
    context.load_cert_chain(who["cert"], who["key"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname="localhost")


def flood(made: dict, stop: threading.Event, source: str) -> None:
    """Bare TCP connections on every listener, 40 at a time, reopened as they are closed."""
    while not stop.is_set():
        conns = []
        for listener in ("mllp", "https", "sftp"):
            for _ in range(40):
                try:
                    conns.append(socket.create_connection(
                        ("127.0.0.1", made["ports"][listener]), timeout=5,
                        source_address=(source, 0)))
                except OSError:
                    pass
        stop.wait(1.0)
        for conn in conns:
            conn.close()


def trickle(made: dict, stop: threading.Event, source: str, listener: str) -> None:
    """Unterminated 1 MB MLLP frames, or an HTTPS body, then a byte every second."""
    while not stop.is_set():
        try:
            conn = tls(made, made["ports"][listener], source)
            conn.sendall(b"\x0b" + b"x" * 1_000_000 if listener == "mllp" else
                         b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n")
            while not stop.wait(1.0):
                conn.sendall(b"x")
        except OSError:
            stop.wait(0.2)


def huge(made: dict, stop: threading.Event, source: str) -> None:
    """15 MB HL7 referrals just under the 10,000-segment limit, back to back."""
    lines = b"".join(b"NTE|%d||" % n + b"x" * 1480 + b"\r" for n in range(9900))
    count = 0
    while not stop.is_set():
        try:
            conn = tls(made, made["ports"]["mllp"], source)
            while not stop.is_set():
                message = numbered_referral(count, "HUGE", 800_000_000).replace(b"OBX|", lines + b"OBX|", 1)
                conn.sendall(b"\x0b" + message + b"\x1c\x0d")
                reply = b""
                while not reply.endswith(b"\x1c\x0d"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError
                    reply += chunk
                count += 1
        except OSError:
            stop.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        made = json.loads(subprocess.run(
            [sys.executable, "-m", "gateway.cli", "init", str(folder / "gw"), "--json",
             "--mllp-port", str(free_port()), "--https-port", str(free_port()),
             "--sftp-port", str(free_port()), "--metrics-port", str(free_port())],
            capture_output=True, check=True, cwd=ROOT).stdout)
        gateway = start([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                        folder / "gatewayd.log")
        try:
            quiet = legitimate(made, args.seconds, "Q")
            stop = threading.Event()
            hostile = [threading.Thread(target=flood, args=(made, stop, "127.0.0.2"))]
            hostile += [threading.Thread(target=trickle, args=(made, stop, "127.0.0.3", listener))
                        for listener in ("mllp", "https") for _ in range(10)]
            hostile.append(threading.Thread(target=huge, args=(made, stop, "127.0.0.4")))
            for thread in hostile:
                thread.start()
            time.sleep(2)
            loud = legitimate(made, args.seconds, "L")
            stop.set()
            for thread in hostile:
                thread.join(10)
            log = (folder / "gatewayd.log").read_text()
            status = Path(f"/proc/{gateway.pid}/status").read_text()
        finally:
            gateway.terminate()
    peak = int(status.split("VmHWM:")[1].split()[0]) // 1024
    print(f"legitimate sender, a referral every 0.1 s for {args.seconds:g} s per phase")
    print(f"{'phase':>8} {'ACKs':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, latencies in (("quiet", quiet), ("abused", loud)):
        print(f"{name:>8} {len(latencies):>6} {percentile(latencies, 0.5):>8.1f} "
              f"{percentile(latencies, 0.99):>8.1f} {max(latencies) * 1000:>8.1f}")
    ratio = percentile(loud, 0.99) / percentile(quiet, 0.99)
    aim = "met" if percentile(loud, 0.99) <= 200 else "NOT met"
    print(f"p99 abused / quiet: {ratio:.1f}x; aim p99 <= 200 ms under abuse: {aim}")
    print(f"refusals logged: {log.count('refused')}, tracebacks: {log.count('Traceback')}; "
          f"gatewayd peak RSS {peak} MB")


if __name__ == "__main__":
    main()
