"""A real gatewayd for end-to-end tests: a setup from ``gatewayctl init`` on free ports,
the daemon as a process logging into the setup's folder, and gatewayctl against it."""

import json
import os
import subprocess
import sys
import time
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


def start(made: dict, log: Path, env: dict | None = None) -> subprocess.Popen:
    """gatewayd on ``made``'s configuration, once it says it is listening (``env`` is added
    to the environment)."""
    with open(log, "a") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.daemon", "-c", made["config"]],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    for _ in range(300):
        if "listening" in log.read_text():
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
