"""Several gatewayd nodes on one store, for the multi-node tests and ``bench/e2e.py --nodes``.

One ``gatewayctl init`` setup holds what every node shares — the key file, the TLS
material, the identities and the route tables — and ``store.url`` names the one
PostgreSQL database. Each node has a configuration file of its own next to the setup's
(``node1.toml``, …; node 0 uses the setup's own file): its own free ports, its own
spool folder (control socket and its lock) and SFTP folders, its own log and process.
"""

import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import daemon
from tests.helpers.fakes import free_port

PORTS = {"mllp": "mllp_port", "https": "https_port", "metrics": "metrics_port", "sftp": "sftp_port"}


class Node:
    """One gatewayd process on the configuration in ``made`` (a ``gatewayctl init`` result
    with this node's ports and spool); ``kills`` holds when (time.monotonic()) it was
    killed with SIGKILL."""

    def __init__(self, name: str, made: dict, log: Path):
        self.name, self.made, self.log = name, made, log
        self.process: subprocess.Popen | None = None
        self.kills: list[float] = []

    def start(self, env: dict | None = None) -> None:
        """Start it and return once it listens (its pid is known from the start: it may
        push before it listens)."""
        daemon.start(self.made, self.log, env, started=lambda process: setattr(
            self, "process", process))

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills.append(time.monotonic())

    def stop(self) -> None:
        """SIGTERM if it runs (SIGKILL if it does not stop within 30 s)."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running else None


def make(folder: Path, count: int, url: str, **settings) -> list[Node]:
    """``count`` nodes (not started) sharing a new setup in ``folder / "gw"`` whose store is
    at ``url`` (PostgreSQL; '' leaves SQLite in the spool, for one node only), with
    ``settings`` (as for ``daemon.configure``) in every node's configuration."""
    made = daemon.init(folder / "gw")
    if url:
        settings["store__url"] = f'"{url}"'
    daemon.configure(made, **settings)
    return [Node(f"node{number}", node_setup(made, number), folder / f"node{number}.log")
            for number in range(count)]


def node_setup(made: dict, number: int) -> dict:
    """``made`` for node ``number``: node 0 is ``made`` itself; another node gets a copy of
    its configuration file with free ports, a spool and SFTP folders of its own. Where the
    configuration names nodes (``node.name``), node N is ``nodeN``."""
    mine = made
    if number:
        config = Path(made["config"]).with_name(f"node{number}.toml")
        shutil.copyfile(made["config"], config)
        ports = {kind: free_port() for kind in PORTS}
        spool = config.parent / f"spool-{number}"
        mine = {**made, "config": str(config), "ports": ports, "spool": str(spool)}
        daemon.configure(mine, paths__spool=f'"{spool.name}"', paths__sftp=f'"sftp-{number}"',
                         **{f"listen__{PORTS[kind]}": port for kind, port in ports.items()})
    if "\n[node]\n" in Path(mine["config"]).read_text():      # a build with node names
        daemon.configure(mine, node__name=f'"node{number}"')
    return mine


def start_all(nodes: list[Node]) -> None:
    """Start the nodes one after the other (the first makes the store's tables)."""
    for node in nodes:
        node.start()


def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        node.stop()


def pids(nodes: list[Node]) -> dict[int, str]:
    """{pid: name} of the nodes running now."""
    return {node.pid: node.name for node in nodes if node.running}
