"""Backups: a consistent online copy while gatewayd takes messages, verified, restored
into an empty spool elsewhere with every message acknowledged before it began."""

import hashlib
import json
import socket
import ssl
import sqlite3
import threading
import time
from pathlib import Path

from gateway import audit, keys
from gateway.spool.store import Store
from gateway.transports.sftp import Outbox
from tests.helpers import daemon
from tests.helpers.fakes import ROOT, Threads, numbered_referral
from tests.test_daemon_e2e import identity

HL7 = ROOT / "fixtures" / "hl7"


def _use_keys(target: dict, key_file: Path) -> None:
    """Put the key file a backup was made with in place for ``target``."""
    Path(target["keys"]).write_bytes(key_file.read_bytes())


def test_backup_holds_store_tables_and_config_and_keys_only_apart(tmp_path):
    """backup DEST writes the store, route tables, configuration and a manifest; the key
    file only with --with-keys, and never inside DEST; verify says ok."""
    made = daemon.init(tmp_path / "gw")
    daemon.ctl(made, "submit", str(HL7 / "referral-lf.hl7"))
    refused = daemon.ctl(made, "backup", str(tmp_path / "b0"), "--with-keys",
                         str(tmp_path / "b0" / "keys"), check=False)
    assert refused.returncode == 65 and b"keep the key file apart" in refused.stderr
    daemon.ctl(made, "backup", str(tmp_path / "b1"))
    names = {str(p.relative_to(tmp_path / "b1")) for p in (tmp_path / "b1").rglob("*")}
    assert names == {"gateway.db", "gatewayd.toml", "manifest.json", "routes",
                     "routes/institutions.csv", "routes/referrers.csv", "routes/mailboxes.csv"}
    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_text())
    assert (manifest["messages"], manifest["payloads"], manifest["keys"]) == (1, 2, "not included")
    daemon.ctl(made, "backup", str(tmp_path / "b2"), "--with-keys", str(tmp_path / "apart.keys"))
    assert keys.load(tmp_path / "apart.keys") == keys.load(Path(made["keys"]))
    assert (tmp_path / "apart.keys").stat().st_mode & 0o077 == 0
    report = daemon.ctl_json(made, "backup", "verify", str(tmp_path / "b2"))
    assert (report["messages"], report["payloads"], report["problems"]) == (1, 2, [])
    again = daemon.ctl(made, "backup", str(tmp_path / "b2"), check=False)
    assert again.returncode == 65 and b"is not empty" in again.stderr


def test_backup_verify_finds_a_damaged_backup(tmp_path):
    """A changed byte fails the manifest's SHA-256; a payload altered inside the copy, with
    the manifest made to match, fails its seal — each named in one line."""
    made = daemon.init(tmp_path / "gw")
    daemon.ctl(made, "submit", str(HL7 / "referral-lf.hl7"))
    daemon.ctl(made, "backup", str(tmp_path / "b"))
    db_path = tmp_path / "b" / "gateway.db"
    original = db_path.read_bytes()
    db_path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    failed = daemon.ctl(made, "backup", "verify", str(tmp_path / "b"), check=False)
    assert failed.returncode == 65
    assert failed.stderr.decode().strip() == (f"gatewayctl: error E-VERIFY: {tmp_path / 'b'}: 1 "
                                              "problem(s), the first: gateway.db does not match "
                                              "its SHA-256 in the manifest")
    db_path.write_bytes(original)
    db = sqlite3.connect(db_path)
    sealed = bytearray(db.execute("SELECT sealed FROM payloads WHERE message_id = 1 AND "
                                  "which = 'out'").fetchone()[0])
    sealed[-3] ^= 0x08
    db.execute("UPDATE payloads SET sealed = ? WHERE message_id = 1 AND which = 'out'",
               (bytes(sealed),))
    db.commit()
    db.close()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["files"]["gateway.db"] = hashlib.sha256(db_path.read_bytes()).hexdigest()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    failed = daemon.ctl(made, "backup", "verify", str(tmp_path / "b"), check=False)
    assert failed.returncode == 65 and b"the out payload of message 1: authentication tag" \
        in failed.stderr


