"""Operating gatewayd without a daemon running: the queue tooling, route editing,
onboarding and the spool lock, as an administrator runs gatewayctl."""

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import control, pki
from gateway.cli.common import actor
from tests.helpers import daemon
from tests.helpers.fakes import ROOT, numbered_referral

EDI = ROOT / "fixtures" / "medvri" / "referral-crlf.edi"


@pytest.fixture
def made(tmp_path):
    return daemon.init(tmp_path / "gw")


def submit(made, data: bytes, *extra) -> dict:
    return json.loads(daemon.ctl(made, "submit", "-", "--json", *extra, stdin=data).stdout)


def test_second_lock_on_a_spool_names_the_holder(tmp_path):
    """One spool, one daemon: a second lock is refused with the holder's pid."""
    held = control.lock(tmp_path)
    try:
        with pytest.raises(control.SpoolBusy, match=f"in use by gatewayd pid {os.getpid()}"):
            control.lock(tmp_path)
        assert control.holder(tmp_path) == os.getpid()
    finally:
        os.close(held)
    assert control.holder(tmp_path) is None
    os.close(control.lock(tmp_path))


def test_commands_without_a_daemon_say_where_the_change_takes_effect(made):
    """Without a running gatewayd a change says it takes effect at its start; reload
    exits 69 with one line."""
    result = daemon.ctl(made, "routes", "rm", "referrer", "01765432")
    assert b"no gatewayd running; takes effect at its start" in result.stdout
    reload = daemon.ctl(made, "reload", check=False)
    assert reload.returncode == 69 and reload.stderr.count(b"\n") == 1
    assert b"E-NOT-RUNNING" in reload.stderr


def test_queue_ls_oldest_first_with_filters_pages_and_iso_times(made):
    """queue ls: oldest first; --destination, --zd, --sender and --since filter; --limit
    pages with --after; JSON times are UTC with Z, text times local with an offset."""
    for index in range(3):
        submit(made, numbered_referral(index, "LS"))
    zuid = numbered_referral(9, "LS").replace(b"06005678^VEKTIS", b"06009876^VEKTIS")
    submit(made, zuid)
    rows = daemon.ctl_json(made, "queue", "ls")
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and len(rows) == 4
    assert rows[0]["received_at"].endswith("Z") and rows[0]["attempts"] == 0
    assert [r["zd_number"] for r in daemon.ctl_json(made, "queue", "ls", "--destination",
                                                   "06009876")] == ["ZD500000009"]
    assert len(daemon.ctl_json(made, "queue", "ls", "--zd", "ZD500000001")) == 1
    assert daemon.ctl_json(made, "queue", "ls", "--sender", "09999999") == []
    assert daemon.ctl_json(made, "queue", "ls", "--since", "2999-01-01") == []
    first = daemon.ctl_json(made, "queue", "ls", "--limit", "2")
    rest = daemon.ctl_json(made, "queue", "ls", "--limit", "2", "--after", str(first[-1]["id"]))
    assert [r["id"] for r in first + rest] == [r["id"] for r in rows]
    text = daemon.ctl(made, "queue", "ls", "--limit", "2").stdout.decode()
    assert f"(more: --after {first[-1]['id']})" in text
    assert any(offset in text for offset in ("+01:00", "+02:00"))


def test_bulk_hold_release_discard_and_reroute(made):
    """hold --destination stops every message there, release --all puts them back;
    discard keeps a history line with the reason; reroute sends one to another institution."""
    ids = [submit(made, numbered_referral(i, "BULK"))["id"] for i in range(3)]
    held = daemon.ctl_json(made, "queue", "hold", "--destination", "06005678")
    assert [c["state"] for c in held["changed"]] == ["held"] * 3
    assert daemon.ctl(made, "queue", "hold", check=False).returncode == 64
    daemon.ctl(made, "discard", str(ids[0]), "--reason", "test junk")
    (row,) = daemon.ctl_json(made, "status", str(ids[0]))
    assert row["history"][-1]["state"] == "discarded"
    assert row["history"][-1]["reason"] == "discarded: test junk"
    assert row["history"][-1]["actor"] == actor()
    moved = daemon.ctl_json(made, "reroute", str(ids[1]), "--to", "06009876")
    assert (moved["state"], moved["destination"]) == ("ready", "06009876")
    released = daemon.ctl_json(made, "queue", "release", "--all")
    assert [c["id"] for c in released["changed"]] == [ids[2]]
    refused = daemon.ctl(made, "discard", str(ids[2]), "--reason", "x", check=False)
    assert refused.returncode == 65 and b"only messages in fallback or held" in refused.stderr


