"""gatewayd for real: started as a process on a free local port, spoken to by an
MLLP client over TLS with client certificates."""

import datetime as dt
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
from gateway.codecs import hl7v2
from tests.helpers import daemon
from tests.helpers.fakes import numbered_referral
from tests.helpers.institution import Institution, push_route, read_frame

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gw")
    made = daemon.init(folder)
    made["institution"] = pushing_to(folder)
    made["log"] = folder / "gatewayd.log"
    process = daemon.start(made, made["log"])
    yield made, made["ports"]["mllp"], process
    if process.poll() is None:
        process.kill()


def pushing_to(folder: Path) -> Institution:
    """An Institution, with Ziekenhuis Zuid-Limburg (06009876) pushed to it over MLLP."""
    institution = Institution(folder / "tls")
    push_route(folder / "routes" / "institutions.csv", "06009876", institution.port)
    return institution


def load_authority(made) -> pki.Authority:
    """The development CA that init made, to issue test certificates with."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    authority = pki.Authority.__new__(pki.Authority)
    folder = Path(made["ca"]).parent
    authority.cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    authority.key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    return authority


def identity(made, name):
    return next(i for i in made["identities"] if i["name"] == name)


def send(port, made, message: bytes, cert=None, key=None, ca=None, weak=False) -> bytes:
    context = ssl.create_default_context(cafile=ca or made["ca"])
    if weak:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")     # so that only the server can refuse
    if cert:
        context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"\x0b" + message + b"\x1c\x0d")
            return read_frame(conn)


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


def test_zorgdomein_oru_over_mllp_is_stored_with_its_warnings(gateway):
    """ZorgDomein's own ORU^R01 (MSH-2 ^_\\&, the facility by name) sent over MLLP gets AA
    with MSA-2 = its MSH-10, is routed through mailboxes.csv, and its history says so."""
    made, port, _ = gateway
    brink = identity(made, "his-brink")
    message = (ROOT / "fixtures" / "hl7" / "zd-oru-pdf-referral.hl7").read_bytes()
    assert msa(send(port, made, message, brink["cert"], brink["key"])) == \
        [b"MSA", b"AA", b"ZD200300500"]
    (row,) = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "-c", made["config"], "status", "ZD200300500",
         "--json"], capture_output=True, check=True, cwd=ROOT).stdout)
    assert (row["kind"], row["state"], row["destination"]) == ("referral", "ready", "06005678")
    assert "recipient mailbox 'Ziekenhuis Eemland' is AGB 06005678" in row["history"][0]["reason"]


def test_unmandated_sender_gets_ar(gateway):
    """Another practice's certificate may not send for this referrer: AR."""
    made, port, _ = gateway
    other = identity(made, "his-hoogveld")
    reply = send(port, made, numbered_referral(2, "E2E"), other["cert"], other["key"])
    assert msa(reply)[:2] == [b"MSA", b"AR"] and b"E-NOT-MANDATED" in reply


CASES = ["no certificate", "other CA", "self-signed", "expired", "not yet valid", "weak key"]


@pytest.mark.parametrize("case", CASES)
def test_clients_without_a_good_certificate_are_refused(gateway, tmp_path, case):
    """Only a valid certificate from the configured CA gets in: none, another CA's, a
    self-signed, an expired, a not yet valid one and one with a weak key are refused, each
    logged once with the client's address."""
    made, port, _ = gateway
    cert = key = None
    now = dt.datetime.now(dt.timezone.utc)
    if case in ("other CA", "self-signed"):
        stranger = pki.Authority("his-brink" if case == "self-signed" else "stranger CA")
        pair = (stranger.cert, stranger.key) if case == "self-signed" else stranger.issue("his-brink")
        cert, key = pki.write(tmp_path, "his-brink", *pair)
    elif case != "no certificate":
        authority = load_authority(made)
        dates = {"expired": (now - 10 * pki.DAY, now - pki.DAY),
                 "not yet valid": (now + pki.DAY, now + 10 * pki.DAY)}.get(case, (None, None))
        pair = authority.issue("his-brink", not_before=dates[0], not_after=dates[1],
                               key=pki.weak_rsa_key() if case == "weak key" else None)
        cert, key = pki.write(tmp_path, "his-brink", *pair)
    logged = len(made["log"].read_text())
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        reply = send(port, made, numbered_referral(3, "E2E"), cert, key, weak=case == "weak key")
        if not reply:
            raise ConnectionError("closed without an ACK")
    for _ in range(50):
        refusals = [line for line in made["log"].read_text()[logged:].splitlines()
                    if "127.0.0.1 refused" in line]
        if refusals:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the refusal was not logged")
    assert len(refusals) == 1, refusals          # once, with the client's address
    assert " WARNING " in refusals[0]
    if case == "no certificate":
        assert "peer did not return a certificate" in refusals[0]


