"""The privacy promises with a real gatewayd, real clients and a real SMTP server.

Marker patient data (a BSN, a name, a letter line) goes in through every path —
HL7 over MLLP, HTTPS posts, SFTP uploads (one of them rejected), a teleconsult
answer to an SFTP outbox, a message for fallback — and out through every pull.
Then every file under the gateway's folder (SQLite, its WAL, payloads, SFTP
folders, quarantine, the log) and every notification received must be free of
the markers in plain text, while the audit log can say who handled the marked
patient's data.
"""

import datetime as dt
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import keys
from gateway.cli.common import actor
from tests.helpers import daemon
from tests.helpers.fakes import ROOT
from tests.test_daemon_e2e import curl, identity, msa, send, sftp

MARK_BSN, MARK_NAME, MARK_LETTER = b"987650002", b"Kwikstaart", b"Markeerregel vertrouwelijk Q7"
MARKERS = (MARK_BSN, MARK_NAME, MARK_LETTER)
HL7 = ROOT / "fixtures" / "hl7"
EDI = ROOT / "fixtures" / "medvri"


def marked(data: bytes) -> bytes:
    """A fixture with the marker patient in place of the fixture patient."""
    for old, new in ((b"123456782", MARK_BSN), (b"Dijk", MARK_NAME),
                     (b"Geachte collega,", MARK_LETTER)):
        data = data.replace(old, new)
    assert all(marker in data for marker in MARKERS[:2]), "fixture without the patient fields"
    return data


