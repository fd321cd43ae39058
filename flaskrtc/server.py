"""Process lifecycle: TLS material, the gevent WSGI server, the banner, clean shutdown."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import signal as stdsignal
import socket
import ssl
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.socket
import gevent.ssl
from gevent.pywsgi import WSGIServer

from flaskrtc import __version__
from flaskrtc.app import create_app
from flaskrtc.config import Config, public_ips
from flaskrtc.ratelimit import ConnectionLimits, LogThrottle, RateLimiter
from flaskrtc.signal.server import SignalingHandler, SignalServer, unmapped
from flaskrtc.tls import HandshakeGuard, ensure_certificate, make_ssl_context
from flaskrtc.turn.addressing import is_wildcard, url_host
from flaskrtc.turn.auth import Credentials, Nonces
from flaskrtc.turn.core import Limits, TurnCore
from flaskrtc.turn.policy import PeerPolicy
from flaskrtc.turn.server import (
    TurnServer,
    UdpRelayPorts,
    bound_socket,
    listen_hosts,
    relay_addressing,
)
from flaskrtc.turn.siblings import RelayTable, SiblingRelays
from flaskrtc.workers import WorkerRole

log = logging.getLogger("flaskrtc.server")
http_log = logging.getLogger("flaskrtc.http")


class _LogWriter:
    """File-like adapter so pywsgi's access and error logs go through logging."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger, self.level = logger, level

    def write(self, text: str) -> None:
        text = text.rstrip()
        if text:
            self.logger.log(self.level, "%s", text)

    def flush(self) -> None:
        pass


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


def _raise_fd_limit() -> None:
    # Each peer holds a socket: lift the soft open-files limit to the hard one so that a
    # default of 1024 does not cap the number of peers.
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform dependent
        pass