def test_stats_ages_counts_per_destination_in_qshape_buckets(made):
    """stats --ages: every queued message in the youngest bucket, per destination."""
    submit(made, numbered_referral(1, "AGE"))
    submit(made, numbered_referral(2, "AGE"))
    (row,) = daemon.ctl_json(made, "stats", "--ages")
    assert (row["destination"], row["total"], row["buckets"]["5"]) == ("06005678", 2, 2)
    assert list(row["buckets"]) == ["5", "10", "20", "40", "80", "160", "320", "640", "1280",
                                    "1280+"]


def test_routes_set_bom_impossible_addresses_and_each_problem_once(made):
    """routes set changes one row in place and logs one change with the fields; a BOM is
    accepted; mllp://host:99999 is refused, each problem printed once."""
    folder = Path(made["routes"])
    before = (folder / "institutions.csv").read_text().splitlines()
    result = daemon.ctl(made, "routes", "set", "institution", "06009876", "--delivery",
                        "mllp://zis-zuid.example:2575", "--format", "hl7")
    after = (folder / "institutions.csv").read_text().splitlines()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1
    assert b"~ institution 06009876: delivery pull -> mllp://zis-zuid.example:2575" in result.stdout
    (last, *_) = daemon.ctl_json(made, "routes", "log")
    assert last["change"].startswith("~ institution 06009876: delivery pull")
    (folder / "referrers.csv").write_bytes(b"\xef\xbb\xbf" + (folder / "referrers.csv").read_bytes())
    assert daemon.ctl(made, "routes", "check").returncode == 0
    bad = daemon.ctl(made, "routes", "add", "institution", "06001111", "Nieuw", "hl7",
                     "mllp://host:99999", check=False)
    lines = bad.stderr.decode().splitlines()
    assert bad.returncode == 78 and len(lines) == 2, lines
    assert "port 99999 is outside 1..65535" in lines[0] and "1 problem(s)" in lines[1]


def test_fallback_reason_names_the_real_cause_and_follows_the_tables(made):
    """A referrer known but not linked to the institution is told apart from an unknown
    one, and fallback ls shows the reason that holds after a table change."""
    daemon.ctl(made, "routes", "set", "referrer", "01234567", "--institutions", "06009876")
    receipt = submit(made, EDI.read_bytes())
    assert receipt["state"] == "fallback"
    (row,) = daemon.ctl_json(made, "fallback", "ls")
    assert row["reason"].startswith("referrer AGB 01234567 is not linked to institution 06005678")
    daemon.ctl(made, "routes", "rm", "referrer", "01234567")
    (row,) = daemon.ctl_json(made, "fallback", "ls")
    assert row["reason"] == "referrer AGB 01234567 not in the table"


def test_show_prints_hl7_a_segment_a_line_in_a_terminal(made):
    """In a terminal show puts each HL7 segment on its own line; --raw keeps the CRs."""
    message = numbered_referral(1, "SHOW").replace(b"\n", b"\r")     # as senders send it
    receipt = submit(made, message)
    assert daemon.ctl(made, "show", str(receipt["id"])).stdout == message   # a pipe: as stored
    for extra, expect in (((), b"\r\nPID|"), (("--raw",), b"\rPID|")):    # the tty adds \r
        main, other = pty.openpty()
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "-c", made["config"],
                                    "show", str(receipt["id"]), *extra], stdout=other, cwd=ROOT)
        os.close(other)
        output = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        process.wait(timeout=30)
        os.close(main)
        assert output.startswith(b"MSH|") and expect in output, output[:200]


def test_purge_dry_run_lists_cases_and_warns_about_never_pulled(made):
    """purge --dry-run in text lists each case with its rule and warns about messages the
    institution never picked up; nothing is removed."""
    receipt = submit(made, EDI.read_bytes())
    later = time.strftime("%Y-%m-%d", time.localtime(time.time() + 400 * 86400))
    text = daemon.ctl(made, "purge", "--dry-run", "--as-of", later).stdout.decode()
    assert "would purge 1 message(s)" in text and "ZD100200300" in text
    assert f"WARNING: message {receipt['id']} (ZD100200300) is ready at 06005678" in text
    assert daemon.ctl_json(made, "status", "ZD100200300")[0]["state"] == "ready"


