"""Several gatewayd processes on one machine (``process.workers``): the main one and its workers.

The main gatewayd holds the spool lock, binds every listener and serves them itself;
with ``process.workers = N`` it also starts N-1 worker processes (``Supervisor``): each
a fresh ``python -m gateway.daemon`` that inherits the MLLP, HTTPS and SFTP listening
sockets (descriptors 3, 4 and 5; ``$GATEWAY_WORKER`` names its slot, the parent's pid
and the descriptors) and accepts connections from the same queues as the main
process — the kernel hands each new connection to whichever process accepts first.
A worker only takes input: its own writer thread and group commit store what its
connections bring, and it serves pulls and SFTP sessions. Everything that must run
once — pushes, the purge, notifications, the control socket, the metrics port, systemd
notifications — stays in the main process. On SQLite the processes' write
transactions take turns (an flock of ``gateway.db-writers``, then ``BEGIN
IMMEDIATE``); message ids and the audit head are taken inside them (one chain), and
a control id another process committed first is refused by the UNIQUE key, so the
batch is planned again and stored once.

A worker dies with the main process (``PR_SET_PDEATHSIG``: SIGKILL; and it stops when
its stdin, a pipe from the main process, reaches its end). The main process restarts
a worker that ended (after 1 s, doubling to 30 s while it keeps dying within a minute),
has them reload after its own reload (a request in ``Shared``, SIGHUP to each that is
up, answered once each confirmed; ``Supervisor.reload``), and on SIGTERM stops listening,
sends SIGTERM to the workers and waits for them (SIGKILL after 60 s) before it ends.

Counters for /metrics: each worker writes its counters and ACK latencies to
``spool/workers/<slot>.json`` every second (a new worker in a slot continues that
slot's counts); the main process adds them to its own (``Shared``). A kill -9 of a
worker can lose its last second of counts — counts, never messages.
"""

import ctypes
import json
import os
import signal
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer, protocol, task
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from gateway.metrics import add_latency

ENVIRONMENT = "GATEWAY_WORKER"
LISTENERS = ("mllp", "https", "sftp")       # inherited as descriptors 3, 4, 5
FIRST_FD = 3
NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")   # systemd talks to main only
PR_SET_PDEATHSIG = 1
FIRST_PAUSE, LONGEST_PAUSE, STEADY = 1.0, 30.0, 60.0
STOP_SECONDS = 60.0
CONFIRM_SECONDS, CONFIRM_PAUSE = 10.0, 0.05
KEPT_REQUESTS = 64                 # reload requests a late worker can still read
PUBLISH_SECONDS = 1.0
log = Logger(namespace="gatewayd.workers")


@dataclass(frozen=True)
class Inherited:
    """What a worker process got from the main process: its slot, the main process's pid
    and the listening descriptors by name."""

    slot: int
    parent: int
    fds: dict
    generation: int = 0       # the reloads the main process had asked for when it started this one

    def describe(self) -> str:
        return f"{self.slot} {self.parent} {self.generation} " + " ".join(
            f"{n}:{fd}" for n, fd in self.fds.items())

    @classmethod
    def parse(cls, text: str) -> "Inherited":
        slot, parent, generation, *listeners = text.split()
        return cls(int(slot), int(parent), {n: int(fd) for n, fd in
                                            (item.split(":") for item in listeners)},
                   int(generation))


def inherited(environ=os.environ) -> Inherited | None:
    """This process's inheritance when it is a worker, else None (the main process)."""
    text = environ.get(ENVIRONMENT)
    return Inherited.parse(text) if text else None


