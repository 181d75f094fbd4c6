"""gatewayd and gatewayctl as one system, with real clients: changes reach the running
daemon at once, one daemon per spool, onboarding with OpenSSH sftp and curl, health and
metrics, and log lines an operator can alert on."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import keys, pki
from gateway.spool.store import Store
from tests.helpers import daemon
from tests.helpers.daemon import wait_for
from tests.helpers.fakes import ROOT, numbered_referral
from tests.test_daemon_e2e import curl, identity, msa, pushing_to, send

FORBIDDEN_IN_LOG = ("dispatching", "kex", "Got remote error", "Traceback", "disconnected by user")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ops")
    made = daemon.init(folder)
    institution = pushing_to(folder)
    referrers = folder / "routes" / "referrers.csv"          # M. Visser refers anywhere here
    referrers.write_text(referrers.read_text().replace("M. Visser,06005678,", "M. Visser,*,"))
    made.update(institution=institution, log=folder / "gatewayd.log", folder=folder)
    made["process"] = daemon.start(made, made["log"])
    yield made
    if made["process"].poll() is None:
        made["process"].kill()


def log_lines(made, start: int = 0) -> list[str]:
    return made["log"].read_text()[start:].splitlines()


def test_second_daemon_on_the_spool_is_refused_and_nothing_goes_twice(gateway):
    """A second gatewayd on the same spool exits 75 with one line naming the holder's pid;
    the referral pushed meanwhile reaches the institution once."""
    made = gateway
    brink = identity(made, "his-brink")
    message = numbered_referral(1, "ONE").replace(b"06005678^VEKTIS", b"06009876^VEKTIS")
    assert msa(send(made["ports"]["mllp"], made, message, brink["cert"], brink["key"]))[1] == b"AA"
    second = subprocess.run([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert second.returncode == 75 and second.stdout == ""
    assert second.stderr == (f"gatewayd: error E-SPOOL-BUSY: spool {made['spool']} is in use by "
                             f"gatewayd pid {made['process'].pid}\n")
    wait_for(lambda: any(b"ZD500000001" in m for m in made["institution"].received), "the push")
    time.sleep(1.5)                                    # a second delivery loop would have run
    assert sum(b"ZD500000001" in m for m in made["institution"].received) == 1


def test_route_change_reaches_the_daemon_and_hand_edits_are_recorded_at_reload(gateway):
    """routes add is applied in the running daemon at once; routes ls shows the tables in
    force (not a hand-edited file) until gatewayctl reload, which records the edit line by
    line as who=reload."""
    made = gateway
    added = daemon.ctl(made, "routes", "add", "institution", "06001111", "Nieuw", "xml", "pull")
    assert f"applied in the running gatewayd (pid {made['process'].pid})".encode() in added.stdout
    listed = daemon.ctl_json(made, "routes", "ls")
    assert listed["source"] == f"in force in gatewayd pid {made['process'].pid}"
    assert "06001111" in [i["agb"] for i in listed["institutions"]]
    with open(Path(made["routes"]) / "institutions.csv", "a") as handle:
        handle.write("06002222,Met de hand,hl7,pull,\n")
    assert "06002222" not in [i["agb"] for i in daemon.ctl_json(made, "routes", "ls")["institutions"]]
    reloaded = daemon.ctl_json(made, "reload")
    assert reloaded["reloaded"] == ["routes", "identities", "certificates", "keys"]
    assert "06002222" in [i["agb"] for i in daemon.ctl_json(made, "routes", "ls")["institutions"]]
    changes = [(r["actor"], r["change"]) for r in daemon.ctl_json(made, "routes", "log")]
    assert changes[0] == ("reload", "+ institution 06002222")
    assert ("reload", "+ institution 06001111") not in changes      # recorded once, by the CLI


def test_identity_onboarded_works_at_once_with_openssh_sftp_and_curl(gateway, tmp_path):
    """identities add with --ssh-key: OpenSSH sftp (checking the host key from init's
    known_hosts) and curl with the issued certificate work at once; after rm neither does."""
    made = gateway
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")],
                   check=True)
    added = daemon.ctl_json(made, "identities", "add", "his", "his-nieuw", "--agb", "01234567",
                            "--ssh-key", str(tmp_path / "id.pub"))
    assert added["daemon"] == made["process"].pid
    upload = tmp_path / "verwijzing.hl7"
    upload.write_bytes(numbered_referral(1, "NIEUW"))
    command = ["sftp", "-b", "-", "-i", str(tmp_path / "id"), "-P", str(made["ports"]["sftp"]),
               "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={made['known_hosts']}",
               "-o", "BatchMode=yes", "his-nieuw@127.0.0.1"]
    result = subprocess.run(command, input=f"cd inbox\nput {upload}\n", capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: daemon.ctl_json(made, "queue", "ls", "--zd", "ZD500000001", "--state", "all"),
             "the upload")
    post = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", made["ca"],
            "--cert", added["cert"], "--key", added["key"], "--data-binary", "@-",
            f"https://127.0.0.1:{made['ports']['https']}/v1/messages"]
    assert subprocess.run(post, input=numbered_referral(2, "NIEUW"), capture_output=True,
                          timeout=30).stdout == b"202"
    daemon.ctl(made, "identities", "rm", "his-nieuw")
    result = subprocess.run(command, input="ls\n", capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    assert subprocess.run(post, input=numbered_referral(3, "NIEUW"), capture_output=True,
                          timeout=30).stdout == b"403"


def test_certificate_from_another_ca_works_only_when_pinned(gateway, tmp_path):
    """identities add --cert --ca trusts exactly that certificate (curl gets in at once);
    another certificate from the same CA, naming an existing identity, is refused."""
    made = gateway
    other = pki.Authority("Ziekenhuis Oost CA")
    pki.write(tmp_path, "oost-ca", other.cert, other.key)
    pki.write(tmp_path, "zis-oost", *other.issue("zis-oost"))
    pki.write(tmp_path, "his-brink", *other.issue("his-brink"))
    daemon.ctl(made, "identities", "add", "institution", "zis-oost", "--agb", "06008888",
               "--pull", "06008888", "--cert", str(tmp_path / "zis-oost.pem"), "--ca",
               str(tmp_path / "oost-ca.pem"))
    url = f"https://127.0.0.1:{made['ports']['https']}/v1/spool"
    for name, expect in (("zis-oost", "200"), ("his-brink", "000")):
        result = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                 made["ca"], "--cert", str(tmp_path / f"{name}.pem"), "--key",
                                 str(tmp_path / f"{name}.key"), url], capture_output=True,
                                text=True, timeout=30)
        assert result.stdout == expect, (name, result.stderr)
    wait_for(lambda: "'his-brink' is from another CA and not pinned" in made["log"].read_text(),
             "the refusal line")


def test_keys_retire_refuses_the_daemons_key_and_healthz_says_why_it_cannot_store(gateway):
    """keys retire refuses the key the running daemon seals with; a key retired behind its
    back makes /healthz 503 with the reason and gatewayd_store_ok 0; reload mends both."""
    made = gateway
    ring = keys.load(Path(made["keys"]))
    keys.save(keys.rotated(ring), Path(made["keys"]))          # the file edited by hand
    refused = daemon.ctl(made, "keys", "retire", ring.current, check=False)
    assert refused.returncode == 65 and b"E-KEYS-IN-USE" in refused.stderr
    assert f"gatewayd (pid {made['process'].pid}) still seals with key {ring.current}".encode() \
        in refused.stderr
    store = Store(Path(made["spool"]), time.time, keys.load(Path(made["keys"])))
    store.forget_key(ring.current, "test")                     # retired behind its back
    store.close()
    health = f"http://127.0.0.1:{made['ports']['metrics']}"
    answer = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", f"{health}/healthz"],
                            capture_output=True, text=True, timeout=30).stdout
    assert answer.endswith("\n503") and f"key '{ring.current}' was retired" in answer
    metrics = subprocess.run(["curl", "-sS", f"{health}/metrics"], capture_output=True, text=True,
                             timeout=30).stdout
    assert "\ngatewayd_store_ok 0\n" in metrics
    daemon.ctl(made, "reload")
    assert subprocess.run(["curl", "-sS", f"{health}/healthz"], capture_output=True, text=True,
                          timeout=30).stdout == "ok\n"


def test_metrics_have_certificates_latency_build_info_and_no_empty_labels(gateway):
    """/metrics: seconds until the server, CA and client certificates expire, an ACK latency
    histogram per channel that counted the MLLP messages, build info, start time; every
    series labelled, none with an empty label."""
    made = gateway
    text = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{made['ports']['metrics']}/metrics"],
                          capture_output=True, text=True, timeout=30).stdout
    expiry = dict(re.findall(r'gatewayd_certificate_expiry_seconds\{certificate="([^"]+)"\} (\S+)',
                             text))
    assert int(expiry["server"]) > 86400 * 700 and int(expiry["client:his-brink"]) > 0
    assert any(name.startswith("ca:") for name in expiry)
    count = int(re.search(r'gatewayd_ack_latency_seconds_count\{channel="mllp"\} (\d+)', text)[1])
    assert count >= 1
    assert re.search(r'gatewayd_build_info\{version="[^"]+",python="[^"]+"\} 1', text)
    assert float(re.search(r"\ngatewayd_start_time_seconds (\S+)", text)[1]) < time.time()
    assert 'gatewayd_rejected_total{channel="sftp"} 0' in text and '=""' not in text


def test_port_in_use_is_one_line_and_exit_71(gateway, tmp_path):
    """A port in use: one line naming it, exit 71, no traceback."""
    made = gateway
    other = daemon.init(tmp_path / "other")
    config = Path(other["config"])
    config.write_text(config.read_text().replace(f"mllp_port = {other['ports']['mllp']}",
                                                 f"mllp_port = {made['ports']['mllp']}"))
    result = subprocess.run([sys.executable, "-m", "gateway.daemon", "-c", str(config)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 71 and result.stderr.count("\n") == 1, result.stderr
    assert f"E-LISTEN: cannot listen on 127.0.0.1:{made['ports']['mllp']}" in result.stderr


def test_readme_mllp_example_returns_once_the_ack_is_printed(gateway):
    """The README's openssl s_client example, run as written (on this test's port), prints
    the ACK and returns by itself."""
    made = gateway
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```sh\ncd run\n(\{ printf.*?)\n```", readme, re.S)[1]
    lines = [line for line in example.splitlines() if not line.startswith("../.venv")]
    script = "\n".join(lines).replace("127.0.0.1:2575", f"127.0.0.1:{made['ports']['mllp']}")
    script = script.replace("../fixtures", str(ROOT / "fixtures")).replace(
        "HISX-000042", "README-1")
    started = time.time()
    result = subprocess.run(["bash", "-c", script], cwd=made["folder"], capture_output=True,
                            text=True, timeout=30)
    assert "MSA|AA|" in result.stdout and time.time() - started < 20


def test_log_lines_mean_something_and_hold_no_internals(gateway):
    """A push to an address nobody listens on is a WARNING 'deferred' line with the attempt
    and next try; a referral for an unknown institution a WARNING 'fallback' line with the
    reason; accepted messages INFO; no conch or Twisted internals at all."""
    made = gateway
    start = len(made["log"].read_text())
    daemon.ctl(made, "routes", "add", "institution", "06003333", "Dicht", "hl7", "mllp://127.0.0.1:9")
    brink = identity(made, "his-brink")
    for number, recipient in ((7, b"06003333"), (8, b"06004444")):
        message = numbered_referral(number, "LOG").replace(b"06005678^VEKTIS", recipient + b"^VEKTIS")
        assert msa(send(made["ports"]["mllp"], made, message, brink["cert"], brink["key"]))[1] == b"AA"
    deferred = wait_for(lambda: [line for line in log_lines(made, start) if "deferred id=" in line],
                        "the deferred line")
    assert " WARNING [gatewayd.delivery] " in deferred[0] and "attempt=1 next try 20" in deferred[0]
    (fallback,) = [line for line in log_lines(made, start) if "fallback id=" in line]
    assert " WARNING [gatewayd] " in fallback and "recipient AGB 06004444 not in the table" in fallback
    assert any(" INFO [gatewayd.mllp] accepted id=" in line for line in log_lines(made, start))
    whole = made["log"].read_text()
    assert not [word for word in FORBIDDEN_IN_LOG if word in whole]
    assert all(re.match(r"\S+Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[", line)
               for line in whole.splitlines())


def test_queue_actions_and_api_times_reach_the_running_daemon(gateway):
    """queue hold says it is applied in the running daemon; the HTTPS spool listing gives
    received_at in ISO 8601 UTC."""
    made = gateway
    brink = identity(made, "his-brink")
    send(made["ports"]["mllp"], made, numbered_referral(20, "API"), brink["cert"], brink["key"])
    status, body = curl(made, "/v1/spool", "zis-eemland")
    (listed,) = [m for m in json.loads(body)["messages"] if m["zd_number"] == "ZD500000020"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed["received_at"])
    held = daemon.ctl(made, "queue", "hold", str(listed["id"]))
    assert f"applied in the running gatewayd (pid {made['process'].pid})".encode() in held.stdout
