"""Hostile SFTP clients against a real gatewayd on loopback — OpenSSH's ssh and sftp,
ssh's sftp subsystem driven with raw SFTP packets, bare sockets before login — while a
legitimate MLLP sender keeps sending: handles, sessions, buffered bytes and answers
stay within their limits, and every refusal is a status and one log line."""

import os
import select
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from twisted.conch.ssh import filetransfer as ft
from twisted.conch.ssh.common import NS

from tests.helpers import daemon
from tests.test_abuse import LegitimateSender, closed_within, logged_since, name_tag
from tests.test_daemon_e2e import curl, identity, outbox_names
from tests.helpers.fakes import ROOT

LIMITS = dict(limits__max_message_bytes=8 * 1024 * 1024, limits__handshake_seconds=2,
              limits__idle_timeout_seconds=20, limits__max_connections_per_client=30,
              limits__sftp_channels_per_connection=3)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sftp-abuse")
    made = daemon.init(folder)
    daemon.configure(made, **LIMITS)
    made["log"] = folder / "gatewayd.log"
    made["process"] = daemon.start(made, made["log"])
    made["account"] = folder / "sftp" / "his-brink"
    made["folder"] = folder
    made["legit"] = LegitimateSender(made)
    made["legit"].start()
    yield made
    made["legit"].stop.set()
    made["process"].kill()


