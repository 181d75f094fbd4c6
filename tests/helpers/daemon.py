"""A real gatewayd for end-to-end tests: a setup from ``gatewayctl init`` on free ports,
the daemon as a process logging into the setup's folder, gatewayctl against it, and its
``/healthz``."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.fakes import ROOT, free_port


def init(folder: Path) -> dict:
    """``gatewayctl init --json`` on free local ports; what it printed."""
    return json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "init", str(folder), "--mllp-port", str(free_port()),
         "--https-port", str(free_port()), "--metrics-port", str(free_port()),
         "--sftp-port", str(free_port()), "--json"], capture_output=True, check=True,
        cwd=ROOT).stdout)


def start(made: dict, log: Path, env: dict | None = None, started=None) -> subprocess.Popen:
    """gatewayd on ``made``'s configuration, once it says it is listening (``env`` is added
    to the environment; ``started(process)`` is called as soon as it runs); ``log`` may
    hold earlier runs (a restart)."""
    earlier = log.read_text().count("listening") if log.exists() else 0
    with open(log, "a") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    if started:
        started(process)
    for _ in range(300):
        if log.read_text().count("listening") > earlier:
            return process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    pytest.fail("gatewayd did not start: " + log.read_text())


def ctl(made: dict, *args: str, check: bool = True, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """gatewayctl with ``made``'s configuration."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", "-c", made["config"], *args],
                          input=stdin, capture_output=True, check=check, cwd=ROOT, timeout=60)


def ctl_json(made: dict, *args: str):
    return json.loads(ctl(made, *args, "--json").stdout)


def configure(made: dict, **settings: int) -> None:
    """Change settings in ``made``'s configuration file: ``limits__max_message_bytes=N``."""
    config = Path(made["config"])
    text = config.read_text()
    for key, value in settings.items():
        section, name = key.split("__")
        head = f"[{section}]\n"
        start = text.index(head)
        line = text.index(f"\n{name} = ", start)
        end = text.index("\n", line + 1)
        text = text[:line] + f"\n{name} = {value}" + text[end:]
    config.write_text(text)


def health(made: dict) -> tuple[int, str]:
    """``/healthz`` of the daemon on ``made``'s metrics port: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{made['ports']['metrics']}/healthz",
                                    timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def until(condition, seconds: float = 20.0, pause: float = 0.2):
    """``condition()``'s first true value within ``seconds`` (polled), else its last value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(pause)
    return condition()


def wait_for(condition, what: str, seconds: float = 20.0):
    """``condition()``'s first true value within ``seconds``; the test fails naming ``what``
    when there is none."""
    found = until(condition, seconds, pause=0.05)
    assert found, f"timed out after {seconds} s waiting for {what}"
    return found