def test_restore_only_into_an_empty_spool_with_the_right_keys(tmp_path):
    """restore refuses a spool that holds messages, and a key file that does not fit;
    into an empty one it brings back messages, payloads, tables and SFTP outboxes, and
    records itself."""
    made = daemon.init(tmp_path / "gw")
    daemon.ctl(made, "submit", str(HL7 / "referral-lf.hl7"))
    daemon.ctl(made, "routes", "rm", "referrer", "01765432")
    store = Store(Path(made["spool"]), time.time, keys.load(Path(made["keys"])))
    Outbox(Path(made["config"]).parent / "sftp", store).deliver(
        {**dict(store.get(1)), "delivery": "sftp:his-brink", "format": "hl7"}, b"an answer")
    (listed,) = Outbox(Path(made["config"]).parent / "sftp", store).files("his-brink", None, 9)
    store.close()
    daemon.ctl(made, "backup", str(tmp_path / "b"), "--with-keys", str(tmp_path / "k"))
    other = daemon.init(tmp_path / "other")
    wrong = daemon.ctl(other, "restore", str(tmp_path / "b"), check=False)
    assert wrong.returncode == 65 and b"the key file does not hold key 'k1'" in wrong.stderr
    refused = daemon.ctl(made, "restore", str(tmp_path / "b"), check=False)
    assert refused.returncode == 65 and b"E-RESTORE-NOT-EMPTY" in refused.stderr
    _use_keys(other, tmp_path / "k")
    daemon.ctl(other, "restore", str(tmp_path / "b"))
    assert daemon.ctl(other, "show", "1", "--converted").stdout.startswith(b"<?xml")
    assert "01765432" not in (Path(other["routes"]) / "referrers.csv").read_text()
    restored = Store(Path(other["spool"]), time.time, keys.load(Path(other["keys"])))
    assert Outbox(Path(other["config"]).parent / "sftp", restored).files("his-brink", None, 9) \
        == [listed]
    restored.close()
    assert [r["action"] for r in daemon.ctl_json(other, "audit", "query", "--zd", "ZD100200300")
            ][:3] == ["receive", "convert", "route"]
    assert daemon.ctl_json(other, "audit", "verify")["records"] >= 5
    assert daemon.ctl_json(other, "store", "verify")["problems"] == []


class Stream(Threads):
    """Senders on persistent MLLP/TLS connections, each noting when every AA came."""

    def __init__(self, made: dict, senders: int):
        super().__init__()
        self.made, self.acks = made, {}
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(senders)]

    def run(self, number: int) -> None:
        brink = identity(self.made, "his-brink")
        context = ssl.create_default_context(cafile=self.made["ca"])
        context.load_cert_chain(brink["cert"], brink["key"])
        raw = socket.create_connection(("127.0.0.1", self.made["ports"]["mllp"]), timeout=30)
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            buffer, index = b"", 0
            while not self.stop.is_set():
                index += 1
                control_id = f"S{number}-{index:06d}"
                conn.sendall(b"\x0b" + numbered_referral(index, f"S{number}", 400_000_000 + (
                    number << 20)) + b"\x1c\x0d")
                while b"\x1c\x0d" not in buffer:
                    buffer += conn.recv(65536)
                ack, _, buffer = buffer.partition(b"\x1c\x0d")
                assert f"MSA|AA|{control_id}".encode() in ack
                self.acks[control_id] = time.monotonic()



def test_backup_during_an_mllp_stream_restores_every_acknowledged_message(tmp_path):
    """A backup taken while four senders stream to a running gatewayd, restored into another
    setup, holds every message acknowledged before the backup began, each readable."""
    made = daemon.init(tmp_path / "gw")
    process = daemon.start(made, tmp_path / "gatewayd.log")
    try:
        with Stream(made, senders=4) as stream:
            time.sleep(1.5)
            began = time.monotonic()
            daemon.ctl(made, "backup", str(tmp_path / "b"), "--with-keys", str(tmp_path / "k"))
            ended = time.monotonic()
            time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(timeout=30)
    before = {c for c, at in stream.acks.items() if at < began}
    during = {c for c, at in stream.acks.items() if began <= at < ended}
    assert len(before) > 50 and during, "the stream must run before and during the backup"
    other = daemon.init(tmp_path / "other")
    _use_keys(other, tmp_path / "k")
    daemon.ctl(other, "restore", str(tmp_path / "b"))
    store = Store(Path(other["spool"]), time.time, keys.load(Path(other["keys"])))
    rows = {row["control_id"]: row for row in store.db.execute("SELECT * FROM messages")}
    assert before <= set(rows), sorted(before - set(rows))[:5]
    for control_id in before:
        assert control_id.encode() in store.payload(rows[control_id], "raw")
        assert store.payload(rows[control_id], "out").startswith(b"<?xml")
    assert audit.verify(store.db, store.ring)[1] is None
