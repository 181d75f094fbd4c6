"""Encryption at rest and the audit log: seals that break on any change, keys that must
fit the store, rotation, and a hash chain that names the first bad record."""

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer

from gateway import audit, keys, routes
from gateway.cli.common import actor
from gateway.intake import Envelope, Intake
from gateway.spool import delivery, payloads
from gateway.spool.store import Store
from tests.helpers import daemon
from tests.helpers.fakes import RING, ROOT, numbered_referral
from tests.test_delivery import setup  # noqa: F401  (a store pushing over MLLP, on a clock)

ADMIN = Envelope("admin", "test", who="cli:tester")
REFERRAL = (ROOT / "fixtures" / "medvri" / "referral-crlf.edi").read_bytes()
SAMPLES = ROOT / "gateway" / "routes" / "samples"


@given(st.binary(max_size=4096), st.integers(0, 2 ** 63))
def test_seal_round_trip(data, message_id):
    """What is sealed opens to the same bytes, for its own message only; nonces are fresh."""
    sealed = RING.seal(data, message_id)
    assert RING.open(sealed, message_id) == data
    assert RING.seal(data, message_id) != sealed
    assert len(data) < 16 or data not in sealed         # (shorter ones turn up by chance)
    with pytest.raises(keys.SealBroken):
        RING.open(sealed, message_id ^ 1)


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_any_changed_byte_breaks_the_seal(data, draw):
    """One flipped bit anywhere — header, key id, message id, nonce, text, tag — is caught."""
    sealed = bytearray(RING.seal(data, 7))
    position = draw.draw(st.integers(0, len(sealed) - 1))
    sealed[position] ^= 1 << draw.draw(st.integers(0, 7))
    with pytest.raises(keys.SealBroken):
        RING.open(bytes(sealed), 7)
    with pytest.raises(keys.SealBroken):
        RING.open(bytes(sealed[:-1]), 7)