def family(fd: int) -> int:
    """The address family of listening socket ``fd`` (IPv4 or IPv6)."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        return sock.family


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the main process ends; end now if it has already."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def watch_parent(reactor, stdin: int = 0) -> threading.Thread:
    """Stop the reactor when the pipe from the main process ends (it died or let go)."""
    def wait():
        while True:
            try:
                if not os.read(stdin, 4096):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        log.warn("the main gatewayd is gone; this worker stops")
        reactor.callFromThread(reactor.stop)
    thread = threading.Thread(target=wait, name="parent-watch", daemon=True)
    thread.start()
    return thread


def labelled(observer, slot: int):
    """``observer`` with the worker's slot in each line's system (``[gatewayd.mllp@w1]``)."""
    def label(event: dict) -> None:
        system = event.get("log_system") or event.get("log_namespace") or "-"
        observer({**event, "log_system": f"{system}@w{slot}"})
    return label


class _Worker(protocol.ProcessProtocol):
    """One worker process as the main process sees it."""

    def __init__(self, supervisor: "Supervisor", slot: int):
        self.supervisor, self.slot = supervisor, slot
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.supervisor.ended(self, reason.value)
        self.ended.callback(None)


def _signal(worker: _Worker, name: str) -> None:
    """Send signal ``name`` to ``worker`` unless it has just ended."""
    try:
        worker.transport.signalProcess(name)
    except (ProcessExitedAlready, ProcessLookupError):
        pass


class Supervisor:
    """The main process's workers: started, restarted, signalled and stopped together."""

    def __init__(self, reactor, config_path: Path, ports: dict, count: int, shared: "Shared",
                 environ=os.environ):
        self.reactor, self.config_path, self.ports = reactor, Path(config_path).absolute(), ports
        self.count, self.shared, self.environ = count, shared, environ
        self.generation = 0          # reloads asked of the workers so far
        self.asked: list = []        # the last ones: [generation, parts]
        self.running: dict[int, _Worker] = {}
        self.pauses = {slot: FIRST_PAUSE for slot in range(1, count)}
        self.started: dict[int, float] = {}
        self.stopping = False

    def start(self) -> None:
        for slot in range(1, self.count):
            self.spawn(slot)

    def spawn(self, slot: int) -> None:
        if self.stopping or slot in self.running:
            return
        fds = {name: FIRST_FD + i for i, name in enumerate(LISTENERS)}
        env = {k: v for k, v in self.environ.items() if k not in NOT_INHERITED}
        env[ENVIRONMENT] = Inherited(slot, os.getpid(), fds, self.generation).describe()
        child_fds = {0: "w", 1: 1, 2: 2}
        child_fds.update({fds[name]: self.ports[name].fileno() for name in LISTENERS})
        worker = _Worker(self, slot)
        transport = self.reactor.spawnProcess(
            worker, sys.executable, [sys.executable, "-m", "gateway.daemon", "-c",
                                     str(self.config_path)], env=env, childFDs=child_fds)
        self.running[slot] = worker
        self.started[slot] = self.reactor.seconds()
        log.info("worker {slot} started: pid {pid}", slot=slot, pid=transport.pid)

    def ended(self, worker: _Worker, status) -> None:
        slot = worker.slot
        self.running.pop(slot, None)
        if self.stopping:
            log.info("worker {slot} stopped", slot=slot)
            return
        lived = self.reactor.seconds() - self.started.get(slot, 0)
        pause = FIRST_PAUSE if lived >= STEADY else self.pauses[slot]
        self.pauses[slot] = min(pause * 2, LONGEST_PAUSE)
        log.error("worker {slot} ended ({status}); starting it again in {pause:g} s",
                  slot=slot, status=str(status).strip(" .")[:120], pause=pause)
        self.reactor.callLater(pause, self.spawn, slot)

    def pids(self) -> dict[int, int]:
        return {slot: w.transport.pid for slot, w in self.running.items() if w.transport.pid}

    def send(self, name: str) -> None:
        """Send signal ``name`` ("HUP", "TERM", "KILL") to every running worker."""
        for worker in list(self.running.values()):
            _signal(worker, name)

    def reload(self, parts: tuple, result: dict) -> defer.Deferred:
        """Have every running worker reload ``parts`` (what the main process has just
        reloaded, its ``result``); fire with ``result`` once each has published that it did,
        its refusals added ("worker N: why"), or with a refusal naming those that have not
        within CONFIRM_SECONDS. SIGHUP goes only to a worker that has published from its
        current pid (signal handler in place), again every half second while it is late;
        one still starting reads the request itself once it is up."""
        if self.count < 2:
            return defer.succeed(result)
        self.generation += 1
        generation, asked = self.generation, dict(self.running)
        self.asked = (self.asked + [(generation, list(parts))])[-KEPT_REQUESTS:]
        self.shared.ask_reload(generation, self.asked)
        done, rounds = defer.Deferred(), [0]

        def check():
            late = []
            for slot, worker in asked.items():
                if self.running.get(slot) is not worker:
                    continue              # ended meanwhile: its successor loads the files
                status = self.shared.status(slot)
                up = status.get("pid") == worker.transport.pid
                if not up or status.get("reloaded", -1) < generation:
                    late.append(slot)
                    if up and rounds[0] % 10 == 0:
                        _signal(worker, "HUP")
                    continue
                for part, why in status.get("refused", {}).items():
                    result["refused"].setdefault(part, f"worker {slot}: {why}")
            if not late:
                done.callback(result)
            elif rounds[0] * CONFIRM_PAUSE >= CONFIRM_SECONDS:
                result["refused"]["workers"] = ", ".join(
                    f"worker {slot}" for slot in late) + " did not confirm the reload"
                done.callback(result)
            else:
                rounds[0] += 1
                self.reactor.callLater(CONFIRM_PAUSE, check)
        check()
        return done

    def stop(self) -> defer.Deferred:
        """Stop the main process's listeners, SIGTERM the workers, and fire when all ended
        (the ones still running after STOP_SECONDS are killed)."""
        self.stopping = True
        for port in self.ports.values():
            port.stopListening()
        waiting = [w.ended for w in self.running.values()]
        self.send("TERM")
        if not waiting:
            return defer.succeed(None)
        late = self.reactor.callLater(STOP_SECONDS, self.send, "KILL")
        done = defer.DeferredList(waiting)
        done.addBoth(lambda _: late.active() and late.cancel())
        return done


