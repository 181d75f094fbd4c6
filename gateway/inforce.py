"""The route tables and identities in force: kept in the store, the same on every node.

The parts are the route table files (``institutions.csv``, ``referrers.csv``,
``mailboxes.csv``; their text as the administrator wrote it) and the identities
(``identities.toml``: ``gateway.identities.render``'s canonical TOML, SSH keys
written out). The files and ``gatewayd.toml`` stay how administrators edit,
import and export them: ``publish`` takes a node's validated files into the
store in one transaction with their route changes and audit records (recorded
once, by the node or command that made the change); ``load`` reads the parts
back as a ``Snapshot`` that a node puts in force. ``begin`` is what a node does
at its start: seed the store from its files when it has no tables yet; on
SQLite (one node) the files win as before; on PostgreSQL the store wins and
files that differ are reported. ``reroute_all`` routes the whole fallback queue
again a page at a time (after a change, on the node that made it).
"""

from dataclasses import dataclass, replace
from pathlib import Path

from gateway import audit, identities, routes
from gateway.errors import ConfigError
from gateway.routes import editing
from gateway.routes.tables import TEXTS as ROUTE_PARTS
from gateway.spool import inforce as sql
from gateway.spool.store import StateError

IDENTITIES = "identities.toml"
PARTS = (*ROUTE_PARTS, IDENTITIES)
WHERE = Path("tables in force")            # how problems in the store's copy are named
PAGE = 200                                 # fallback messages routed again per query


@dataclass(frozen=True)
class Snapshot:
    """The parts of one version and what they mean (None for a part not stored)."""

    version: int
    texts: dict
    tables: routes.Tables | None
    identities: tuple | None


@dataclass(frozen=True)
class Published:
    version: int                      # in force after the change
    parts: tuple[str, ...]            # the parts that changed
    route_changes: list[str]          # as recorded (empty when not recorded)
    identities_changed: list[str]     # names of identities added, removed or changed


def route_texts(folder: Path) -> dict:
    """The route table files in ``folder`` as parts; raise TableError (file:line) when
    they do not load."""
    texts, problems = routes.read_texts(folder)
    routes.parse(texts, folder, problems)
    return texts


def identity_texts(settings) -> dict:
    """The identities of a configuration as a part; raise ConfigError when an SSH key
    file is unusable."""
    return {IDENTITIES: identities.render(identities.with_keys(settings.identities,
                                                               settings.base))}


def snapshot(version: int, texts: dict) -> Snapshot:
    """What stored ``texts`` (part -> text) mean; raise TableError or ConfigError."""
    tables = routes.parse(texts, WHERE) if all(p in texts for p in ROUTE_PARTS) else None
    found = identities.from_text(texts[IDENTITIES], str(WHERE / IDENTITIES)) \
        if texts.get(IDENTITIES) is not None else None
    return Snapshot(version, dict(texts), tables, found)


def load(db) -> Snapshot:
    """The tables in force in the store behind ``db``; raise TableError or ConfigError
    when the stored text does not load (the caller keeps what it has)."""
    version, parts = sql.read(db)
    return snapshot(version, {name: part.content for name, part in parts.items()})


def publish(store, texts: dict, actor: str, record: bool = True, say_unchanged: bool = False,
            events: list = (), told: frozenset = frozenset()) -> Published:
    """Make ``texts`` (part -> validated text) the tables in force, in one transaction:
    with ``record``, each route change as a route change with its audit record and
    changed identities as one audit record (``say_unchanged``: a "(no change)" row when
    the route tables stayed as they were); ``events`` are recorded besides (when
    they already name every changed identity — ``told`` — no second record does)."""
    with store.db.transaction():
        claimed = sql.claim(store.db)
        before = {name: part.content for name, part in claimed[1].items()}
        changes, names = _differences(before, texts) if record else ([], [])
        if say_unchanged and not changes:
            changes = ["(no change)"]
        extra = list(events)
        if set(names) - told:
            extra.append(audit.Event(actor, "identities-change",
                                     detail=f"changed: {', '.join(names)}"[:200]))
        version = sql.put(store.db, store.ring, claimed, texts, actor, store.clock(), changes,
                          extra)
    changed = tuple(p for p in texts if p not in before or before[p] != texts[p])
    return Published(version, changed, [c for c in changes if c != "(no change)"], names)


