"""gatewayd for real: started as a process on a free local port, spoken to by an
MLLP client over TLS with client certificates."""

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import pki
from tests.helpers.fakes import numbered_referral

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gw")
    port = free_port()
    made = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", str(folder), "--mllp-port", str(port), "--json"],
        capture_output=True, check=True, cwd=ROOT).stdout)
    process = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for _ in range(200):
        line = process.stdout.readline()
        if "listening" in line:
            break
    else:
        process.kill()
        pytest.fail("gatewayd did not start")
    yield made, port, process
    if process.poll() is None:
        process.kill()


def identity(made, name):
    return next(i for i in made["identities"] if i["name"] == name)


def send(port, made, message: bytes, cert=None, key=None, ca=None) -> bytes:
    context = ssl.create_default_context(cafile=ca or made["ca"])
    if cert:
        context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"\x0b" + message + b"\x1c\x0d")
            reply = b""
            while not reply.endswith(b"\x1c\x0d"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
    return reply.strip(b"\x0b\x1c\x0d")


def msa(reply: bytes) -> list[bytes]:
    return reply.split(b"\r")[1].split(b"|")[:3]


def test_mandated_sender_gets_aa_and_the_message_is_stored(gateway):
    """A mandated HIS sends a referral over MLLP/TLS: AA with MSA-2 = MSH-10, stored once."""
    made, port, _ = gateway
    brink = identity(made, "his-brink")
    message = numbered_referral(1, "E2E")
    assert msa(send(port, made, message, brink["cert"], brink["key"])) == [b"MSA", b"AA", b"E2E-000001"]
    assert msa(send(port, made, message, brink["cert"], brink["key"])) == [b"MSA", b"AA", b"E2E-000001"]
    listing = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "-c", made["config"], "queue", "ls", "--json"],
        capture_output=True, check=True, cwd=ROOT).stdout)
    assert [row["zd_number"] for row in listing] == ["ZD500000001"]


def test_unmandated_sender_gets_ar(gateway):
    """Another practice's certificate may not send for this referrer: AR."""
    made, port, _ = gateway
    other = identity(made, "his-hoogveld")
    reply = send(port, made, numbered_referral(2, "E2E"), other["cert"], other["key"])
    assert msa(reply)[:2] == [b"MSA", b"AR"] and b"E-NOT-MANDATED" in reply


@pytest.mark.parametrize("case", ["no certificate", "other CA"])
def test_clients_without_a_trusted_certificate_are_refused(gateway, tmp_path, case):
    """No client certificate, or one from another CA: the handshake fails, nothing is stored."""
    made, port, _ = gateway
    cert = key = None
    if case == "other CA":
        stranger = pki.Authority("stranger CA")
        cert, key = pki.write(tmp_path, "his-brink", *stranger.issue("his-brink"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        reply = send(port, made, numbered_referral(3, "E2E"), cert, key)
        if not reply:
            raise ConnectionError("closed without an ACK")


def test_sigterm_stops_the_daemon(gateway):
    """SIGTERM ends gatewayd with exit status 0."""
    _, _, process = gateway
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