class Shared:
    """What the main process and its workers tell each other through small files in
    ``folder`` (one a slot, replaced whole by rename): the workers' counters for
    /metrics, the reload requests and each worker's reload status."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, slot: int) -> Path:
        return self.folder / f"{slot}.json"

    def publish(self, slot: int, metrics, status: dict) -> None:
        """Write ``metrics``' counters and latencies, and the worker's ``status`` (the
        reload it has done), as slot ``slot``'s."""
        self._write(self.path(slot), {
            "counters": [[name, list(label), count]
                         for (name, label), count in metrics.counters.items()],
            "latency": metrics.latency, "status": status})

    def status(self, slot: int) -> dict:
        try:
            return json.loads(self.path(slot).read_text()).get("status", {})
        except (OSError, ValueError):
            return {}

    def ask_reload(self, generation: int, asked: list) -> None:
        """The main process: reloads up to number ``generation`` are asked for (``asked``:
        the last ones, [generation, parts])."""
        self._write(self.folder / "reload", {"generation": generation, "asked": asked})

    def reload_asked(self, after: int, everything: tuple) -> tuple[int, tuple]:
        """A worker that has done the reloads up to ``after``: the last one asked for and
        the parts to reload to catch up (``everything`` if it is too far behind)."""
        try:
            data = json.loads((self.folder / "reload").read_text())
            generation, asked = int(data["generation"]), data["asked"]
        except (OSError, ValueError, KeyError, TypeError):
            return after, ()
        if generation <= after:
            return after, ()
        if not asked or asked[0][0] > after + 1:
            return generation, everything
        return generation, tuple(dict.fromkeys(p for g, parts in asked if g > after for p in parts))

    def _write(self, path: Path, data: dict) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)

    def resume(self, slot: int, metrics) -> None:
        """Start ``metrics`` from what slot ``slot`` published last (a restarted worker)."""
        counters, latency = self._read(self.path(slot))
        metrics.counters.update(counters)
        add_latency(metrics.latency, latency)

    def gather(self, slots) -> tuple[Counter, dict]:
        """The counters and latencies of ``slots`` added up."""
        counters, latency = Counter(), {}
        for slot in slots:
            found, times = self._read(self.path(slot))
            counters.update(found)
            add_latency(latency, times)
        return counters, latency

    def forget(self) -> None:
        """Remove the files of an earlier run (the main process, at its start)."""
        for path in [*self.folder.glob("*.json"), self.folder / "reload"]:
            path.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> tuple[Counter, dict]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return Counter(), {}
        return Counter({(name, tuple(label)): count for name, label, count in data["counters"]}), \
            data["latency"]


def serve_as_worker(reactor, gateway, me: Inherited, shared: Shared, everything: tuple) -> None:
    """The worker's part once its listeners are adopted: stop when the main process's
    pipe ends, publish counters every second, and on SIGHUP (and once at the start) do the
    reloads the main process asked for (it has recorded the changes), and publish that."""
    watch_parent(reactor)
    shared.resume(me.slot, gateway.metrics)
    status = {"pid": os.getpid(), "reloaded": me.generation, "refused": {}}
    publish = lambda: shared.publish(me.slot, gateway.metrics, status)   # noqa: E731

    def reload():
        generation, parts = shared.reload_asked(status["reloaded"], everything)

        def done(result):
            status.update(refused=result["refused"] if result else {}, reloaded=generation)
            publish()
        reloading = gateway.reload(parts, actor="reload", recorded=True) if parts else \
            defer.succeed(None)
        reloading.addCallback(done).addErrback(lambda failure: log.failure(
            "reload in worker failed", failure))
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    reactor.callWhenRunning(reload)
    loop = task.LoopingCall(publish)
    loop.clock = reactor
    reactor.callWhenRunning(loop.start, PUBLISH_SECONDS, now=False)
