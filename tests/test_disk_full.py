"""A full disk under a real gatewayd (reliability R5): nothing is acknowledged that is not
stored, each failure is one log line, /healthz says why, and the daemon recovers by
itself once space returns. The spool lives on a small tmpfs mounted for the test (root
only: elsewhere the test is skipped, saying so)."""

import subprocess

import pytest

from tests.helpers import daemon
from tests.helpers.fakes import numbered_referral
from tests.test_abuse import long_referral
from tests.test_daemon_e2e import identity, msa, send


@pytest.fixture
def small_spool(tmp_path):
    mount = tmp_path / "spool"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def healthz(made) -> tuple[int, str]:
    result = subprocess.run(["curl", "-s", "-w", "\n%{http_code}",
                             f"http://127.0.0.1:{made['ports']['metrics']}/healthz"],
                            capture_output=True, text=True, timeout=10)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def test_full_disk_acknowledges_nothing_unstored_and_recovers(tmp_path, small_spool):
    """Fill the spool's file system, send until storing fails: the failed senders get no
    ACK and are not stored; one log line per failure, no traceback; /healthz is 503 with
    the reason; free the space and the next message gets AA, the store intact."""
    made = daemon.init(tmp_path / "gw")
    config = tmp_path / "gw" / "gatewayd.toml"
    config.write_text(config.read_text().replace('spool = "spool"', f'spool = "{small_spool}"'))
    daemon.configure(made, limits__min_free_mb=0)
    log = tmp_path / "gatewayd.log"
    process = daemon.start(made, log)
    brink = identity(made, "his-brink")
    try:
        filler = small_spool / "filler"
        filler.write_bytes(b"\0" * (5 * 1024 * 1024))
        acked, refused = [], 0
        for index in range(40):
            reply = send(made["ports"]["mllp"], made, long_referral(index, 100_000),
                         brink["cert"], brink["key"])        # closed without an ACK: b""
            if reply and msa(reply)[1] == b"AA":
                acked.append(index)
            else:
                refused += 1
                if refused == 3:
                    break
        assert refused == 3, "the disk never filled"
        status, reason = healthz(made)
        assert status == 503 and ("disk" in reason or "full" in reason), reason
        text = log.read_text()
        failures = [line for line in text.splitlines() if "not stored" in line]
        assert len(failures) == 3 and all(" ERROR " in line and "disk is full" in line
                                          for line in failures), failures
        filler.unlink()
        reply = send(made["ports"]["mllp"], made, numbered_referral(99, "AFTER"), brink["cert"],
                     brink["key"])
        assert msa(reply) == [b"MSA", b"AA", b"AFTER-000099"]
    finally:
        process.terminate()
        process.wait(10)
    stored = daemon.ctl_json(made, "queue", "ls", "--state", "all")
    assert sorted(row["zd_number"] for row in stored) == sorted(
        [f"ZD{500_000_000 + i}" for i in acked] + ["ZD500000099"])
    check = daemon.ctl(made, "store", "verify")
    assert check.returncode == 0, check.stdout + check.stderr
