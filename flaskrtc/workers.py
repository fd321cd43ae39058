"""``[general] workers`` > 1: a parent process that runs N servers on the same ports.

Each worker is a whole flaskrtc (HTTPS, /ws, TURN) started as ``flaskrtc ... --worker I/N``
on listeners with SO_REUSEPORT, so Linux spreads TCP connections and UDP datagrams over
the workers by a hash of the 4-tuple: a client's datagrams and a TCP connection stay on one
worker, the one holding its allocation or its WebSocket. The parent binds nothing and serves
nothing; it

- binds every worker's listening sockets itself (SO_REUSEPORT, one set per worker, a port 0
  made one free port for all) and keeps them while the workers come and go: a dead
  worker's sockets stay in the kernel's groups, so the other workers' clients keep their
  worker (the kernel picks a socket by the hash modulo the group's size), and what arrives
  for the dead one waits in its socket for its successor. It makes the certificate before
  any worker starts (no two race to write it) and creates the table of live relay ports the
  workers share (:mod:`flaskrtc.turn.siblings`);
- gives each worker its own share of the relay port range and of TURN's quotas (``user_quota``,
  ``ip_quota`` and ``total_quota`` divided by N, at least 1 each: the totals hold across
  workers, and a client whose allocations land unevenly may meet its share first);
- restarts a worker that exits (after 1 s, doubling to 30 s while it keeps dying within 10 s
  of its start), and on SIGTERM or SIGINT sends SIGTERM to every worker, waits for them
  (10 s, then SIGKILL) and exits 0. On SIGHUP it reads the config again (for the keys only
  it can see: the ports and the relay range it hands out, ``workers``; and its log level)
  and sends SIGHUP on to every worker, each of which reloads itself. A worker's peers leave
  when it dies: the cluster notices its missing heartbeat (:mod:`flaskrtc.signal.cluster`).

The pure parts (:func:`port_shares`, :func:`worker_settings`, :class:`Supervisor` with fake
children) are tested without processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal as stdsignal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flaskrtc.config import Config

log = logging.getLogger("flaskrtc.workers")

RESTART_DELAY = 1.0  # seconds before a dead worker is started again, doubled ...
MAX_RESTART_DELAY = 30.0  # ... up to this, while it keeps dying young
YOUNG = 10.0  # a worker that dies within this many seconds of its start died young
STOP_TIMEOUT = 10.0  # seconds the workers have to exit after SIGTERM, then SIGKILL
POLL = 0.1  # seconds between two looks at the workers


@dataclass(frozen=True)
class WorkerRole:
    """What a worker is told by its parent (``--worker I/N --worker-table PATH
    --worker-fds JSON``): its number, the shared relay table, and the listening sockets the
    parent bound for it (inherited file descriptors)."""

    index: int  # 1 .. count
    count: int
    table: str  # path of the shared table of live relay ports
    fds: Mapping[str, Any] = field(default_factory=dict)  # "http": fd, "udp"/"tcp"/"tls": [fd]

    def http_socket(self) -> Any:
        """The HTTP(S) listener the parent bound."""
        import gevent.socket

        return gevent.socket.socket(fileno=int(self.fds["http"]))

    def turn_sockets(self) -> Any:
        """TURN's listeners the parent bound (a :class:`flaskrtc.turn.server.TurnSockets`)."""
        import gevent.socket

        from flaskrtc.turn.server import TurnSockets

        def socks(kind: str) -> list[Any]:
            return [gevent.socket.socket(fileno=int(fd)) for fd in self.fds.get(kind, [])]

        return TurnSockets(socks("udp"), socks("tcp"), socks("tls"))