def test_key_file_is_private_and_problems_are_one_line(tmp_path):
    """keys are written 0600; a missing or broken key file is one clear line."""
    path = tmp_path / "k" / "gatewayd.keys"
    keys.save(keys.generate(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load(path).current == "k1"
    with pytest.raises(keys.KeyProblem, match="missing .*keys init"):
        keys.load(tmp_path / "nothing.keys")
    path.write_text("{not json")
    with pytest.raises(keys.KeyProblem, match="not valid") as caught:
        keys.load(path)
    assert "\n" not in str(caught.value)


def test_store_refuses_a_wrong_or_missing_key(backend, tmp_path):
    """A store sealed with one key will not open with another key under the same id, nor
    with a key file that lacks its key."""
    backend.store(tmp_path, time.time, RING).close()
    stranger = keys.generate()
    with pytest.raises(keys.KeyProblem, match="not the key"):
        backend.store(tmp_path, time.time, stranger)
    with pytest.raises(keys.KeyProblem, match="lacks key 'k1'"):
        backend.store(tmp_path, time.time, keys.Keyring({"k9": stranger.keys["k1"]}, "k9", RING.audit_key))


def test_daemon_stops_at_start_without_its_key(tmp_path):
    """gatewayd with its key file gone, or replaced, exits 78 with one line."""
    made = daemon.init(tmp_path / "gw")
    key_file = Path(made["keys"])
    key_file.rename(key_file.with_suffix(".away"))
    result = subprocess.run([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        f"gatewayd: error E-KEYS: key file {key_file} is missing (gatewayctl keys init makes one)"]
    keys.save(keys.generate(), key_file)
    result = subprocess.run([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 78 and "wrong key file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


class Recorder:
    def __init__(self):
        self.delivered = []

    def deliver(self, row, payload):
        self.delivered.append(payload)
        return defer.succeed(None)


def test_tampered_payload_is_quarantined_and_never_delivered(setup):
    """A ciphertext byte changed inside the database — only the seal can tell — sends the
    message to fallback with an ALERT and an audit record."""
    clock, store, intake, settings = setup
    (receipt,) = intake.accept(numbered_referral(1), ADMIN)
    data = bytearray(payloads.sealed(store.db, receipt.id, "out"))
    data[-20] ^= 0x40
    store.db.execute("UPDATE payloads SET sealed = ? WHERE message_id = ? AND which = 'out'",
                     (bytes(data), receipt.id))
    recorder = Recorder()
    delivery.Dispatcher(store, settings, recorder, clock.seconds).tick()
    assert recorder.delivered == []
    row = store.get(receipt.id)
    assert row["state"] == "fallback" and "authentication tag" in row["reason"]
    assert audit.query(store.db, zd_number=row["zd_number"])[-1]["action"] == "quarantine"


def test_a_payload_pointed_at_another_message_does_not_open(setup):
    """Message 2's sealed converted part copied over message 1's fails its seal."""
    _, store, intake, _ = setup
    first, second = (intake.accept(numbered_referral(i), ADMIN)[0] for i in (1, 2))
    store.db.execute("UPDATE payloads SET sealed = ? WHERE message_id = ? AND which = 'out'",
                     (payloads.sealed(store.db, second.id, "out"), first.id))
    with pytest.raises(payloads.PayloadCorrupt, match="sealed for message 2, not 1"):
        store.payload(store.get(first.id), "out")


def test_rotation_keeps_old_payloads_readable_and_reencrypts(tmp_path):
    """After keys rotate, new payloads use the new key and old ones still open; --reencrypt
    seals every payload again under the new key; each change is in the audit log."""
    made = daemon.init(tmp_path / "gw")
    first = json.loads(daemon.ctl(made, "submit", str(ROOT / "fixtures" / "hl7" / "referral-lf.hl7"),
                                  "--json").stdout)["id"]
    assert json.loads(daemon.ctl(made, "keys", "rotate", "--json").stdout)["current"] == "k2"
    second = json.loads(daemon.ctl(made, "submit", "-", "--json", stdin=REFERRAL).stdout)["id"]
    assert _key_ids(made) == {"k1", "k2"}
    for message_id in (first, second):
        assert daemon.ctl(made, "show", str(message_id), "--converted").stdout.startswith(b"<?xml")
    result = json.loads(daemon.ctl(made, "keys", "rotate", "--reencrypt", "--json").stdout)
    assert result == {"current": "k3", "reencrypted_payloads": 4, "reencrypted_outbox_files": 0,
                      "daemon": None}
    assert _key_ids(made) == {"k3"}
    assert daemon.ctl(made, "show", str(first)).stdout.startswith(b"MSH|")
    actions = [r["action"] for r in daemon.ctl_json(made, "audit", "query", "--who", actor())]
    assert actions.count("keys-rotate") == 2 and "view" in actions


def _key_ids(made: dict) -> set[str]:
    """The key ids sealing the stored parts, from the store's own census."""
    store = Store(Path(made["spool"]), time.time, keys.load(Path(made["keys"])))
    try:
        return set(store.sealed_keys())
    finally:
        store.close()


def test_retire_only_a_key_nothing_is_sealed_with(tmp_path):
    """keys retire refuses the current key and a key files still use; after --reencrypt
    the old keys go, and everything still opens."""
    made = daemon.init(tmp_path / "gw")
    daemon.ctl(made, "submit", "-", stdin=REFERRAL)
    daemon.ctl(made, "keys", "rotate")
    refused = daemon.ctl(made, "keys", "retire", "k1", check=False)
    assert refused.returncode == 65 and refused.stderr.decode().strip() == (
        "gatewayctl: error E-KEYS-IN-USE: 2 stored payload(s) are sealed with key k1; "
        "keys rotate --reencrypt first")
    assert daemon.ctl(made, "keys", "retire", "k2", check=False).returncode == 64   # current
    daemon.ctl(made, "keys", "rotate", "--reencrypt")
    for key_id in ("k1", "k2"):
        assert daemon.ctl_json(made, "keys", "retire", key_id) == {"retired": key_id, "daemon": None}
    assert sorted(keys.load(Path(made["keys"])).keys) == ["k3"]
    assert daemon.ctl(made, "show", "1", "--converted").stdout.startswith(b"<?xml")
    assert [r["detail"] for r in daemon.ctl_json(made, "audit", "query", "--who", actor())
            if r["action"] == "keys-retire"] == ["k1", "k2"]


def test_a_process_still_sealing_with_a_retired_key_is_stopped(backend, tmp_path):
    """A daemon not reloaded after a rotation and a retirement cannot store with the old
    key: the input is refused (not acknowledged), nothing is stored."""
    stale = Intake(backend.store(tmp_path, time.time, RING), routes.load(SAMPLES), 1 << 24)
    ring = keys.rotated(RING)
    backend.store(tmp_path, time.time, ring).forget_key("k1", "cli:tester")
    store = backend.store(tmp_path, time.time, keys.without(ring, "k1"))
    with pytest.raises(keys.KeyProblem, match="'k1' was retired; reload gatewayd"):
        stale.accept(numbered_referral(1), ADMIN)
    assert store.listing() == []


def test_outbox_files_are_sealed_and_listed_with_their_opened_size(tmp_path):
    """An answer in an SFTP outbox is its sealed output in the store, nothing on disk; a
    listing shows the size the client will read, and only the addressed account opens it."""
    from gateway.transports import sftp
    from tests.test_sftp_outbox import answer
    store = Store(tmp_path / "spool", time.time, RING)
    outbox = sftp.Outbox(tmp_path / "sftp", store)
    row = answer(store, 1, "ZD100200301_ANTW")
    outbox.deliver(row, store.payload(row, "out"))
    plain = store.payload(row, "out")
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "spool" not in p.parts]
    ((name, attrs),) = outbox.files("his-brink", None, 10)
    assert (name, attrs["size"]) == ("ZD100200301_ANTW.hl7", len(plain))
    assert outbox.open("his-brink", name) == plain
    with pytest.raises(keys.SealBroken):      # not a message for another account
        outbox.open("his-hoogveld", name)
