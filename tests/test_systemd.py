"""gatewayd under systemd: the unit verifies, and the daemon speaks the notify protocol
(READY=1, RELOADING=1/READY=1 around SIGHUP, STOPPING=1) on a test socket."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.fakes import free_port

ROOT = Path(__file__).parent.parent


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path):
    """systemd-analyze verify finds nothing wrong with gatewayd.service."""
    gatewayd = Path(sys.executable).parent / "gatewayd"
    unit = tmp_path / "gatewayd.service"
    unit.write_text((ROOT / "gatewayd.service").read_text().replace(
        "/opt/gatewayd/.venv/bin/gatewayd", str(gatewayd)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    text = unit.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "CapabilityBoundingSet=\n", "StateDirectory=gatewayd", "ConfigurationDirectory="):
        assert line in text


def test_unit_lets_gatewayd_write_every_folder_it_writes(tmp_path):
    """With ProtectSystem=strict only ReadWritePaths (and the StateDirectory) are writable:
    they cover the spool (database, payloads, lock, control socket) and the SFTP folders of
    the configuration the unit's comments describe."""
    from gateway import config
    unit = (ROOT / "gatewayd.service").read_text()
    writable = [Path(p.lstrip("-")) for line in unit.splitlines()
                if line.startswith("ReadWritePaths=") for p in line.split("=", 1)[1].split()]
    writable += [Path("/var/lib") / name for line in unit.splitlines()
                 if line.startswith("StateDirectory=") for name in line.split("=", 1)[1].split()]
    production = tmp_path / "gatewayd.toml"
    production.write_text('[paths]\nspool = "/var/lib/gatewayd/spool"\n'
                           'sftp = "/var/lib/gatewayd/sftp"\nkeys = "/etc/gatewayd/keys/gatewayd.keys"\n')
    settings = config.load(production)
    for folder in (settings.paths_spool, settings.paths_sftp):
        assert any(folder.is_relative_to(allowed) for allowed in writable), folder
    assert Path("/var/lib/gatewayd") in writable and "ProtectSystem=strict" in unit


def test_notify_messages(tmp_path):
    """READY=1 once listening; RELOADING=1 then READY=1 on SIGHUP, a bad route table refused
    and the old one kept; STOPPING=1 and exit 0 on SIGTERM."""
    made = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", str(tmp_path / "gw"), "--mllp-port",
         str(free_port()), "--https-port", str(free_port()), "--metrics-port", str(free_port()),
         "--json"],
        capture_output=True, check=True, cwd=ROOT).stdout)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000",
           "WATCHDOG_PID": ""}
    process = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        def next_state(skip_watchdog=True):
            while True:
                state = notify.recv(4096).decode()
                if not (skip_watchdog and state == "WATCHDOG=1"):
                    return state

        assert next_state() == "READY=1"
        assert notify.recv(4096).decode() in ("WATCHDOG=1", )
        with open(Path(made["routes"]) / "institutions.csv", "a") as handle:
            handle.write("bad,row\n")
        process.send_signal(signal.SIGHUP)
        assert next_state() == "RELOADING=1"
        assert next_state() == "READY=1"
        process.send_signal(signal.SIGTERM)
        assert next_state() == "STOPPING=1"
        assert process.wait(timeout=10) == 0
        output = process.stdout.read()
        assert "reload of route tables refused, old kept" in output
        assert "institutions.csv:" in output
    finally:
        if process.poll() is None:
            process.kill()
        notify.close()


def test_sighup_with_a_new_certificate_keeps_open_connections(tmp_path):
    """After SIGHUP new connections get the new server certificate; a connection opened
    before the reload still gets its ACK."""
    import ssl
    import time

    from gateway import pki
    from tests.helpers.fakes import numbered_referral
    from tests.test_daemon_e2e import identity, load_authority, msa, read_frame

    port = free_port()
    made = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", str(tmp_path / "gw"), "--mllp-port", str(port),
         "--https-port", str(free_port()), "--metrics-port", str(free_port()), "--json"],
        capture_output=True, check=True, cwd=ROOT).stdout)
    log = tmp_path / "gatewayd.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    brink = identity(made, "his-brink")
    context = ssl.create_default_context(cafile=made["ca"])
    context.load_cert_chain(brink["cert"], brink["key"])

    def connect():
        for _ in range(100):
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                return context.wrap_socket(raw, server_hostname="localhost")
            except OSError:
                time.sleep(0.05)
        raise AssertionError("gatewayd did not listen")

    try:
        early = connect()
        before = early.getpeercert(binary_form=True)
        folder = Path(made["ca"]).parent
        pki.write(folder, "server", *load_authority(made).issue("localhost", server=True))
        process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "reloaded certificates" in log.read_text():
                break
            time.sleep(0.05)
        late = connect()
        assert late.getpeercert(binary_form=True) != before
        early.sendall(b"\x0b" + numbered_referral(1, "HUP") + b"\x1c\x0d")
        assert msa(read_frame(early)) == [b"MSA", b"AA", b"HUP-000001"]
        early.close()
        late.close()
    finally:
        process.kill()


def test_a_failing_watchdog_ping_does_not_stop_the_pings():
    """A ping that cannot be sent (no socket, no descriptor to spare) answers False, so the
    watchdog loop goes on instead of dying on the exception."""
    from gateway import systemd
    assert systemd.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}) is False


def test_too_few_open_files_for_the_connection_limits_is_one_line(tmp_path):
    """Under an open-file limit the three listeners' connections do not fit in, gatewayd
    refuses to start with one line naming both numbers (exit 78)."""
    from tests.helpers import daemon
    made = daemon.init(tmp_path / "gw")
    done = subprocess.run(["prlimit", "--nofile=512:512", sys.executable, "-m", "gateway.daemon",
                           "-c", made["config"]], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 78
    assert done.stderr.strip().splitlines() == [
        "gatewayd: error E-CONFIG-LIMITS: limits.max_connections = 500 on three listeners "
        "needs 1676 open files, the limit is 512 (raise LimitNOFILE= or lower "
        "limits.max_connections)"]
