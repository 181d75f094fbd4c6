"""gatewayctl over the engine, as an administrator runs it: init, submit, status,
queue, fallback, routes — with -c or GATEWAY_CONFIG."""

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.cli.common import actor

ROOT = Path(__file__).parent.parent
REFERRAL = ROOT / "fixtures" / "medvri" / "referral-crlf.edi"


def ctl(*args, env_config: Path | None = None, stdin: bytes = b""):
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    if env_config:
        env["GATEWAY_CONFIG"] = str(env_config)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin, env=env,
                          capture_output=True, cwd=ROOT, timeout=60)


def test_init_submit_status_queue(tmp_path):
    """init writes a working setup; submit, status and queue ls work on it, JSON or tables."""
    made = json.loads(ctl("init", str(tmp_path / "gw"), "--json").stdout)
    config = Path(made["config"])
    assert config.is_file() and (tmp_path / "gw" / "routes" / "referrers.csv").is_file()
    receipt = json.loads(ctl("-c", str(config), "submit", str(REFERRAL), "--json").stdout)
    assert (receipt["zd_number"], receipt["state"], receipt["duplicate"]) == \
        ("ZD100200300", "ready", False)
    again = json.loads(ctl("submit", str(REFERRAL), "--json", env_config=config).stdout)
    assert again["id"] == receipt["id"] and again["duplicate"]
    (status,) = json.loads(ctl("status", "ZD100200300", "--json", env_config=config).stdout)
    assert [h["state"] for h in status["history"]] == ["received", "ready"]
    table = ctl("queue", "ls", env_config=config).stdout.decode()
    assert table.splitlines()[0].split()[:4] == ["id", "received", "age", "state"]
    assert "ZD100200300" in table


def test_init_refuses_to_overwrite(tmp_path):
    """A second init in the same folder is refused and leaves the file alone."""
    ctl("init", str(tmp_path))
    result = ctl("init", str(tmp_path))
    assert result.returncode == 78 and b"E-CONFIG-EXISTS" in result.stderr


def test_routes_check_reports_file_and_line(tmp_path):
    """routes check prints each problem as file:line and exits 78; explain shows the route."""
    config = Path(json.loads(ctl("init", str(tmp_path), "--json").stdout)["config"])
    explain = json.loads(ctl("routes", "explain", str(REFERRAL), "--json", env_config=config).stdout)
    assert (explain["destination"], explain["format"], explain["fallback"]) == ("06005678", "xml", None)
    with open(tmp_path / "routes" / "institutions.csv", "a") as handle:
        handle.write("06001111,Nieuw,pdf,pull,\n")
    result = ctl("routes", "check", env_config=config)
    assert result.returncode == 78
    assert f"{tmp_path / 'routes' / 'institutions.csv'}:5: format 'pdf'".encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_missing_configuration_is_one_line(tmp_path):
    """Without -c or GATEWAY_CONFIG an engine command says how to get a configuration."""
    result = ctl("queue", "ls")
    assert result.returncode == 78
    assert result.stderr.decode().count("\n") == 1 and b"gatewayctl init" in result.stderr


def test_bad_submit_is_rejected_and_listed(tmp_path):
    """Unreadable input exits 65 with one line and shows up in the rejected queue."""
    config = Path(json.loads(ctl("init", str(tmp_path), "--json").stdout)["config"])
    result = ctl("submit", "-", env_config=config, stdin=b"UNB+UNOA:1+x'")
    assert result.returncode == 65 and result.stderr.startswith(b"gatewayctl: error E-")
    rows = json.loads(ctl("queue", "ls", "--state", "rejected", "--json", env_config=config).stdout)
    assert len(rows) == 1 and rows[0]["reason"].startswith("E-")


def test_route_changes_are_logged_and_reroute_fallback(tmp_path):
    """Removing and re-adding a referrer is logged; the waiting referral leaves fallback."""
    config = Path(json.loads(ctl("init", str(tmp_path), "--json").stdout)["config"])
    ctl("routes", "rm", "referrer", "01234567", env_config=config)
    receipt = json.loads(ctl("submit", str(REFERRAL), "--json", env_config=config).stdout)
    assert receipt["state"] == "fallback"
    result = ctl("routes", "add", "referrer", "01234567", "M. Visser", "06005678",
                 "--answer-address", "sftp:his-brink", env_config=config)
    assert b"1 message(s) moved out of fallback" in result.stdout
    log = json.loads(ctl("routes", "log", "--json", env_config=config).stdout)
    assert [entry["change"] for entry in log] == ["+ referrer 01234567", "- referrer 01234567"]
    assert all(entry["actor"] == actor() for entry in log)     # cli:<the user running it>


def test_submit_as_an_identity_obeys_its_mandates(tmp_path):
    """submit --as sends with that identity's mandates: another practice's referral is refused."""
    config = Path(json.loads(ctl("init", str(tmp_path), "--json").stdout)["config"])
    refused = ctl("submit", str(REFERRAL), "--as", "his-hoogveld", env_config=config)
    assert refused.returncode == 65 and b"E-NOT-MANDATED" in refused.stderr
    accepted = json.loads(ctl("submit", str(REFERRAL), "--as", "his-brink", "--json",
                              env_config=config).stdout)
    assert accepted["state"] == "ready"
    unknown = ctl("submit", str(REFERRAL), "--as", "nobody", env_config=config)
    assert unknown.returncode == 78 and b"E-CONFIG-IDENTITY" in unknown.stderr
