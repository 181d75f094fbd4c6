"""Hostile and careless clients against a real gatewayd on loopback: what they cut off,
oversize or trickle is never stored as if complete, never touches disk unsealed, and
never stops a legitimate sender."""

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import daemon
from tests.helpers.fakes import numbered_referral
from tests.test_daemon_e2e import identity, msa, send

CAP = 256 * 1024
MARKER_BSN, MARKER_NAME = "999990019", "Qwxzyvandam"     # synthetic; BSN passes the 11-proef


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("abuse")
    made = daemon.init(folder)
    daemon.configure(made, limits__max_message_bytes=CAP, limits__max_upload_bytes=CAP)
    made["log"], made["tmp"] = folder / "gatewayd.log", folder / "tmp"
    made["tmp"].mkdir()
    made["process"] = daemon.start(made, made["log"], env={"TMPDIR": str(made["tmp"])})
    yield made
    if made["process"].poll() is None:
        made["process"].kill()


def logged_since(made, mark: int, text: str, seconds: float = 10) -> bool:
    for _ in range(int(seconds / 0.05)):
        if text in made["log"].read_text()[mark:]:
            return True
        time.sleep(0.05)
    return False


def stored(made) -> list[dict]:
    return daemon.ctl_json(made, "queue", "ls")


def audited(made, who: str) -> list[tuple[str, str]]:
    return [(r["result"], r["detail"]) for r in daemon.ctl_json(made, "audit", "query", "--who", who)]


