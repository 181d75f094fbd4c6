"""A private PostgreSQL server for the outage tests, and scratch schemas for benchmarks: its own data folder and port, so a
test can stop and start it without touching the machine's shared server.

Made with the installed server's ``initdb`` and ``pg_ctl`` (trust authentication,
127.0.0.1 only, fsync on as in production), run as the ``postgres`` user when the
tests run as root. ``Cluster.available()`` says why there is none, if so.
"""

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

from tests.helpers.fakes import free_port


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Cluster:
    """A server in a new folder under /tmp (the postgres user must reach it) on a free
    port; ``url`` reaches its ``postgres`` database. ``remove()`` stops it and deletes it."""

    def __init__(self):
        self.bin = _binaries()
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="gatewayd-pg-")), free_port()
        self.data = self.folder / "data"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def available() -> str | None:
        """None when a private server can be made here, else why not."""
        if _binaries() is None:
            return "no PostgreSQL server binaries (initdb) installed"
        if os.geteuid() == 0:
            try:
                import pwd
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root without a postgres user"
        return None

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120, cwd="/")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l",
                  str(self.folder / "server.log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop")

    def terminate(self, application: str) -> int:
        """Terminate the server's connections whose application_name is ``application``
        (``pg_terminate_backend``); how many there were."""
        import psycopg
        with psycopg.connect(self.url, autocommit=True) as connection:
            return len(connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                "application_name = %s", (application,)).fetchall())

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_schema(url: str):
    """A new schema in the database at ``url`` for a benchmark's store, dropped afterwards;
    yields the URL that puts it first on the search path."""
    import psycopg
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {name}")
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options={quote(f'-csearch_path={name}')}"
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {name} CASCADE")
