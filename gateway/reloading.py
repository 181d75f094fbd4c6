"""Reloading a running gateway: route tables, identities, TLS certificates and the key
file, from the files on SIGHUP or at gatewayctl's word, each one that fails to load refused
(the old one kept). Route tables and identities go from the files into the store and are
put in force from there (``gateway.inforce``); every node follows the store's version
(``gateway.tablewatch``), so the tables in force are the same on every node.

``Reloads`` is a part of ``gateway.daemon.Gateway``.
"""

import dataclasses

from twisted.internet import defer, reactor
from twisted.logger import Logger

from gateway import audit, config, inforce, keys, systemd, tablewatch
from gateway.errors import GatewayError

RELOADABLE = ("routes", "identities", "certificates", "keys")
PART_NAMES = {"routes": "route tables", "identities": "identities",
              "certificates": "certificates", "keys": "keys"}
log = Logger(namespace="gatewayd")


class Reloads:
    """What reloads a Gateway and keeps it on the store's tables in force."""

    def reload(self, parts: tuple = RELOADABLE, actor: str = "reload",
               recorded: bool = False, reroute: bool = False) -> defer.Deferred:
        """Reload ``parts`` (route tables, identities, certificates, keys) from the files;
        keep whatever fails to load. Route tables and identities go into the store (the
        tables in force on every node) with their changes recorded as by ``actor``, unless
        the caller ``recorded`` them already (gatewayctl, which says whether to
        ``reroute``). Gives what was reloaded, what was refused and why, and how many
        messages left fallback (routed again off the reactor, here only); with worker
        processes (``self.supervisor``), once they have reloaded too, their refusals added."""
        done = self._reload_here(parts, actor, recorded, reroute)
        if self.supervisor is None:
            return done
        return done.addCallback(lambda result: self.supervisor.reload(parts, result))

    def _reload_here(self, parts: tuple, actor: str, recorded: bool,
                     reroute: bool) -> defer.Deferred:
        systemd.notify("RELOADING=1")
        try:
            settings = config.load(self.config_path)
        except GatewayError as exc:
            log.error("reload refused, configuration kept: {error}", error=str(exc))
            systemd.notify("READY=1")
            return defer.succeed({"reloaded": [], "refused": {"configuration": str(exc)},
                                  "moved": 0})
        reloaders = {"routes": self._reload_tables, "identities": self._reload_identities,
                     "certificates": lambda s, *_: self.tls.replace(self._tls_options(
                         dataclasses.replace(s, identities=self.settings.identities))),
                     "keys": self._reload_keys}
        result = {"reloaded": [], "refused": {}, "moved": 0}
        for part in parts:
            try:
                reroute = bool(reloaders[part](settings, actor, recorded)) or reroute
                result["reloaded"].append(part)
                log.info("reloaded {name}", name=PART_NAMES[part])
            except GatewayError as exc:
                result["refused"][part] = str(exc)
                log.error("reload of {name} refused, old kept: {error}", name=PART_NAMES[part],
                          error=str(exc))
        systemd.notify("READY=1")
        if not reroute or not self.main_process or "routes" in result["refused"]:
            return defer.succeed(result)
        return self.rerouter.run(actor).addCallback(
            lambda moved: {**result, "moved": len(moved)})

    def _reload_identities(self, settings, actor: str, recorded: bool) -> None:
        """The configuration's identities into the store (the main process), then the
        store's in force."""
        if self.main_process:
            inforce.publish(self.store, inforce.identity_texts(settings), actor,
                            record=not recorded)
        self.settings = self.metrics.settings = dataclasses.replace(
            settings, identities=self.settings.identities)
        self.take(inforce.load(self.store.db))

    def _reload_keys(self, settings, actor: str, recorded: bool) -> None:
        ring, old = keys.load(settings.paths_keys), self.store.ring
        if ring != old:
            self.store.ring = ring
            try:
                self.store.check_keys()
            except GatewayError:
                self.store.ring = old
                raise
            self.writer.store.ring = ring
            if not recorded:
                self.store.record([audit.Event(actor, "keys-reload",
                                               detail=f"current key {ring.current}")])

    def _reload_tables(self, settings, actor: str, recorded: bool) -> bool:
        """The route table files into the store (the main process; each change recorded line
        by line as by ``actor``), then the store's tables in force; whether they changed here."""
        if self.main_process:
            published = inforce.publish(self.store, inforce.route_texts(settings.paths_routes),
                                        actor, record=not recorded)
            for change in published.route_changes:
                log.info("route change by {actor}: {change}", actor=actor, change=change)
        return self.take(inforce.load(self.store.db))[0]

    def take(self, found: inforce.Snapshot) -> tuple[bool, bool]:
        """Put the store's tables and identities of ``found`` in force (an older version than
        the one in force is ignored); whether (the route tables, the identities) changed.
        Raise ConfigError (the identities kept) when an identity's SSH key is unusable."""
        if found.version < self.tables_version:
            return False, False
        tables = found.tables is not None and found.tables != self.intake.tables
        if tables:
            self.intake.tables = self.writer.tables = found.tables
        self.tables_version = found.version
        new = {i.name: i for i in found.identities or ()}
        people = found.identities is not None and new != self.identities
        if people:
            settings = dataclasses.replace(self.settings, identities=found.identities)
            self._update_sftp(settings)
            pins = {i.cert_sha256 for i in self.settings.identities} != \
                {i.cert_sha256 for i in found.identities}
            self.identities.clear()
            self.identities.update(new)
            self.settings = self.metrics.settings = settings
            if pins:
                self.tls.replace(self._tls_options(settings))
        if tables or people:
            log.info("in force from the store (version {version}): {parts}",
                     version=found.version, parts=" and ".join(
                         name for name, done in (("route tables", tables),
                                                 ("identities", people)) if done))
        return tables, people

    def follow(self) -> None:
        """Take the tables in force that another node (or gatewayctl) put in the store."""
        self.watch = tablewatch.Watch(reactor, self.store.db.target,
                                      self.settings.store_tables_poll_seconds,
                                      lambda: self.tables_version, self.take)
        self.watch.start()
