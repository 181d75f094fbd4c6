"""Both store backends for the tests: SQLite in a folder, and a real PostgreSQL server.

PostgreSQL tests run against the server at ``GATEWAY_TEST_POSTGRES`` (default: the
local one, ``postgresql://postgres@127.0.0.1:5432/postgres``) in a database of
their own, made for this run under a unique name and dropped at its end; each test
gets a schema of its own in it (a folder's store: reopening the folder reopens the
schema, as a restart would). Without a reachable server the PostgreSQL tests are
skipped and one line at the end says so; with ``GATEWAY_REQUIRE_POSTGRES=1`` (CI)
an unreachable server fails the run instead.
"""

import os
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

ADMIN_URL = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRED = os.environ.get("GATEWAY_REQUIRE_POSTGRES") == "1"


class Server:
    """This run's PostgreSQL database, and a schema per store folder in it."""

    def __init__(self):
        import psycopg
        self.psycopg = psycopg
        self.name = f"gatewayd_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.base = ADMIN_URL.rsplit("/", 1)[0] + "/" + self.name
        self.schemas: dict[str, str] = {}

    def url(self, folder: Path | str) -> str:
        """The URL of ``folder``'s store: its own schema (made on first use)."""
        key = str(Path(folder).resolve())
        if key not in self.schemas:
            schema = f"s{len(self.schemas)}_{uuid.uuid4().hex[:6]}"
            with self.psycopg.connect(self.base, autocommit=True) as connection:
                connection.execute(f"CREATE SCHEMA {schema}")
            self.schemas[key] = schema
        return f"{self.base}?options={quote(f'-csearch_path={self.schemas[key]}')}"

    def run(self, sql: str, params=()) -> list:
        """``sql`` on this run's database as a superuser (e.g. pg_terminate_backend)."""
        with self.psycopg.connect(self.base, autocommit=True) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def drop(self) -> None:
        with self.psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


_STATE: dict = {}


def _server():
    """The run's Server, or the reason there is none (reached once)."""
    if "server" not in _STATE:
        try:
            _STATE["server"] = Server()
        except Exception as exc:  # noqa: BLE001 - any reason means: no server here
            _STATE["server"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    return _STATE["server"]


def pytest_sessionstart(session):
    if REQUIRED and isinstance(_server(), str):
        pytest.exit(f"GATEWAY_REQUIRE_POSTGRES=1 but no PostgreSQL at {ADMIN_URL}: {_server()}",
                    returncode=1)


def pytest_sessionfinish(session):
    if isinstance(_STATE.get("server"), Server):
        _STATE["server"].drop()


def pytest_terminal_summary(terminalreporter):
    server = _STATE.get("server")
    if isinstance(server, str):
        terminalreporter.write_line(f"PostgreSQL tests skipped: no server at {ADMIN_URL} ({server})",
                                    yellow=True)


@pytest.fixture
def postgres() -> Server:
    """The run's PostgreSQL database (the test is skipped when there is no server)."""
    server = _server()
    if isinstance(server, str):
        pytest.skip(f"no PostgreSQL server: {server}")
    return server


class Backend:
    """Opens stores of one backend: ``backend.store(folder, clock, ring)``; ``url(folder)``
    is the ``store.url`` for a configuration ('' for SQLite)."""

    def __init__(self, name: str, server: Server | None):
        self.name, self.server = name, server

    def url(self, folder) -> str:
        return self.server.url(folder) if self.server else ""

    def store(self, folder, clock, ring, **options):
        from gateway.spool.store import Store
        return Store(folder, clock, ring, url=self.url(folder), **options)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> Backend:
    """Each backend in turn (the PostgreSQL turn is skipped without a server)."""
    if request.param == "sqlite":
        return Backend("sqlite", None)
    return Backend("postgresql", request.getfixturevalue("postgres"))


@pytest.fixture
def pg_backend(postgres) -> Backend:
    """The PostgreSQL backend alone (for tests of several nodes on one database)."""
    return Backend("postgresql", postgres)


@pytest.fixture
def clock():
    """A reactor clock at a fixed, realistic time (2027)."""
    from twisted.internet import task
    clock = task.Clock()
    clock.advance(1_800_000_000)
    return clock


@pytest.fixture
def cluster():
    """A private PostgreSQL server the test may stop and start (skipped where none can be
    made, a failure where the PostgreSQL tests are required); stopped and removed
    afterwards, whatever happened."""
    from tests.helpers.pgcluster import Cluster
    problem = Cluster.available()
    if problem:
        (pytest.fail if REQUIRED else pytest.skip)(problem)
    made = Cluster()
    made.start()
    yield made
    made.remove()