def rss_mb(made) -> float:
    status = Path(f"/proc/{made['process'].pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def ssh_command(made, *args: str) -> list[str]:
    who = identity(made, "his-brink")
    return ["ssh", "-i", who["ssh_key"], "-p", str(made["ports"]["sftp"]), "-o",
            "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
            "BatchMode=yes", "-o", "LogLevel=ERROR", *args]


class RawSftp:
    """OpenSSH's ssh running the sftp subsystem, spoken to in raw SFTP packets."""

    def __init__(self, made, *options: str):
        self.process = subprocess.Popen(
            ssh_command(made, *options, "-s", f"{identity(made, 'his-brink')['sftp_user']}"
                        "@127.0.0.1", "sftp"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ids, self.data = 0, b""
        self.send(ft.FXP_INIT, struct.pack(">L", 3))
        assert self.packet()[0] == ft.FXP_VERSION

    def send(self, kind: int, body: bytes) -> None:
        self.process.stdin.write(struct.pack(">LB", len(body) + 1, kind) + body)
        self.process.stdin.flush()

    def request(self, kind: int, *fields: bytes) -> int:
        self.ids += 1
        self.send(kind, struct.pack(">L", self.ids) + b"".join(fields))
        return self.ids

    def packet(self, seconds: float = 20) -> tuple[int, int, bytes]:
        """(type, request id, rest) of the next answer; (0, 0, b"") once closed."""
        end = time.monotonic() + seconds
        while len(self.data) < 4 or len(self.data) < 4 + struct.unpack(">L", self.data[:4])[0]:
            ready, _, _ = select.select([self.process.stdout], [], [], end - time.monotonic())
            chunk = os.read(self.process.stdout.fileno(), 1 << 20) if ready else b""
            if not chunk:
                return 0, 0, b""
            self.data += chunk
        length, kind = struct.unpack(">LB", self.data[:5])
        body, self.data = self.data[5:4 + length], self.data[4 + length:]
        return kind, struct.unpack(">L", body[:4])[0], body[4:]

    def opens(self, kind: int, path: bytes, count: int) -> tuple[list[bytes], list[str]]:
        """``count`` OPENs (or OPENDIRs) of ``path`` sent at once: the handles and refusals."""
        fields = (NS(path), struct.pack(">LL", ft.FXF_READ, 0)) if kind == ft.FXP_OPEN else (NS(path),)
        for _ in range(count):
            self.request(kind, *fields)
        handles, refusals = [], []
        for _ in range(count):
            answer, _, body = self.packet()
            if answer == ft.FXP_HANDLE:
                handles.append(body[4:])
            else:
                refusals.append(body[8:8 + struct.unpack(">L", body[4:8])[0]].decode())
        return handles, refusals

    def close(self) -> None:
        self.process.stdin.close()
        self.process.kill()
        self.process.wait()


def test_open_folders_are_bounded_per_session(gateway):
    """3,000 OPENDIRs of an errors/ folder of 1,001 files: 64 handles
    (limits.sftp_handles_per_session), the rest refused with E-SFTP-HANDLES and one log
    line; the daemon's memory hardly moves (on main: 1.8 GB)."""
    made = gateway
    for index in range(1001):
        (made["account"] / "errors" / f"{index:06d}{'x' * 200}.hl7.err").write_text("E-X\n")
    mark, before = len(made["log"].read_text()), rss_mb(made)
    client = RawSftp(made)
    try:
        handles, refusals = client.opens(ft.FXP_OPENDIR, b"/errors", 3000)
        for handle in handles:                       # one batch of entries from each
            client.request(ft.FXP_READDIR, NS(handle))
            assert client.packet()[0] == ft.FXP_NAME
        grown = rss_mb(made) - before
    finally:
        client.close()
    assert len(handles) == 64 and len(refusals) == 2936
    assert set(refusals) == {"E-SFTP-HANDLES: 64 files and folders open in this session; "
                             "close one first"}
    assert made["log"].read_text()[mark:].count("E-SFTP-HANDLES") == 1
    assert grown < 40, f"{grown:.0f} MB"
    for path in (made["account"] / "errors").iterdir():
        path.unlink()


def big_answer(made, size: int) -> str:
    """A teleconsult answer of about ``size`` bytes posted by the hospital; the name of
    the file it becomes in his-brink's outbox, once it is there (the same ZD number each
    time: a new name each time)."""
    before = outbox_names(made, made["folder"])
    answer = (ROOT / "fixtures" / "hl7" / "teleconsult-answer-crlf.hl7").read_bytes()
    line = b"Synthetische regel van de brief die lang wordt gemaakt. " * 12 + b"~"  # < 10,000 lines
    answer = answer.replace(b"Beste collega,~", b"Beste collega,~" + line * (size // len(line)))
    made["answers"] = made.get("answers", 0) + 1           # a new control id each time
    answer = answer.replace(b"|ZIS-777|", f"|ZIS-777-{made['answers']}|".encode())
    assert curl(made, "/v1/messages", "zis-eemland", data=answer)[0] == 202
    for _ in range(50):
        new = outbox_names(made, made["folder"]) - before
        if new:
            (name,) = new
            assert name.startswith("ZD100200301_ANTW") and name.endswith(".edi")
            return name
        time.sleep(0.1)
    pytest.fail("the answer did not reach the outbox")


def test_outbox_reads_share_one_copy_and_are_audited_once(gateway):
    """400 OPENs of a 3.5 MB outbox file in one session: 64 handles share one plain copy
    (on main each held its own: +1.35 GB), one audit record for the session."""
    made = gateway
    name = big_answer(made, 3_500_000)
    before = rss_mb(made)
    client = RawSftp(made)
    try:
        handles, refusals = client.opens(ft.FXP_OPEN, f"/outbox/{name}".encode(), 400)
        client.request(ft.FXP_READ, NS(handles[-1]), struct.pack(">QL", 3_000_000, 1 << 20))
        kind, _, body = client.packet()
        grown = rss_mb(made) - before
    finally:
        client.close()
    assert kind == ft.FXP_DATA and len(body) == 4 + 64 * 1024       # at most 64 KiB a READ
    assert len(handles) == 64 and len(refusals) == 336
    assert grown < 40, f"{grown:.0f} MB"
    pulls = [r for r in daemon.ctl_json(made, "audit", "query", "--who", "sftp:his-brink")
             if r["action"] == "pull"]
    assert len(pulls) == 1


def test_answers_the_client_does_not_read_are_not_piled_up(gateway):
    """2,000 READs of 64 KiB whose answers the client leaves unread: the session stops
    answering once the channel is full, so the daemon holds about the window (on main it
    held every answer: +128 MB); read afterwards, every answer arrives."""
    made = gateway
    name = big_answer(made, 3_500_000)
    client = RawSftp(made)
    try:
        (handle,), _ = client.opens(ft.FXP_OPEN, f"/outbox/{name}".encode(), 1)
        before = rss_mb(made)
        for index in range(2000):
            client.request(ft.FXP_READ, NS(handle), struct.pack(">QL", 64 * 1024 * (index % 50),
                                                                 64 * 1024))
        time.sleep(2)
        grown = rss_mb(made) - before
        answers = [client.packet()[0] for _ in range(2000)]
    finally:
        client.close()
    assert grown < 40, f"{grown:.0f} MB"
    assert answers == [ft.FXP_DATA] * 2000


def test_sessions_per_connection_are_bounded(gateway, tmp_path):
    """OpenSSH multiplexing sessions over one connection (ControlMaster): the fourth is
    refused (limits.sftp_channels_per_connection = 3) with one log line."""
    made = gateway
    control = tmp_path / "control"
    master = subprocess.Popen(ssh_command(made, "-M", "-S", str(control), "-N",
                                          "his-brink@127.0.0.1"))
    sessions = []
    try:
        for _ in range(50):
            if control.exists():
                break
            time.sleep(0.1)
        mark = len(made["log"].read_text())
        for index in range(4):
            with open(tmp_path / f"stderr{index}", "w") as stderr:
                sessions.append(subprocess.Popen(
                    ssh_command(made, "-S", str(control), "-s", "his-brink@127.0.0.1", "sftp"),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr))
            time.sleep(0.5)
        assert logged_since(made, mark, "more than 3 sessions on one connection", seconds=5)
        for _ in range(50):        # ssh then falls back to a connection of its own
            if "Session open refused by peer" in (tmp_path / "stderr3").read_text():
                break
            time.sleep(0.1)
        assert "Session open refused by peer" in (tmp_path / "stderr3").read_text()
        assert [s.poll() for s in sessions[:3]] == [None] * 3
        assert made["log"].read_text()[mark:].count("more than 3 sessions on one connection") == 1
    finally:
        for process in [*sessions, master]:
            process.kill()
            process.wait()


def test_an_over_long_packet_before_login_closes_the_connection(gateway):
    """100 unauthenticated connections each starting a 1 MiB packet: each is closed at
    once (RFC 4253 asks for 35,000-byte packets; we take 64 KiB) instead of holding the
    packet until the login deadline (before: +1 MB each); one line each, but for the
    throttle's ten a minute per address."""
    made = gateway
    mark, conns = len(made["log"].read_text()), []
    for index in range(100):
        conn = socket.create_connection(("127.0.0.1", made["ports"]["sftp"]), timeout=5,
                                        source_address=(f"127.0.3.{1 + index // 25}", 0))
        conn.recv(256)
        conn.sendall(b"SSH-2.0-hostile\r\n")
        time.sleep(0.01)                  # the version line first, then the packet
        conn.sendall(struct.pack(">LB", 1048572, 4) + b"\0" * 60_000)
        conns.append(conn)
    try:
        assert all(closed_within(conn, 0.5) for conn in conns)
    finally:
        for conn in conns:
            conn.close()
    assert logged_since(made, mark, "bytes (at most 65536) before login")
    time.sleep(0.5)
    text = made["log"].read_text()[mark:]
    assert text.count("an SSH packet of 1048572 bytes (at most 65536) before login") == 40


def test_malformed_requests_get_statuses_then_the_session_closes(gateway):
    """A cut-off OPEN, a READ and a READDIR on handles never opened: an SFTP status each
    and one WARNING line each; the third closes the session; no ERROR line."""
    made = gateway
    mark = len(made["log"].read_text())
    client = RawSftp(made)
    try:
        client.request(ft.FXP_OPEN, b"\0\0")
        client.request(ft.FXP_READ, NS(b"nope"), struct.pack(">QL", 0, 3))
        client.request(ft.FXP_READDIR, NS(b"nope"))
        answers = [client.packet()[:2] for _ in range(4)]
    finally:
        client.close()
    assert answers == [(ft.FXP_STATUS, 1), (ft.FXP_STATUS, 2), (ft.FXP_STATUS, 3), (0, 0)]
    assert logged_since(made, mark, "session closed after 3")
    text = made["log"].read_text()[mark:]
    assert text.count("malformed request") == 3 and " ERROR " not in text


def test_names_that_could_forge_lines_are_refused_and_never_logged(gateway):
    """An upload named with a line break, an escape or U+2028 is refused; the log holds
    its tag, never the name."""
    made = gateway
    mark = len(made["log"].read_text())
    client = RawSftp(made)
    try:
        for name in ("a\nFORGED WARNING line.hl7", "\x1b[31mred.hl7", "x\u2028FORGED.hl7"):
            client.request(ft.FXP_OPEN, NS(f"/inbox/{name}".encode()),
                           struct.pack(">LL", ft.FXF_WRITE | ft.FXF_CREAT, 0))
            kind, _, body = client.packet()
            assert kind == ft.FXP_STATUS and body[:4] == struct.pack(">L", ft.FX_PERMISSION_DENIED)
    finally:
        client.close()
    text = made["log"].read_text()[mark:]
    assert "FORGED" not in text and "red.hl7" not in text
    assert name_tag(made, "/inbox/a\nFORGED WARNING line.hl7") in text
    assert not list((made["account"] / "errors").iterdir())


def test_keepalives_are_answered_without_a_line(gateway):
    """OpenSSH's ServerAliveInterval keepalives get their (failure) answer and no line."""
    made = gateway
    mark = len(made["log"].read_text())
    client = RawSftp(made, "-o", "ServerAliveInterval=1")
    time.sleep(3.5)
    client.request(ft.FXP_REALPATH, NS(b"."))
    assert client.packet()[0] == ft.FXP_NAME              # still served
    client.close()
    assert "keepalive" not in made["log"].read_text()[mark:]


def test_zz_the_legitimate_sender_was_served_throughout(gateway):
    """Through all of the above every referral of the legitimate MLLP sender got AA, and
    the log holds no ERROR or CRITICAL line."""
    made = gateway
    made["legit"].stop.set()
    made["legit"].join(5)
    assert len(made["legit"].results) > 20
    assert {code for code, _ in made["legit"].results} == {b"AA"}
    levels = {line.split()[1] for line in made["log"].read_text().splitlines() if line.strip()}
    assert levels <= {"INFO", "WARNING"}