def banner(config: Config, scheme: str, host: str, port: int) -> list[str]:
    """The start-up lines: where to point a browser, the apps and ICE clients."""
    ws = "wss" if scheme == "https" else "ws"
    shown = ["localhost"] if host in ("0.0.0.0", "::") else [url_host(host)]
    if config.general.domain not in ("", "localhost") and host in ("0.0.0.0", "::"):
        shown.append(config.general.domain)
    lines = [f"flaskrtc {__version__} listening on {scheme}://{url_host(host)}:{port}"]
    for name in shown:
        lines.append(f"  web demo:          {scheme}://{name}:{port}/")
        lines.append(f"  signaling:         {ws}://{name}:{port}/ws")
        lines.append(
            f"  TURN credentials:  {scheme}://{name}:{port}/api/turn?service=turn&username=demo"
        )
    return lines


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context for HTTPS and TURN over TLS, generating a certificate if needed."""
    general = config.general
    if not general.tls and not config.turn.tls_port:
        return None
    cert, key = Path(general.cert), Path(general.key)
    hosts = [general.domain, *public_ips(config.turn.public_ip)]
    try:
        if ensure_certificate(cert, key, hosts):
            log.info("generated a self-signed certificate: %s (key %s)", cert, key)
        return make_ssl_context(cert, key, gevent.ssl.SSLContext)
    except (OSError, ValueError, TypeError) as err:
        raise StartupError(f"TLS certificate {cert} / key {key}: {err}") from err


def prepare_files(config: Config) -> None:
    """Make what the server writes on start (the self-signed certificate) now: the parent
    of several workers does, before any of them reads it."""
    _ssl_context(config)


def build_turn(
    config: Config, ssl_context: ssl.SSLContext | None, role: WorkerRole | None = None
) -> TurnServer:
    """Create and start the TURN server; its real ports are in its *_address attributes.
    ``role``: a worker among several (SO_REUSEPORT, the relay table it shares)."""
    turn = config.turn
    addressing = relay_addressing(turn.public_ip, turn.bind)
    table = RelayTable(role.table) if role is not None else None
    if table is not None:
        table.clear(turn.min_port, turn.max_port)  # this worker's share: a new start
    siblings = SiblingRelays(table) if table is not None else None
    ports = UdpRelayPorts(
        addressing=addressing, min_port=turn.min_port, max_port=turn.max_port, table=table
    )
    core = TurnCore(
        ports=ports,
        credentials=Credentials(turn.realm, turn.secret, dict(turn.users)),
        # Derived from the shared secret: servers sharing it accept each other's nonces.
        nonces=Nonces(hmac.new(turn.secret.encode(), b"flaskrtc nonce", "sha256").digest()),
        policy=PeerPolicy(denied=turn.denied_peer_ip, allowed=turn.allowed_peer_ip),
        limits=Limits(
            default_lifetime=turn.default_lifetime,
            max_lifetime=turn.max_lifetime,
            user_quota=turn.user_quota,
            ip_quota=turn.ip_quota,
            total_quota=turn.total_quota,
            max_permissions=turn.max_permissions,
            max_channels=turn.max_channels,
            unauth_rate=turn.unauth_rate,
            unauth_burst=turn.unauth_burst,
        ),
        # Peers at the host's own addresses are the host itself: denied, except its relays.
        host_addresses=addressing.host_addresses(),
        sibling_relays=siblings,
    )
    if siblings is not None:
        siblings.hosts = core.host_addresses  # the same set: it grows as relays open
    server = TurnServer(core)
    ports.on_open = server.start_relay
    try:
        if role is not None:
            # A worker: the parent bound the sockets (and holds them while it restarts us).
            server.serve(role.turn_sockets(), ssl_context if turn.tls_port else None)
        else:
            server.start(
                bind=turn.bind,
                port=turn.port,
                tls_port=turn.tls_port,
                ssl_context=ssl_context if turn.tls_port else None,
            )
    except OSError as err:
        server.stop()
        raise StartupError(f"turn: cannot listen on {turn.bind}:{turn.port}: {err}") from err
    rule = addressing.describe(server.pktinfo)
    if server.pktinfo or turn.public_ip or not is_wildcard(turn.bind):
        log.info("turn: %s", rule)
    else:
        log.warning("turn: %s", rule)
    return server


class ConnectionCap:
    """Mixin for a gevent ``StreamServer``: refuse connections beyond ``limits``.

    A refused connection is closed at once, before any TLS handshake or HTTP parsing, and
    costs one WARNING line per cap and 10 s at most (a flood must not flood the log too).
    """

    limits: ConnectionLimits | None = None  # None: no caps
    _refused: dict[str, LogThrottle] | None = None  # a log throttle per cap

    def do_handle(self, client_socket: Any, address: Any) -> Any:
        """Admit the connection (then handle it as gevent does) or close it."""
        refusal = None if self.limits is None else self.limits.admit(_ip(address))
        if refusal is None:
            return super().do_handle(client_socket, address)  # type: ignore[misc]
        client_socket.close()
        if self._refused is None:
            self._refused = {}
        throttle = self._refused.setdefault(refusal.cap, LogThrottle(10.0))
        quiet = throttle.ready(time.monotonic())
        if quiet is not None:
            more = f"; {quiet} more refused since the last such line" if quiet else ""
            log.warning("refused a connection from %s: %s%s", _ip(address), refusal, more)
        return None

    def do_close(self, client_socket: Any, address: Any) -> None:
        """The connection has ended (gevent calls this once per handled one): free its slot."""
        try:
            super().do_close(client_socket, address)  # type: ignore[misc]
        finally:
            if self.limits is not None:
                self.limits.release(_ip(address))


def _ip(address: Any) -> str:
    address = unmapped(address)  # the same key for an IPv4 client over a dual-stack socket
    return str(address[0]) if isinstance(address, tuple) else str(address)


class _WSGIServer(ConnectionCap, HandshakeGuard, WSGIServer):  # type: ignore[misc]
    """gevent's WSGI server with connection caps and guarded TLS handshakes."""


def bind_http_socket(bind: str, port: int, reuse_port: bool = False) -> Any:
    """The HTTP(S) listener for ``[general] bind``: ``::`` is one dual-stack socket (IPv6
    and IPv4); where the OS cannot make one, or has no IPv6, IPv4 alone, said in a warning
    (a WSGI server takes one socket). ``reuse_port``: for the parent of several workers."""
    hosts = listen_hosts(bind)
    host, v6only = hosts[0] if len(hosts) == 1 else hosts[-1]
    if len(hosts) > 1:
        log.warning("this OS has no dual-stack sockets: HTTP(S) listens on IPv4 (0.0.0.0) only")
    return bound_socket(socket.SOCK_STREAM, host, port, v6only, reuse_port)


def request_gate(limiter: RateLimiter, endpoint: str) -> Any:
    """``gate(ip)``: 0 if a request from ``ip`` to ``endpoint`` may go on, else the seconds
    it must wait (then also logged: one WARNING line per endpoint and 10 s at most)."""
    throttle = LogThrottle(10.0)

    def gate(ip: str) -> float:
        now = time.monotonic()
        wait = limiter.check((endpoint, ip), now)
        if wait:
            quiet = throttle.ready(now)
            if quiet is not None:
                more = f"; {quiet} more since the last such line" if quiet else ""
                http_log.warning(
                    "%s: %s over [general] rate_limit = %g/s, answered 429%s",
                    ip,
                    endpoint,
                    limiter.rate,
                    more,
                )
        return wait

    return gate