def plaintext_markers(folder: Path) -> list[str]:
    """Every file under ``folder`` holding a marker in plain text (UTF-8/Latin-1 or UTF-16)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        for marker in MARKERS:
            text = marker.decode()
            if any(form in data for form in (marker, text.encode("utf-16-le"),
                                             text.encode("utf-16-be"))):
                found.append(f"{path.relative_to(folder)}: {text}")
    return found


def test_the_scan_finds_one_plaintext_byte_sequence(tmp_path):
    """The scanner is not blind: a file with a marker, in any of the forms, is reported."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.db-wal").write_bytes(b"\0" * 100 + MARK_NAME + b"\0")
    (tmp_path / "y").write_bytes(MARK_BSN.decode().encode("utf-16-le"))
    assert plaintext_markers(tmp_path) == ["a/b/x.db-wal: Kwikstaart", "y: 987650002"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("private")
    made = daemon.init(folder)
    mailbox = tmp_path_factory.mktemp("mailbox")
    sink = subprocess.Popen([sys.executable, "-m",
                             "tests.helpers.notify_sink", str(mailbox), str(folder / "tls")],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    _, smtp_port, hook_port = sink.stdout.readline().split()
    config = Path(made["config"])
    config.write_text(config.read_text()
                      .replace('email_to = ""', 'email_to = "privacy@example.org"')
                      .replace('smtp_host = "localhost"', 'smtp_host = "127.0.0.1"')
                      .replace("smtp_port = 25", f"smtp_port = {smtp_port}")
                      .replace('webhook_url = ""', f'webhook_url = "https://127.0.0.1:{hook_port}/hook"')
                      .replace('ca = ""', 'ca = "tls/ca.pem"'))
    made["log"] = folder / "gatewayd.log"
    made["mailbox"] = mailbox
    made["process"] = process = daemon.start(made, made["log"])
    yield made, folder
    process.kill()
    sink.kill()


def test_marker_data_through_every_path_is_stored_encrypted(gateway, tmp_path):
    """Every path in and out; what is pulled is plain, what is stored is not."""
    made, folder = gateway
    brink = identity(made, "his-brink")
    # HL7 over MLLP
    hl7 = marked((HL7 / "referral-lf.hl7").read_bytes()).replace(b"ZD100200300", b"ZD300000001")
    assert msa(send(made["ports"]["mllp"], made, hl7, brink["cert"], brink["key"]))[1] == b"AA"
    # HTTPS post, then the hospital pulls (decrypted on the fly) and confirms
    edi = marked((EDI / "referral-crlf.edi").read_bytes())
    status, body = curl(made, "/v1/messages", "his-brink", data=edi)
    assert status == 202
    pulled_id = json.loads(body)["id"]
    status, pulled = curl(made, f"/v1/messages/{pulled_id}", "zis-eemland")
    assert status == 200 and MARK_NAME in pulled and MARK_BSN in pulled
    assert curl(made, f"/v1/messages/{pulled_id}/ack", "zis-eemland", method="POST")[0] == 200
    # SFTP: one good upload, one rejected (kept for the administrator)
    (tmp_path / "drop.edi").write_bytes(edi.replace(b"HIS00042", b"SFTP0042").replace(
        b"ZD100200300", b"ZD300000002"))
    (tmp_path / "bad.edi").write_bytes(edi.replace(b"UNT+16+42", b"UNT+15+42"))
    result = sftp(made, "his-brink", f"cd inbox\nput {tmp_path / 'drop.edi'}\n"
                  f"put {tmp_path / 'bad.edi'}\n", tmp_path)
    assert result.returncode == 0, result.stderr
    # a message for fallback: an institution no table knows
    lost = hl7.replace(b"HISX-000042", b"HISX-000043").replace(b"06005678", b"06001111").replace(
        b"ZD300000001", b"ZD300000003")
    assert msa(send(made["ports"]["mllp"], made, lost, brink["cert"], brink["key"]))[1] == b"AA"
    # a teleconsult answer, to the GP's SFTP outbox, read there (opened on the fly)
    answer = marked((HL7 / "teleconsult-answer-crlf.hl7").read_bytes())
    assert curl(made, "/v1/messages", "zis-eemland", data=answer)[0] == 202
    for _ in range(100):
        result = sftp(made, "his-brink", "cd outbox\nget ZD100200301_ANTW.edi\n", tmp_path)
        if result.returncode == 0:
            break
        time.sleep(0.2)
    assert MARK_NAME in (tmp_path / "ZD100200301_ANTW.edi").read_bytes()
    # the outbox file altered on disk: refused, quarantined, and written again from the store
    outbox_file = folder / "sftp" / "his-brink" / "outbox" / "ZD100200301_ANTW.edi"
    altered = bytearray(outbox_file.read_bytes())
    altered[-3] ^= 0x01
    outbox_file.write_bytes(bytes(altered))
    (tmp_path / "ZD100200301_ANTW.edi").unlink()
    result = sftp(made, "his-brink", "get outbox/ZD100200301_ANTW.edi\n", tmp_path)
    assert result.returncode != 0 and not (tmp_path / "ZD100200301_ANTW.edi").exists()
    assert (folder / "spool" / "quarantine" / "his-brink-ZD100200301_ANTW.edi").exists()
    assert "ALERT outbox file ZD100200301_ANTW.edi of sftp:his-brink failed its seal" in \
        made["log"].read_text()
    for _ in range(100):
        if sftp(made, "his-brink", "get outbox/ZD100200301_ANTW.edi\n", tmp_path).returncode == 0:
            break
        time.sleep(0.2)
    assert MARK_NAME in (tmp_path / "ZD100200301_ANTW.edi").read_bytes()
    daemon.ctl(made, "status", "ZD300000001")                           # an administrator looks
    rejected = [r for r in daemon.ctl_json(made, "queue", "ls", "--state", "rejected")]
    assert rejected and MARK_NAME in daemon.ctl(made, "show", str(rejected[0]["id"])).stdout

    stored = {p.relative_to(folder).parts[0] for p in folder.rglob("*") if p.is_file()}
    assert {"spool", "sftp", "gatewayd.log"} <= stored and list(folder.glob("spool/quarantine/*"))
    assert list(folder.glob("sftp/his-brink/outbox/*.edi")) and list(folder.glob("spool/*-wal"))
    leaks = plaintext_markers(folder)
    assert leaks == [], f"patient data in plain text: {leaks}"


def test_audit_answers_who_saw_the_patient(gateway):
    """The privacy officer asks by BSN: receipt, conversion, routing, the hospital's pull and
    pickup, the administrator's view — each with who, for whom, and when; the chain holds."""
    made, _ = gateway
    records = daemon.ctl_json(made, "audit", "query", "--patient", MARK_BSN.decode())
    seen = {(r["who"], r["action"]) for r in records}
    for expected in (("https:his-brink", "receive"), ("https:his-brink", "convert"),
                     ("sftp:his-brink", "quarantine"),
                     ("https:his-brink", "route"), ("https:zis-eemland", "pull"),
                     ("https:zis-eemland", "pickup"), ("mllp:his-brink", "receive"),
                     ("sftp:his-brink", "receive"), ("sftp:his-brink", "pull"), (actor(), "view")):
        assert expected in seen, expected
    assert {r["behalf"] for r in records} == {"01234567", "03056789"}    # GP, specialist
    assert all(MARK_BSN.decode() not in json.dumps(r) for r in records)
    assert json.loads(daemon.ctl(made, "audit", "verify", "--json").stdout)["records"] > 10


def test_notifications_carry_no_patient_data(gateway):
    """E-mail (over STARTTLS, to a real SMTP server) and the webhook tell of the answer and
    the fallback by event, ZD number and where to look — and nothing about the patient."""
    made, _ = gateway
    mailbox = made["mailbox"]
    for _ in range(150):
        mails = [p.read_text() for p in mailbox.glob("mail-*.eml")]
        if any("answer-arrived" in m for m in mails) and any("fallback" in m for m in mails):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"notifications missing: {mails} / {(made['log']).read_text()[-2000:]}")
    assert all(p.name.endswith("-tls.eml") for p in mailbox.glob("mail-*.eml"))
    answer = next(m for m in mails if "answer-arrived" in m)
    assert "ZD100200301_ANTW" in answer and "gatewayctl status ZD100200301_ANTW" in answer
    assert any("ZD300000003" in m for m in mails if "fallback" in m)
    for _ in range(100):
        hooks = [json.loads(p.read_text()) for p in mailbox.glob("hook-*.json")]
        if {"answer-arrived", "fallback", "quarantined"} <= {h["event"] for h in hooks}:
            break
        time.sleep(0.2)
    assert {"answer-arrived", "fallback", "quarantined"} <= {h["event"] for h in hooks}
    assert plaintext_markers(mailbox) == []
    assert all(b"1957" not in p.read_bytes() for p in mailbox.iterdir())   # the birth date


def test_rotated_key_taken_at_reload(gateway):
    """keys rotate reaches the running daemon at once (it seals new messages with the new
    key); an identity changed by hand is taken at SIGHUP; both are in the audit log."""
    made, folder = gateway
    rotated = json.loads(daemon.ctl(made, "keys", "rotate", "--json").stdout)
    assert rotated["current"] == "k2" and rotated["daemon"] == made["process"].pid
    config = Path(made["config"])
    config.write_text(config.read_text().replace('agb = ["01765432"]', 'agb = ["01765432", "01765433"]'))
    made["process"].send_signal(signal.SIGHUP)
    for _ in range(100):
        if "reloaded identities" in made["log"].read_text():
            break
        time.sleep(0.1)
    edi = (EDI / "referral-crlf.edi").read_bytes().replace(b"HIS00042", b"HIS00099").replace(
        b"ZD100200300", b"ZD300000009")
    status, body = curl(made, "/v1/messages", "his-brink", data=edi)
    assert status == 202
    row = daemon.ctl_json(made, "status", "ZD300000009")[0]
    assert row["state"] == "ready"
    records = [(r["action"], r["detail"]) for r in daemon.ctl_json(made, "audit", "query", "--who",
                                                                    "reload")]
    assert records == [("identities-change", "changed: his-hoogveld")]
    rotations = daemon.ctl_json(made, "audit", "query", "--who", actor())
    assert ("keys-rotate", "current key k2, 0 payloads and 0 outbox files re-encrypted") in [
        (r["action"], r["detail"]) for r in rotations]
    db = sqlite3.connect(folder / "spool" / "gateway.db")
    (sealed,) = db.execute("SELECT sealed FROM payloads WHERE which = 'raw' AND message_id = "
                           "(SELECT raw_owner FROM messages WHERE zd_number = ?)",
                           ("ZD300000009",)).fetchone()
    assert keys.header(sealed)[0] == "k2"


def test_purge_leaves_nothing_and_status_says_so(gateway):
    """Purged as of 600 days on: no payload is left, and the sender asking for the
    status of a purged referral gets 410 saying when and under which rule; another
    identity learns nothing (404, as for a ZD number that never was)."""
    made, folder = gateway
    later = str(dt.date.today() + dt.timedelta(days=600))
    report = daemon.ctl_json(made, "purge", "--as-of", later)
    assert report["messages"] == 7 and set(report["by_rule"]) == {"referral: 180 days",
                                                                  "teleconsultation: 548 days"}
    db = sqlite3.connect(folder / "spool" / "gateway.db")
    assert db.execute("SELECT count(*) FROM payloads").fetchone()[0] == 0
    status, body = curl(made, "/v1/status/ZD300000009", "his-brink")
    assert status == 410 and json.loads(body)["code"] == "E-PURGED"
    assert "under the retention rule (referral: 180 days)" in json.loads(body)["message"]
    status, body = curl(made, "/v1/status/ZD300000009", "zis-eemland")
    assert status == 404 and json.loads(body)["code"] == "E-HTTP-NOT-FOUND"
    assert plaintext_markers(folder) == []