def _differences(before: dict, texts: dict) -> tuple[list[str], list[str]]:
    """(route changes, changed identity names) from the stored ``before`` to ``texts``;
    nothing for a part the store did not have (seeding is no change)."""
    changes, names = [], []
    if all(p in texts for p in ROUTE_PARTS) and all(p in before for p in ROUTE_PARTS):
        changes = editing.describe(_tables(before), routes.parse(texts, WHERE))
    if IDENTITIES in texts and before.get(IDENTITIES) is not None:
        old = {i.name: i for i in identities.from_text(before[IDENTITIES])}
        new = {i.name: i for i in identities.from_text(texts[IDENTITIES])}
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    return changes, names


def _tables(texts: dict) -> routes.Tables:
    """The stored tables, or empty ones if they do not load (every row then shows as added)."""
    try:
        return routes.parse(texts, WHERE)
    except routes.TableError:
        return routes.Tables({}, {})


def begin(store, settings, warn, actor: str = "start", follower: bool = False) -> Snapshot:
    """At a node's start: the tables to put in force. Parts the store lacks are seeded from
    the node's files (validated); on SQLite the files win (one node, as always) — except in
    a ``follower`` (a worker process of that node: its main process put the tables in
    force, and files edited since then wait for a reload); on PostgreSQL the store's win
    and ``warn(line)`` is told once when the node's files differ or do not load (``actor``
    is named as who wrote what was seeded). Raise TableError or ConfigError when files that
    are needed do not load."""
    version, parts = sql.read(store.db)
    stored = {name: part.content for name, part in parts.items()}
    sqlite = store.db.backend == "sqlite" and not follower
    try:
        files = {**route_texts(settings.paths_routes), **identity_texts(settings)}
    except ConfigError as exc:             # TableError too
        if sqlite or any(p not in stored for p in PARTS):
            raise
        warn(f"this node's files do not load ({exc}); the tables in force in the store "
             f"(version {version}) are in force here")
        return snapshot(version, stored)
    missing = {p: files[p] for p in PARTS if p not in stored or (sqlite and stored[p] != files[p])}
    if missing:
        version = publish(store, missing, actor, record=False).version
        stored.update(missing)
    differ = [p for p in PARTS if stored[p] != files[p]]
    if differ:
        warn(f"this node's {', '.join(differ)} differ from the tables in force in the store "
             f"(version {version}); the store's are in force here (gatewayctl reload puts this "
             "node's files in force on every node)")
    return snapshot(version, stored)


def in_force(settings, found: Snapshot):
    """``settings`` with the identities in force (the store's) instead of the file's."""
    if found.identities is None:
        raise ConfigError("the store holds no identities", code="E-CONFIG-IDENTITY")
    return replace(settings, identities=found.identities)


def tables_for(store, settings) -> routes.Tables:
    """The route tables a command uses: on PostgreSQL the store's (those in force on every
    node) once it has them; else the files' (SQLite: as always)."""
    if store.db.backend != "sqlite":
        found = load(store.db)
        if found.tables is not None:
            return found.tables
    return routes.load(settings.paths_routes)


def reroute_all(intake, actor: str, page: int = PAGE) -> list:
    """Route every message in fallback again with ``intake``'s tables, ``page`` at a time
    (each message its own transaction); receipts of those that moved."""
    moved, after = [], 0
    while rows := sql.fallback_after(intake.store.db, after, page):
        after = rows[-1]["id"]
        for row in rows:
            try:
                moved += intake.reroute_rows([row], actor)
            except StateError:          # it left fallback meanwhile (an operator, a purge)
                continue
    return moved