def curl(made, path, name=None, data=None, method=None):
    """curl with the identity's client certificate; returns (status, body)."""
    url = f"https://127.0.0.1:{made['ports']['https']}{path}"
    command = ["curl", "-sS", "--cacert", made["ca"], "-o", "-", "-w", "\n%{http_code}", url]
    if name:
        who = identity(made, name)
        command += ["--cert", who["cert"], "--key", who["key"]]
    if data is not None:
        command += ["--data-binary", "@-", "-H", "Content-Type: application/octet-stream"]
    if method:
        command += ["-X", method]
    result = subprocess.run(command, input=data, capture_output=True, timeout=30)
    if result.returncode:
        return 0, result.stderr
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


def test_https_post_pull_and_confirm(gateway):
    """curl posts a referral (202), the hospital lists, pulls the XML and confirms it;
    another hospital cannot see it; no certificate, no service."""
    made, _, _ = gateway
    status, body = curl(made, "/v1/messages", "his-brink",
                        data=(ROOT / "fixtures" / "medvri" / "referral-crlf.edi").read_bytes())
    assert status == 202 and json.loads(body)["state"] == "ready"
    message_id = json.loads(body)["id"]
    status, body = curl(made, "/v1/spool", "zis-eemland")
    assert message_id in [m["id"] for m in json.loads(body)["messages"]]
    assert curl(made, f"/v1/messages/{message_id}", "zis-zuid")[0] == 404
    status, body = curl(made, f"/v1/messages/{message_id}", "zis-eemland")
    assert status == 200 and body.startswith(b"<?xml") and b"ZD100200300" in body
    assert curl(made, f"/v1/messages/{message_id}/ack", "zis-eemland", method="POST")[0] == 200
    status, body = curl(made, "/v1/spool", "zis-eemland")
    assert message_id not in [m["id"] for m in json.loads(body)["messages"]]
    assert curl(made, "/v1/spool")[0] == 0


def test_https_spool_is_paged(gateway):
    """GET /v1/spool?limit=N gives the oldest N and says more follow; ?after=ID continues
    after the last of them; a bad number is a 400 naming the parameter."""
    made, _, _ = gateway
    for index in range(3):
        curl(made, "/v1/messages", "his-brink", data=numbered_referral(800 + index, "PAGE"))
    everything = json.loads(curl(made, "/v1/spool", "zis-eemland")[1])
    ids = [m["id"] for m in everything["messages"]]
    assert len(ids) >= 3 and not everything["more"]
    first = json.loads(curl(made, "/v1/spool?limit=2", "zis-eemland")[1])
    assert [m["id"] for m in first["messages"]] == ids[:2] and first["more"]
    rest = json.loads(curl(made, f"/v1/spool?after={ids[1]}", "zis-eemland")[1])
    assert [m["id"] for m in rest["messages"]] == ids[2:] and not rest["more"]
    status, body = curl(made, "/v1/spool?limit=x", "zis-eemland")
    assert status == 400 and json.loads(body)["where"] == "limit"