def test_init_refuses_one_port_twice_and_writes_known_hosts(tmp_path):
    """init refuses the same port for two listeners (one line, nothing written) and writes
    a known_hosts line for the SFTP host key."""
    result = daemon.ctl({"config": "-"}, "init", str(tmp_path / "a"), "--mllp-port", "3000",
                        "--https-port", "3000", check=False)
    assert result.returncode == 78 and result.stderr.count(b"\n") == 1
    assert b"listen.https_port = 3000 is also listen.mllp_port" in result.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    made = daemon.init(tmp_path / "b")
    line = Path(made["known_hosts"]).read_text()
    host_key = (tmp_path / "b" / "ssh" / "host_key.pub").read_text().split()
    assert line.startswith(f"[127.0.0.1]:{made['ports']['sftp']},") and host_key[1] in line


def test_identities_add_issue_csr_cert_and_rm(made, tmp_path):
    """identities add issues a certificate from the CA, signs a CSR, or pins a certificate
    from another CA (adding that CA); each is validated, audited and listed; rm removes."""
    issued = daemon.ctl_json(made, "identities", "add", "his", "his-dorp", "--agb", "01999999")
    cert = x509.load_pem_x509_certificate(Path(issued["cert"]).read_bytes())
    assert cert.subject.rfc4514_string() == "CN=his-dorp,O=gatewayd"
    assert oct(Path(issued["key"]).stat().st_mode & 0o777) == "0o600"
    key = tmp_path / "req.key"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-subj", "/CN=whatever", "-out",
                    str(tmp_path / "req.csr")], check=True, capture_output=True)
    signed = daemon.ctl_json(made, "identities", "add", "institution", "zis-noord", "--agb",
                             "06007777", "--pull", "06007777", "--csr", str(tmp_path / "req.csr"))
    verify = subprocess.run(["openssl", "verify", "-CAfile", made["ca"], signed["cert"]],
                            capture_output=True)
    assert verify.returncode == 0
    other = pki.Authority("Ziekenhuis eigen CA")
    foreign, _ = other.issue("zis-oost")
    pki.write(tmp_path, "other-ca", other.cert, other.key)
    pki.write(tmp_path, "zis-oost", foreign, None)
    daemon.ctl(made, "identities", "add", "institution", "zis-oost", "--agb", "06008888", "--pull",
               "06008888", "--cert", str(tmp_path / "zis-oost.pem"), "--ca",
               str(tmp_path / "other-ca.pem"))
    assert other.cert.public_bytes(serialization.Encoding.PEM) in Path(made["ca"]).read_bytes()
    listed = {i["name"]: i for i in daemon.ctl_json(made, "identities", "ls")}
    assert listed["zis-oost"]["pinned"] == pki.fingerprint(foreign)
    assert listed["his-dorp"]["expires"] > time.time() + 800 * 86400
    assert listed["his-brink"]["ssh_key"].startswith("SHA256:")
    for bad, why in ((("his", "His Dorp", "--agb", "01999999"), b"E-USAGE"),
                     (("his", "his-dorp", "--agb", "01999999"), b"exists already"),
                     (("his", "his-x", "--agb", "123"), b"E-CONFIG-VALUE"),
                     (("his", "his-y", "--agb", "01999999", "--cert", str(tmp_path / "zis-oost.pem")),
                      b"common name must be 'his-y'")):
        result = daemon.ctl(made, "identities", "add", *bad, check=False)
        assert result.returncode != 0 and why in result.stderr and \
            result.stderr.count(b"\n") == 1, result.stderr
    daemon.ctl(made, "identities", "rm", "his-dorp")
    assert "his-dorp" not in {i["name"] for i in daemon.ctl_json(made, "identities", "ls")}
    refused = daemon.ctl(made, "identities", "rm", "his-brink", check=False)
    assert b"deliver to sftp:his-brink" in refused.stderr
    actions = [r["action"] for r in daemon.ctl_json(made, "audit", "query", "--who", actor())]
    assert actions.count("identities-add") == 3 and actions.count("identities-rm") == 1


def test_store_problem_names_a_spool_short_of_space(made):
    """Below limits.min_free_mb free on the spool's file system the daemon reports that it
    cannot store (what /healthz answers 503 with); with the floor at 0 all is well."""
    from gateway import config, keys, routes
    from gateway.intake import Intake
    from gateway.metrics import Metrics
    from gateway.spool.store import Store
    daemon.configure(made, limits__min_free_mb=1024 * 1024)        # 1 TiB: more than is free
    settings = config.load(Path(made["config"]))
    store = Store(settings.paths_spool, time.time, keys.load(settings.paths_keys))
    metrics = Metrics(Intake(store, routes.load(settings.paths_routes), 1 << 20), time.time,
                      settings)
    assert metrics.store_problem().startswith("disk full: ")
    daemon.configure(made, limits__min_free_mb=0)
    metrics.settings = config.load(Path(made["config"]))
    assert metrics.store_problem() is None
    store.close()
