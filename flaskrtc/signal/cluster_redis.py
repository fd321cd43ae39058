"""The gevent shell of the cluster: two Redis connections and the greenlets that use them.

redis-py's connections speak RESP (with the hiredis parser where it is installed); their
sockets here are gevent sockets, so a read that waits (the subscriber waits for ever) parks
only its own greenlet, with no monkey-patching: :class:`GeventConnection` and
:class:`GeventUnixConnection` replace only how the socket is made. Each connection is used
by one greenlet only: the command connection by the writer loop (which runs the core's ops
in order, pipelined, and feeds back the replies), the subscription by the reader. Neither
goes through redis-py's connection pool or PubSub object, whose locks are thread locks.

When either connection fails, both are closed, the core is told (it refuses ``new`` and
relays from then on), and the writer reconnects with exponential backoff (0.1 s doubling to
5 s); once both are up again the core resynchronises.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from typing import Any

import gevent
import gevent.event
import gevent.socket
import redis.connection
from redis.exceptions import RedisError, ResponseError

from flaskrtc.ratelimit import LogThrottle
from flaskrtc.signal.cluster import DOWN, EVENTS, UP, ClusterCore, Op, inbox
from flaskrtc.signal.server import SignalServer

log = logging.getLogger("flaskrtc.cluster")

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
# At most this many ops in one pipelined round trip.
BATCH = 1000


class GeventConnection(redis.connection.Connection):
    """A redis-py TCP connection whose socket is a gevent socket."""

    def _connect(self) -> Any:
        err: OSError | None = None
        infos = gevent.socket.getaddrinfo(
            self.host, self.port, self.socket_type, socket.SOCK_STREAM
        )
        for family, socktype, proto, _, address in infos:
            sock = gevent.socket.socket(family, socktype, proto)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.socket_keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    for option, value in self.socket_keepalive_options.items():
                        sock.setsockopt(socket.IPPROTO_TCP, option, value)
                sock.settimeout(self.socket_connect_timeout)
                sock.connect(address)
                sock.settimeout(self.socket_timeout)
                return sock
            except OSError as exc:
                err = exc
                sock.close()
        raise err or OSError("getaddrinfo returned no address")


class GeventUnixConnection(redis.connection.UnixDomainSocketConnection):
    """A redis-py Unix socket connection whose socket is a gevent socket."""

    def _connect(self) -> Any:
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.socket_connect_timeout)
            sock.connect(self.path)
            sock.settimeout(self.socket_timeout)
        except OSError:
            sock.close()
            raise
        return sock


def connect(url: str, *, timeout: float | None, name: str = "") -> Any:
    """A connected, cooperative redis-py connection to ``url`` (redis:// or unix://);
    ``timeout``: for every read and write (None: wait for ever)."""
    kwargs: dict[str, Any] = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    unix = kwargs.pop("connection_class", None) is redis.connection.UnixDomainSocketConnection
    cls: Any = GeventUnixConnection if unix else GeventConnection
    conn = cls(
        **kwargs,
        socket_timeout=timeout,
        socket_connect_timeout=5.0 if timeout is None else timeout,
        client_name=name or None,
        # RESP2: subscription messages are plain replies (RESP3, redis-py 8's default, makes
        # them push frames handled behind the reader's back).
        protocol=2,
    )
    conn.connect()
    return conn


def safe_url(url: str) -> str:
    """``url`` without its password, for the log."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


class _Lost(Exception):
    """The subscription ended."""


class _Failed(Exception):
    """A batch of ops failed; ``unsent``: those that may not have run."""

    def __init__(self, err: BaseException, unsent: list[Op]) -> None:
        super().__init__(str(err) or err.__class__.__name__)
        self.unsent = unsent


class RedisCluster:
    """Runs a :class:`ClusterCore` for ``signal``'s hub against the Redis at ``url``."""

    def __init__(self, url: str, heartbeat: float, signal: SignalServer) -> None:
        self.url = url
        self.where = safe_url(url)
        self.signal = signal
        self.instance = secrets.token_hex(6)
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        self._wake = gevent.event.Event()
        self.core = ClusterCore(
            signal.hub, self.instance, heartbeat, info=info, wake=self._wake.set
        )
        # A command that takes longer than the instance TTL is as good as lost.
        self.command_timeout = max(2.0, self.core.ttl)
        self._lost: BaseException | None = None  # why the current subscription ended
        self._generation = 0  # numbers the connections, so a stale reader is told apart
        self._stopping = False
        self._stopped = gevent.event.Event()
        self._synced = gevent.event.Event()
        self._runner: gevent.Greenlet[Any] | None = None
        self._down_log = LogThrottle(30.0)
        self._down_since: float | None = None  # when Redis was lost (None: connected)

    # -- life cycle ------------------------------------------------------------------------

    def start(self, wait: float = 5.0) -> None:
        """Connect and synchronise, waiting up to ``wait`` s for it (then go on anyway)."""
        log.info("cluster: instance %s, Redis at %s", self.instance, self.where)
        self._runner = gevent.spawn(self._run)
        if not self._synced.wait(wait):
            log.warning(
                "cluster: not in sync with Redis at %s after %g s: serving anyway; 'new' gets "
                "an error until it is",
                self.where,
                wait,
            )

    def stop(self, timeout: float = 2.0) -> None:
        """Run the queued ops and the goodbye (this instance's peers leave everywhere now)."""
        self._stopping = True
        self._wake.set()
        if not self._stopped.wait(timeout) and self._runner is not None:
            self._runner.kill(block=False)

    def _apply(self, actions: list[Any]) -> None:
        # Even with no actions: a peers list the hub deferred needs the tick loop woken.
        self.signal.apply(actions)

    # -- the writer (supervisor) greenlet ----------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_MIN
        attempts = 0
        try:
            while not self._stopping:
                try:
                    self._session()
                    return  # stopping
                except Exception as err:
                    if not isinstance(err, (RedisError, OSError, _Lost, _Failed)):
                        # A bug: said loudly, then handled as a lost connection (reconnect
                        # and resynchronise) rather than leaving the cluster dead.
                        log.exception("cluster: unexpected error")
                    reason = str(err) or err.__class__.__name__
                    now = time.monotonic()
                    was_connected = self.core.state != DOWN
                    unsent = err.unsent if isinstance(err, _Failed) else []
                    self._apply(self.core.disconnected(now, unsent))
                    self._synced.clear()
                    if was_connected or self._down_since is None:
                        self._down_since, attempts, delay = now, 0, BACKOFF_MIN
                        log.warning(
                            "cluster: Redis at %s %s (%s): 'new' is refused and messages to "
                            "peers on other instances fail until it is back; retrying",
                            self.where,
                            "lost" if was_connected else "unreachable",
                            reason,
                        )
                    attempts += 1
                    if self._down_log.ready(now) is not None and attempts > 1:
                        log.warning(
                            "cluster: Redis at %s still unreachable after %.0f s (%d attempts; "
                            "%s); %d registration(s) refused, %d message(s) not relayed so far",
                            self.where,
                            now - self._down_since,
                            attempts,
                            reason,
                            self.core.refused,
                            self.core.unrelayed,
                        )
                self._backoff(delay)
                delay = min(BACKOFF_MAX, delay * 2)
        finally:
            self._stopped.set()

    def _backoff(self, delay: float) -> None:
        """Wait ``delay`` s (less if stopping), running the core's timers meanwhile."""
        end = time.monotonic() + delay * (0.8 + 0.4 * secrets.randbelow(1000) / 1000)
        while not self._stopping:
            now = time.monotonic()
            if now >= end:
                return
            self._apply(self.core.poll(now))
            deadline = self.core.next_deadline()
            until = end if deadline is None else min(end, max(deadline, now))
            self._wake.clear()
            self._wake.wait(max(0.0, until - now))

    def _session(self) -> None:
        """One connection to Redis, until it fails (raises) or the cluster stops."""
        name = f"flaskrtc-{self.instance}"
        cmd = connect(self.url, timeout=self.command_timeout, name=name)
        sub = None
        reader = None
        try:
            sub = connect(self.url, timeout=self.command_timeout, name=name + "-sub")
            sub.send_command("SUBSCRIBE", EVENTS, inbox(self.instance))
            for _ in range(2):
                sub.read_response()  # the two subscribe confirmations
            self._generation += 1
            self._lost = None
            self.core.connected(time.monotonic())
            reader = gevent.spawn(self._read, sub, self._generation)
            self._write_loop(cmd)
        finally:
            if reader is not None:
                reader.kill(block=False)
            for conn in (cmd, sub):
                if conn is not None:
                    conn.disconnect()

    def _write_loop(self, cmd: Any) -> None:
        reported = False
        while True:
            if self._lost is not None:
                raise _Lost(f"subscription lost: {self._lost}")
            if self.core.state == UP and not reported:
                reported = True
                self._synced.set()
                if self._down_since is not None:
                    log.warning(
                        "cluster: Redis at %s is back after %.1f s: %d registration(s) were "
                        "refused and %d message(s) not relayed while it was unreachable",
                        self.where,
                        time.monotonic() - self._down_since,
                        self.core.refused,
                        self.core.unrelayed,
                    )
                self._down_since = None
                self.core.refused = self.core.unrelayed = 0
            now = time.monotonic()
            self._apply(self.core.poll(now))
            if self._stopping:
                self._execute(cmd, [*self.core.take_ops(), self.core.stop()])
                return
            ops = self.core.take_ops()
            if not ops:
                self._wake.clear()
                if self.core.has_ops() or self._stopping or self._lost is not None:
                    continue
                deadline = self.core.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - now)
                self._wake.wait(timeout)
                continue
            for start in range(0, len(ops), BATCH):
                self._execute(cmd, ops[start : start + BATCH], ops[start + BATCH :])

    def _execute(self, cmd: Any, ops: list[Op], later: list[Op] | None = None) -> None:
        """Send ``ops`` in one write, then read their replies in order."""
        done = 0
        try:
            cmd.send_packed_command(cmd.pack_commands([op.args for op in ops]))
            for op in ops:
                try:
                    result: Any = cmd.read_response()
                except ResponseError as err:
                    result = err
                done += 1
                self._apply(self.core.completed(op, result, time.monotonic()))
        except (RedisError, OSError) as err:
            raise _Failed(err, ops[done:] + (later or [])) from err

    # -- the reader greenlet -----------------------------------------------------------------

    def _read(self, sub: Any, session: int) -> None:
        """Feed the subscription's messages to the core until it fails; then tell the writer
        (unless this reader belongs to a session that has already ended)."""
        lost: BaseException
        try:
            while True:
                reply = sub.read_response(timeout=None)
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    self._apply(self.core.on_message(reply[1], reply[2], time.monotonic()))
        except gevent.GreenletExit:
            return  # its session ended: the writer knows
        except (RedisError, OSError, ValueError) as err:
            lost = err
        except Exception as err:  # a bug must not stop the cluster quietly
            log.exception("cluster: subscription failed")
            lost = err
        if session == self._generation:
            self._lost = lost
            self._wake.set()