def test_https_refusals_are_json(gateway):
    """Bad content is 400 and an unmandated sender 403, each as {code, message, where}."""
    made, _, _ = gateway
    status, body = curl(made, "/v1/messages", "his-brink", data=b"UNB+UNOA:1+x'")
    assert status == 400 and json.loads(body)["code"].startswith("E-EDI")
    status, body = curl(made, "/v1/messages", "his-hoogveld",
                        data=(ROOT / "fixtures" / "medvri" / "referral-crlf.edi").read_bytes())
    assert status == 403 and json.loads(body)["code"] == "E-NOT-MANDATED"
    status, body = curl(made, "/healthz", "his-brink")
    assert (status, body.strip()) == (200, b"ok")


def test_pushes_to_an_institution_over_mllp(gateway):
    """Referrals for an institution with mllp:// delivery are pushed as HL7 and count as
    delivered once its AA names their MSH-10."""
    made, _, _ = gateway
    data = (ROOT / "fixtures" / "medvri" / "two-messages-unoc.edi").read_bytes()
    status, body = curl(made, "/v1/messages", "his-hoogveld", data=data)
    assert status == 202 and [r["state"] for r in json.loads(body)] == ["outbound", "outbound"]
    ids = {r["id"] for r in json.loads(body)}
    for _ in range(100):
        rows = json.loads(subprocess.run(
            [sys.executable, "-m", "gateway.cli", "-c", made["config"], "queue", "ls", "--json"],
            capture_output=True, check=True, cwd=ROOT).stdout)
        if all(r["state"] == "delivered" for r in rows if r["id"] in ids):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"not delivered: {rows}")
    pushed = [hl7v2.decode(m)[0].zd_number for m in made["institution"].received]
    assert sorted(pushed) == ["ZD200300400", "ZD200300401"]


def test_log_holds_no_patient_data(gateway):
    """No log line holds the test patient's BSN, name or letter text."""
    made, _, _ = gateway
    text = made["log"].read_text()
    assert "123456782" not in text and "Dijk" not in text and "Geachte" not in text