def parse_role(text: str, table: str, fds: str = "{}") -> WorkerRole:
    """``I/N`` (``--worker``), the table path and the sockets (JSON); ValueError if bad."""
    index, slash, count = text.partition("/")
    if not slash or not index.isdigit() or not count.isdigit():
        raise ValueError(f"--worker wants I/N, got {text!r}")
    try:
        sockets = json.loads(fds)
    except ValueError:
        raise ValueError(f"--worker-fds wants JSON, got {fds!r}") from None
    if not isinstance(sockets, dict):
        raise ValueError(f"--worker-fds wants a JSON object, got {fds!r}")
    role = WorkerRole(int(index), int(count), table, sockets)
    if not 1 <= role.index <= role.count or not table:
        raise ValueError(f"--worker {text!r} --worker-table {table!r}: not a worker of a parent")
    return role


def port_shares(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """``[low, high]`` cut into ``count`` consecutive shares as equal as can be."""
    size, extra = divmod(high - low + 1, count)
    shares, start = [], low
    for i in range(count):
        end = start + size + (1 if i < extra else 0) - 1
        shares.append((start, end))
        start = end + 1
    return shares


def _share(quota: int, count: int) -> int:
    return 0 if quota == 0 else max(1, quota // count)


# The keys worker_settings sets for each worker (so a worker's reload never sees them
# change): the parent alone says when they need a restart.
PARENT_KEYS = (
    "general.port",
    "general.workers",
    "turn.port",
    "turn.tls_port",
    "turn.min_port",
    "turn.max_port",
)


def worker_settings(config: Config, ports: Mapping[str, int]) -> list[dict[str, str]]:
    """The settings (``section.key`` -> value) each worker is started with, beyond the
    config itself: the ports the parent picked and its relay port share."""
    turn, count = config.turn, config.general.workers
    settings = []
    for low, high in port_shares(turn.min_port, turn.max_port, count):
        settings.append(
            {
                **{key: str(port) for key, port in ports.items()},
                # A worker is one server among several: it supervises nothing itself.
                "general.workers": "1",
                "turn.min_port": str(low),
                "turn.max_port": str(high),
            }
        )
    return settings


def worker_share(config: Config, count: int) -> Config:
    """``config`` of one worker of ``count``: its share of TURN's quotas. Done by the worker
    on each (re)load of the config, not by the parent's flags, so a reload that changes a
    quota changes every worker's share."""
    turn = config.turn
    share = dataclasses.replace(
        turn,
        user_quota=_share(turn.user_quota, count),
        ip_quota=_share(turn.ip_quota, count),
        total_quota=_share(turn.total_quota, count),
    )
    return dataclasses.replace(config, turn=share)


@dataclass
class WorkerSockets:
    """The listening sockets the parent binds for one worker and keeps while it lives: a
    dead worker's socket stays in each SO_REUSEPORT group, so the kernel's spread of the
    other workers' clients does not change (only its own wait for its successor)."""

    http: Any
    turn: Any  # flaskrtc.turn.server.TurnSockets

    def fds(self) -> dict[str, Any]:
        """File descriptor numbers, for ``--worker-fds``."""
        return {
            "http": self.http.fileno(),
            "udp": [s.fileno() for s in self.turn.udp],
            "tcp": [s.fileno() for s in self.turn.tcp],
            "tls": [s.fileno() for s in self.turn.tls],
        }

    def all(self) -> list[Any]:
        """Every socket."""
        return [self.http, *self.turn.all()]


def bind_worker_sockets(config: Config) -> list[WorkerSockets]:
    """Each worker's listeners, SO_REUSEPORT, all on the same ports (a port 0 made the
    free port the first worker's socket got)."""
    from flaskrtc.server import bind_http_socket
    from flaskrtc.turn.server import bind_turn_sockets

    general, turn = config.general, config.turn
    http_port, turn_port, tls_port = general.port, turn.port, turn.tls_port
    made: list[WorkerSockets] = []
    try:
        for _ in range(general.workers):
            http = bind_http_socket(general.bind, http_port, reuse_port=True)
            made.append(WorkerSockets(http, None))
            made[-1].turn = bind_turn_sockets(turn.bind, turn_port, tls_port, reuse_port=True)
            http_port = http.getsockname()[1]
            turn_port = made[-1].turn.udp[0].getsockname()[1]
            if made[-1].turn.tls:
                tls_port = made[-1].turn.tls[0].getsockname()[1]
    except OSError:
        for sockets in made:
            for sock in [sockets.http, *(sockets.turn.all() if sockets.turn else [])]:
                sock.close()
        raise
    return made


def worker_command(
    argv: Sequence[str],
    role: str,
    table: str,
    settings: Mapping[str, str],
    fds: Mapping[str, Any] | None = None,
) -> list[str]:
    """The command line of one worker: this program with the parent's own flags, its role,
    and its settings (``--set`` wins over every other source)."""
    program = (
        [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "flaskrtc"]
    )
    extra = ["--worker", role, "--worker-table", table]
    if fds:
        extra += ["--worker-fds", json.dumps(fds, separators=(",", ":"))]
    for key, value in settings.items():
        extra += ["--set", f"{key}={value}"]
    return [*program, *argv, *extra]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # A SIGHUP forwarded before the worker has set its handler would kill it (the default
    # action); ignored, it is a missed reload at worst. exec keeps an ignored signal ignored.
    stdsignal.signal(stdsignal.SIGHUP, stdsignal.SIG_IGN)
    # Linux: the worker gets SIGTERM if the parent dies (even by SIGKILL): no orphans.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, stdsignal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Worker:
    index: int
    command: list[str]
    fds: tuple[int, ...] = ()  # inherited by each start: its listening sockets
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY
    due: float = 0.0  # when to start it (again)


class Supervisor:
    """Starts the workers, restarts those that exit, stops them all on request."""

    def __init__(
        self,
        commands: Sequence[list[str]],
        *,
        fds: Sequence[Sequence[int]] = (),
        clock: Callable[[], float] = time.monotonic,
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        """``commands[i]`` starts worker i+1, inheriting file descriptors ``fds[i]``;
        ``on_reload()``: the parent's own part of a reload (SIGHUP)."""
        self.workers = [
            _Worker(i + 1, list(cmd), tuple(fds[i]) if i < len(fds) else ())
            for i, cmd in enumerate(commands)
        ]
        self.clock = clock
        self.popen = popen
        self.stopping = False
        self.restarts = 0
        self.on_reload = on_reload

    def _start(self, worker: _Worker) -> None:
        worker.proc = self.popen(
            worker.command,
            pass_fds=worker.fds,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        worker.started = self.clock()
        log.info("worker %d/%d started (pid %d)", worker.index, len(self.workers), worker.proc.pid)

    def step(self) -> None:
        """One look at the workers: start those due, schedule a restart for those that
        exited."""
        now = self.clock()
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                if not self.stopping and now >= worker.due:
                    self._start(worker)
                continue
            code = proc.poll()
            if code is None:
                continue
            worker.proc = None
            if self.stopping:
                continue
            lived = now - worker.started
            worker.delay = (
                min(MAX_RESTART_DELAY, worker.delay * 2) if lived < YOUNG else RESTART_DELAY
            )
            wait = worker.delay if lived < YOUNG else RESTART_DELAY
            worker.due = now + wait
            self.restarts += 1
            log.warning(
                "worker %d/%d (pid %d) exited with status %s after %.1f s: starting it again "
                "in %.0f s; its peers leave when the cluster misses its heartbeat",
                worker.index,
                len(self.workers),
                proc.pid,
                code,
                lived,
                wait,
            )

    def reload(self) -> int:
        """SIGHUP: the parent's own part, then SIGHUP to every running worker (each reloads
        itself and logs it); returns how many were told."""
        if self.on_reload is not None:
            try:
                self.on_reload()
            except Exception:  # the parent must keep supervising whatever happens here
                log.exception("reload failed in the parent")
        told = 0
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(stdsignal.SIGHUP)
                told += 1
        log.info("reload: SIGHUP sent to %d of %d workers", told, len(self.workers))
        return told

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to every worker; SIGKILL to any still running after ``timeout``."""
        self.stopping = True
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(stdsignal.SIGTERM)
        deadline = self.clock() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0f s: killed", proc.pid, timeout)
                proc.kill()
                proc.wait()
        for worker in self.workers:
            worker.proc = None

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT; then stop the workers and return 0. SIGHUP
        reloads (:meth:`reload`)."""
        stop_requested = [False]
        reload_requested = [False]

        def request_stop(signum: int, _frame: object) -> None:
            stop_requested[0] = True

        def request_reload(signum: int, _frame: object) -> None:
            # Only a flag here: the loop does the work, outside the signal handler.
            reload_requested[0] = True

        previous = {
            signum: stdsignal.signal(signum, request_stop)
            for signum in (stdsignal.SIGTERM, stdsignal.SIGINT)
        }
        previous[stdsignal.SIGHUP] = stdsignal.signal(stdsignal.SIGHUP, request_reload)
        try:
            while not stop_requested[0]:
                self.step()
                if reload_requested[0]:
                    reload_requested[0] = False
                    self.reload()
                time.sleep(POLL)
        finally:
            for signum, handler in previous.items():
                stdsignal.signal(signum, handler)
            log.info("stopping %d workers", len(self.workers))
            self.stop()
        log.info("stopped")
        return 0


def parent_reload(config: Config, reload_config: Callable[[], Config]) -> Callable[[], None]:
    """The parent's part of a reload: its log level, and a warning naming the keys it hands
    the workers (:data:`PARENT_KEYS`) that changed since ``config`` (they need a restart)."""
    from flaskrtc.config import ConfigError
    from flaskrtc.log import set_level
    from flaskrtc.reload import restart_needed

    def on_reload() -> None:
        try:
            new = reload_config()
        except ConfigError as err:
            log.error("reload: %s: the workers keep their settings", err)
            return
        keys = [key for key in restart_needed(config, new) if key in PARENT_KEYS]
        if keys:
            log.warning(
                "reload: these keys need a restart: %s (not applied; they keep their "
                "running values)",
                ", ".join(keys),
            )
        set_level(new.log_level)

    return on_reload


def supervise(
    config: Config, argv: Sequence[str], reload_config: Callable[[], Config] | None = None
) -> int:
    """Run ``config.general.workers`` workers of ``flaskrtc argv`` until told to stop.
    ``reload_config()``: the config read again, for SIGHUP."""
    from flaskrtc.server import StartupError, prepare_files
    from flaskrtc.turn.siblings import RelayTable

    try:
        prepare_files(config)  # the certificate, once, before any worker reads it
        sockets = bind_worker_sockets(config)
    except StartupError as err:
        log.error("%s", err)
        return 1
    except OSError as err:
        log.error("workers: cannot listen: %s", err)
        return 1
    first = sockets[0]
    ports = {
        "general.port": first.http.getsockname()[1],
        "turn.port": first.turn.udp[0].getsockname()[1],
        "turn.tls_port": first.turn.tls[0].getsockname()[1] if first.turn.tls else 0,
    }
    table = RelayTable.create()
    count = config.general.workers
    try:
        commands = [
            worker_command(argv, f"{i + 1}/{count}", str(table.path), settings, sockets[i].fds())
            for i, settings in enumerate(worker_settings(config, ports))
        ]
        fds = [[sock.fileno() for sock in worker.all()] for worker in sockets]
        log.info(
            "%d workers on https/http port %d, TURN port %d (SO_REUSEPORT); relay ports and "
            "TURN quotas divided among them",
            count,
            ports["general.port"],
            ports["turn.port"],
        )
        on_reload = parent_reload(config, reload_config) if reload_config is not None else None
        return Supervisor(commands, fds=fds, on_reload=on_reload).run()
    finally:
        table.close(unlink=True)
        for worker in sockets:
            for sock in worker.all():
                sock.close()