def long_referral(index: int, size: int) -> bytes:
    """A numbered HL7 referral whose letter is ``size`` bytes or so: any cut of it still
    reads as a referral, only shorter."""
    head, tail = numbered_referral(index, "ABUSE").split(b"OBX|1|TX|", 1)
    line = b"Regel met synthetische brieftekst om de upload lang te maken.~"
    return head + b"OBX|1|TX|" + line * (size // len(line)) + tail


def tls_socket(made, name: str = "his-brink") -> ssl.SSLSocket:
    who = identity(made, name)
    context = ssl.create_default_context(cafile=made["ca"])
    context.load_cert_chain(who["cert"], who["key"])
    raw = socket.create_connection(("127.0.0.1", made["ports"]["https"]), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_response(conn) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def post_head(length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\n{size}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def test_sftp_upload_cut_off_by_a_dropped_connection_is_not_stored(gateway, tmp_path):
    """OpenSSH sftp killed mid-upload (the file never closed): nothing is stored — neither
    the cut referral as ready nor the cut garbage as rejected — no .err file, audited."""
    made = gateway
    who = identity(made, "his-brink")
    for name, content in (("cut.hl7", long_referral(1, 200_000)), ("junk.bin", os.urandom(200_000))):
        (tmp_path / name).write_bytes(content)
        (tmp_path / "batch").write_text(f"cd inbox\nput {name}\n")
        mark, before = len(made["log"].read_text()), len(stored(made))
        client = subprocess.Popen(
            ["sftp", "-l", "64", "-b", "batch", "-i", who["ssh_key"], "-P",
             str(made["ports"]["sftp"]), "-o", "StrictHostKeyChecking=no", "-o",
             "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", f"{who['sftp_user']}@127.0.0.1"],
            cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        time.sleep(2.0)                       # 64 kbit/s: about 16 kB of 200 kB are up
        os.killpg(client.pid, signal.SIGKILL)
        client.wait()
        assert logged_since(made, mark, f"upload '{name}' cut off after"), made["log"].read_text()[mark:]
        assert len(stored(made)) == before
        account = Path(made["config"]).parent / "sftp" / "his-brink"
        assert not (account / "errors" / f"{name}.err").exists()
        assert not (account / "inbox" / name).exists()
    assert [r for r, d in audited(made, "sftp:his-brink") if "cut off" in d] == ["discarded"] * 2


def test_https_body_is_kept_in_memory_never_on_disk(gateway):
    """A slow 150 kB POST: while it trickles in, no file the daemon has open and nothing in
    its temporary folder holds the marker patient; once complete it is stored (202)."""
    made = gateway
    body = long_referral(2, 150_000).replace(b"123456782", MARKER_BSN.encode()).replace(
        b"Dijk", MARKER_NAME.encode())
    pid = made["process"].pid
    with tls_socket(made) as conn:
        conn.sendall(post_head(len(body)))
        pieces = [body[i:i + 15_000] for i in range(0, len(body), 15_000)]
        for piece in pieces[:-1]:
            conn.sendall(piece)
            time.sleep(0.1)
            assert not list(made["tmp"].iterdir())
            assert _open_files_holding(pid, [MARKER_BSN.encode(), MARKER_NAME.encode()]) == []
        conn.sendall(pieces[-1])
        status, answer = read_response(conn)
    assert status == 202, answer


def _open_files_holding(pid: int, markers: list[bytes]) -> list[str]:
    """The regular files process ``pid`` has open (deleted ones too) that hold a marker."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            if not Path(fd).is_file():
                continue
            content = Path(fd).read_bytes()
        except OSError:
            continue
        if any(marker in content for marker in markers):
            found.append(target)
    return found


def test_declared_oversize_body_is_refused_before_it_is_read(gateway):
    """Content-Length over the cap: 413 as JSON at once, without sending a byte of the body;
    the connection closes; nothing stored; an audit record says so."""
    made = gateway
    before = len(stored(made))
    with tls_socket(made) as conn:
        conn.sendall(post_head(300 * 1024 * 1024))
        status, body = read_response(conn)
        assert conn.recv(1024) == b""                      # closed
    assert status == 413 and json.loads(body)["code"] == "E-TOO-LARGE"
    assert len(stored(made)) == before
    assert ("refused", f"E-TOO-LARGE: body larger than {CAP} bytes, declared Content-Length "
            f"{300 * 1024 * 1024}") in audited(made, "https:his-brink")


def test_chunked_body_is_cut_off_at_the_cap(gateway):
    """A chunked body that passes the cap is answered 413 as it arrives; nothing stored."""
    made = gateway
    before = len(stored(made))
    with tls_socket(made) as conn:
        conn.sendall(post_head(None))
        chunk = b"x" * 65536
        try:
            for _ in range(2 * CAP // len(chunk)):
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass                                   # the daemon may close while we still send
        status, body = read_response(conn)
    assert status == 413 and json.loads(body)["code"] == "E-TOO-LARGE"
    assert len(stored(made)) == before
    assert tmp_empty(made)


def tmp_empty(made) -> bool:
    return not list(made["tmp"].iterdir())


def test_oversize_sftp_upload_stores_nothing(gateway, tmp_path):
    """An SFTP upload over the cap is refused and leaves no rejected message behind."""
    made = gateway
    who = identity(made, "his-brink")
    (tmp_path / "huge.edi").write_bytes(b"UNA" + b"x" * (CAP + 10))
    (tmp_path / "batch").write_text("cd inbox\nput huge.edi\n")
    before = len(stored(made))
    result = subprocess.run(
        ["sftp", "-b", "batch", "-i", who["ssh_key"], "-P", str(made["ports"]["sftp"]), "-o",
         "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
         f"{who['sftp_user']}@127.0.0.1"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    assert len(stored(made)) == before
    err = Path(made["config"]).parent / "sftp" / "his-brink" / "errors" / "huge.edi.err"
    assert err.read_text() == f"E-TOO-LARGE: upload larger than {CAP} bytes\n"


def test_oversize_mllp_message_stores_nothing(gateway):
    """An MLLP message over limits.max_message_bytes (but inside the frame cap) gets AE
    E-TOO-LARGE and is not kept as rejected."""
    made = gateway
    brink = identity(made, "his-brink")
    before = len(stored(made))
    reply = send(made["ports"]["mllp"], made, long_referral(3, CAP + 1000), brink["cert"],
                 brink["key"])
    assert msa(reply)[:2] == [b"MSA", b"AE"] and b"E-TOO-LARGE" in reply
    assert len(stored(made)) == before


def test_legitimate_sender_still_served(gateway):
    """After all of the above, a normal referral over MLLP gets AA."""
    made = gateway
    brink = identity(made, "his-brink")
    reply = send(made["ports"]["mllp"], made, numbered_referral(900, "LEGIT"), brink["cert"],
                 brink["key"])
    assert msa(reply) == [b"MSA", b"AA", b"LEGIT-000900"]