def sftp(made, name, commands: str, tmp_path) -> subprocess.CompletedProcess:
    """OpenSSH sftp in batch mode as ``name``; ``-`` before a command lets it fail."""
    batch = tmp_path / "batch"
    batch.write_text(commands)
    who = identity(made, name)
    return subprocess.run(
        ["sftp", "-b", str(batch), "-i", who["ssh_key"], "-P", str(made["ports"]["sftp"]),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "BatchMode=yes", f"{who['sftp_user']}@127.0.0.1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)


def outbox_names(made, tmp_path) -> set[str]:
    """The file names his-brink's outbox lists (OpenSSH sftp ``ls``)."""
    result = sftp(made, "his-brink", "ls -1 outbox\n", tmp_path)
    assert result.returncode == 0, result.stderr
    return {line.strip().removeprefix("outbox/") for line in result.stdout.splitlines()
            if line.strip().startswith("outbox/")}


def test_sftp_drop_reaches_the_institution_as_xml(gateway, tmp_path):
    """OpenSSH sftp uploads a MEDVRI file; it leaves inbox/ and the hospital pulls it as XML."""
    made, _, _ = gateway
    upload = tmp_path / "referral.edi"
    upload.write_bytes((ROOT / "fixtures" / "medvri" / "referral-crlf.edi").read_bytes().replace(
        b"HIS00042", b"SFTP00042"))
    result = sftp(made, "his-brink", f"cd inbox\nput {upload}\nls\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "referral.edi" not in result.stdout.split("ls", 1)[1]
    status, body = curl(made, "/v1/spool", "zis-eemland")
    ids = [m["id"] for m in json.loads(body)["messages"] if m["zd_number"] == "ZD100200300"]
    status, body = curl(made, f"/v1/messages/{ids[-1]}", "zis-eemland")
    assert status == 200 and body.startswith(b"<?xml")


def test_sftp_rejected_upload_leaves_an_err_file(gateway, tmp_path):
    """A broken upload is refused with an .err file naming the problem; the admin has it as rejected."""
    made, _, _ = gateway
    bad = tmp_path / "bad.edi"
    bad.write_bytes((ROOT / "fixtures" / "medvri" / "referral-crlf.edi").read_bytes().replace(
        b"UNT+16+42", b"UNT+15+42"))
    result = sftp(made, "his-brink", f"cd inbox\nput {bad}\ncd ../errors\nget bad.edi.err\n",
                  tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bad.edi.err").read_text().startswith("E-EDI-COUNT")


def test_sftp_cannot_leave_its_folder(gateway, tmp_path):
    """'..' above the account, absolute paths outside it and links are refused and logged."""
    made, _, _ = gateway
    account = Path(made["config"]).parent / "sftp" / "his-brink"
    (account / "outbox" / "escape").symlink_to("/etc")
    for command in ("get /../../etc/passwd", "cd /../..", "get outbox/escape/passwd",
                    "symlink /etc/passwd inbox/x", "mkdir inbox/sub", "put /etc/hostname ../x"):
        result = sftp(made, "his-brink", command + "\n", tmp_path)
        assert result.returncode != 0, command
    assert not (tmp_path / "passwd").exists()
    assert "SFTP his-brink refused" in made["log"].read_text()


def test_sftp_upload_over_the_cap_is_refused(gateway, tmp_path):
    """An upload larger than limits.max_upload_bytes is cut off and nothing of it is kept."""
    made, _, _ = gateway
    huge = tmp_path / "huge.edi"
    huge.write_bytes(b"UNA" + b"x" * (16 * 1024 * 1024 + 10))
    result = sftp(made, "his-brink", f"cd inbox\nput {huge}\n", tmp_path)
    assert result.returncode != 0
    assert not (Path(made["config"]).parent / "sftp" / "his-brink" / "inbox" / "huge.edi").exists()
    assert "upload larger than" in made["log"].read_text()


def test_answer_lands_in_the_sftp_outbox(gateway, tmp_path):
    """A teleconsult answer for the GP goes to its SFTP outbox as MEDVRI, ready to fetch."""
    made, _, _ = gateway
    answer = (ROOT / "fixtures" / "hl7" / "teleconsult-answer-crlf.hl7").read_bytes()
    status, _ = curl(made, "/v1/messages", "zis-eemland", data=answer)
    assert status == 202
    for _ in range(100):
        result = sftp(made, "his-brink", "cd outbox\nget ZD100200301_ANTW.edi\n", tmp_path)
        if result.returncode == 0:
            break
        time.sleep(0.2)
    assert (tmp_path / "ZD100200301_ANTW.edi").read_bytes().startswith(b"UNA:+.? '")
    assert sftp(made, "his-brink", "rm outbox/ZD100200301_ANTW.edi\n", tmp_path).returncode == 0
    (status,) = [row for row in json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "-c", made["config"], "status", "ZD100200301_ANTW",
         "--json"], capture_output=True, check=True, cwd=ROOT).stdout)]
    assert status["history"][-1]["reason"] == "pickup confirmed"


def test_metrics_on_the_local_port(gateway):
    """/metrics (no certificate, local port) counts what the other tests sent and shows queues."""
    made, _, _ = gateway
    result = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{made['ports']['metrics']}/metrics"],
                            capture_output=True, text=True, timeout=30)
    text = result.stdout
    assert 'gatewayd_received_total{channel="mllp"}' in text
    assert 'gatewayd_duplicates_total{channel="mllp"} 1' in text
    assert 'gatewayd_refused_total{channel="https"}' in text
    assert 'gatewayd_pushes_delivered_total{destination="06009876"} 2' in text
    assert 'gatewayd_queue_depth{destination="06005678",state="ready"}' in text
    assert "gatewayd_notifications_pending 0" in text and "gatewayd_purged_messages 0" in text
    assert int(text.split("\ngatewayd_audit_records ")[1].split()[0]) > 20
    assert "123456782" not in text


def test_sigterm_stops_the_daemon(gateway):
    """SIGTERM ends gatewayd with exit status 0."""
    _, _, process = gateway
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