def build_server(
    config: Config,
    ssl_context: ssl.SSLContext | None,
    turn_families: Collection[int] = (4, 6),
    role: WorkerRole | None = None,
) -> tuple[WSGIServer, SignalServer]:
    """Create (not start) the HTTP(S) server and the signaling server for ``config``;
    ``turn_families``: the address families the TURN server listens on; ``role``: a worker
    among several, whose listener the parent bound."""
    general = config.general
    signal = SignalServer(
        keepalive=general.keepalive,
        max_message_size=general.max_message_size,
        idle_timeout=general.effective_idle_timeout,
    )
    # One limiter for both endpoints, with a bucket per (endpoint, IP): a burst of
    # /api/turn requests (the connection check makes four) never blocks a reconnect.
    limiter = RateLimiter(general.rate_limit)
    app = create_app(
        config,
        signal,
        rate_gate=request_gate(limiter, "/api/turn"),
        turn_families=turn_families,
    )
    kwargs: dict[str, Any] = {}
    if general.tls:
        kwargs["ssl_context"] = ssl_context
    if role is not None:
        listener = role.http_socket()
    else:
        try:
            listener = bind_http_socket(general.bind, general.port)
        except OSError as err:
            raise StartupError(f"cannot listen on {general.bind}:{general.port}: {err}") from err
    server = _WSGIServer(
        listener,
        app,
        handler_class=SignalingHandler,
        log=_LogWriter(http_log, logging.INFO),
        error_log=_LogWriter(http_log, logging.ERROR),
        **kwargs,
    )
    server.limits = ConnectionLimits(general.max_connections, general.max_connections_per_ip)
    if limiter.enabled:
        server.upgrade_gate = request_gate(limiter, "/ws")
    return server, signal


def start_cluster(config: Config, signal: SignalServer) -> Any:
    """With ``[cluster] redis_url``, join the cluster (waiting a few seconds for Redis) and
    return it; None without (redis-py is then not even imported)."""
    if not config.cluster.redis_url:
        return None
    from flaskrtc.signal.cluster_redis import RedisCluster

    cluster = RedisCluster(config.cluster.redis_url, config.cluster.heartbeat, signal)
    cluster.start()
    return cluster


def run(config: Config, role: WorkerRole | None = None) -> int:
    """Serve until SIGINT/SIGTERM; then close every peer with 1001 and release sockets.
    ``role``: this process is one worker of several (flaskrtc.workers)."""
    _raise_fd_limit()
    turn: TurnServer | None = None
    try:
        ssl_context = _ssl_context(config)
        turn = build_turn(config, ssl_context, role)
        # /api/turn must name the ports really bound (port 0 picks free ones).
        assert turn.udp_address is not None
        tls_port = turn.tls_address[1] if turn.tls_address else 0
        config = dataclasses.replace(
            config,
            turn=dataclasses.replace(config.turn, port=turn.udp_address[1], tls_port=tls_port),
        )
        server, signal = build_server(config, ssl_context, sorted(turn.families), role=role)
    except StartupError as err:
        if turn is not None:
            turn.stop()
        log.error("%s", err)
        return 1
    cluster = start_cluster(config, signal)
    server.start()
    host, port = server.socket.getsockname()[:2]
    scheme = "https" if config.general.tls else "http"
    for line in banner(config, scheme, host, port):
        log.info("%s", line)
    turn_host = url_host(config.turn.bind)
    log.info(
        "turn: listening on udp and tcp %s:%d%s (%s); relay ports %d-%d",
        turn_host,
        config.turn.port,
        f", tls {turn_host}:{config.turn.tls_port}" if config.turn.tls_port else "",
        " and ".join(f"IPv{family}" for family in sorted(turn.families, reverse=True)),
        config.turn.min_port,
        config.turn.max_port,
    )

    stop = gevent.event.Event()
    for signum in (stdsignal.SIGINT, stdsignal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    log.info("shutting down: closing %d connection(s)", len(signal.conns))
    signal.shutdown()
    if cluster is not None:
        cluster.stop()  # this instance's peers leave the other instances now
    server.stop(timeout=1)
    turn.stop()
    log.info("stopped")
    return 0
