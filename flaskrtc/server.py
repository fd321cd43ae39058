"""Process lifecycle: TLS material, the gevent WSGI server, the banner, clean shutdown."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import signal as stdsignal
import socket
import ssl
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.socket
import gevent.ssl
from gevent.pywsgi import WSGIServer

from flaskrtc import __version__
from flaskrtc.app import create_app
from flaskrtc.config import Config, ConfigError, TurnConfig, public_ips
from flaskrtc.forwarded import TrustedProxies
from flaskrtc.log import route_gevent_errors, set_level
from flaskrtc.metrics import Monitor
from flaskrtc.ratelimit import ConnectionLimits, LogThrottle, RateLimiter
from flaskrtc.reload import FileWatch, changed, merge, restart_needed
from flaskrtc.signal.server import SignalingHandler, SignalServer, unmapped
from flaskrtc.tls import HandshakeGuard, ensure_certificate, fingerprint, make_ssl_context
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
# How often the status page's history is looked at (a sample is kept every SAMPLE_SECONDS).
STATUS_TICK = 2.0
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


def turn_limits(turn: TurnConfig) -> Limits:
    """The TURN core's quotas and limits for ``[turn]``."""
    return Limits(
        default_lifetime=turn.default_lifetime,
        max_lifetime=turn.max_lifetime,
        user_quota=turn.user_quota,
        ip_quota=turn.ip_quota,
        total_quota=turn.total_quota,
        max_permissions=turn.max_permissions,
        max_channels=turn.max_channels,
        unauth_rate=turn.unauth_rate,
        unauth_burst=turn.unauth_burst,
    )


def peer_policy(turn: TurnConfig) -> PeerPolicy:
    """The TURN core's peer address rules for ``[turn]``."""
    return PeerPolicy(denied=turn.denied_peer_ip, allowed=turn.allowed_peer_ip)


def turn_credentials(turn: TurnConfig) -> Credentials:
    """The TURN core's credential checks for ``[turn]`` (the REST secret, static users)."""
    return Credentials(turn.realm, turn.secret, dict(turn.users))


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
        credentials=turn_credentials(turn),
        # Derived from the shared secret: servers sharing it accept each other's nonces.
        nonces=Nonces(hmac.new(turn.secret.encode(), b"flaskrtc nonce", "sha256").digest()),
        policy=peer_policy(turn),
        limits=turn_limits(turn),
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
    # Proxies whose headers name the client. Here, at accept time, no header has been read:
    # a trusted proxy's connections count against max_connections only, not against the
    # per-IP cap (every client behind it shares its address); the per-client cap is applied
    # to their WebSocket sessions once the request is parsed (SignalingHandler).
    trusted_proxies: TrustedProxies = TrustedProxies()
    _refused: dict[str, LogThrottle] | None = None  # a log throttle per cap

    def do_handle(self, client_socket: Any, address: Any) -> Any:
        """Admit the connection (then handle it as gevent does) or close it."""
        ip = _ip(address)
        refusal = (
            None
            if self.limits is None
            else self.limits.admit(ip, per_ip=not self.trusted_proxies.trusts(ip))
        )
        if refusal is None:
            return super().do_handle(client_socket, address)  # type: ignore[misc]
        client_socket.close()
        if self._refused is None:
            self._refused = {}
        throttle = self._refused.setdefault(refusal.cap, LogThrottle(10.0))
        quiet = throttle.ready(time.monotonic())
        if quiet is not None:
            more = f"; {quiet} more refused since the last such line" if quiet else ""
            log.warning(
                "refused a connection from %s: %s%s",
                ip,
                refusal,
                more,
                extra={"client": ip, "cap": refusal.cap},
            )
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

    rate_gates: list[RequestGate]  # /api/turn's and /ws's: a reload hands them a new limiter
    monitor: Monitor | None = None  # what /readyz and /metrics read (set by build_server)


def bind_http_socket(bind: str, port: int, reuse_port: bool = False) -> Any:
    """The HTTP(S) listener for ``[general] bind``: ``::`` is one dual-stack socket (IPv6
    and IPv4); where the OS cannot make one, or has no IPv6, IPv4 alone, said in a warning
    (a WSGI server takes one socket). ``reuse_port``: for the parent of several workers."""
    hosts = listen_hosts(bind)
    host, v6only = hosts[0] if len(hosts) == 1 else hosts[-1]
    if len(hosts) > 1:
        log.warning("this OS has no dual-stack sockets: HTTP(S) listens on IPv4 (0.0.0.0) only")
    return bound_socket(socket.SOCK_STREAM, host, port, v6only, reuse_port)


class RequestGate:
    """``gate(ip)``: 0 if a request from ``ip`` to ``endpoint`` may go on, else the seconds
    it must wait (then also logged: one WARNING line per endpoint and 10 s at most).
    ``limiter`` is replaced, not changed, by a reload."""

    def __init__(self, limiter: RateLimiter, endpoint: str) -> None:
        self.limiter = limiter
        self.endpoint = endpoint
        self.throttle = LogThrottle(10.0)

    def __call__(self, ip: str) -> float:
        now = time.monotonic()
        limiter = self.limiter
        wait = limiter.check((self.endpoint, ip), now)
        if wait:
            quiet = self.throttle.ready(now)
            if quiet is not None:
                more = f"; {quiet} more since the last such line" if quiet else ""
                http_log.warning(
                    "%s: %s over [general] rate_limit = %g/s, answered 429%s",
                    ip,
                    self.endpoint,
                    limiter.rate,
                    more,
                    extra={"client": ip, "endpoint": self.endpoint, "status": 429},
                )
        return wait


def build_server(
    config: Config,
    ssl_context: ssl.SSLContext | None,
    turn_families: Collection[int] = (4, 6),
    role: WorkerRole | None = None,
    live: Callable[[], Config] | None = None,
    turn: TurnServer | None = None,
) -> tuple[_WSGIServer, SignalServer]:
    """Create (not start) the HTTP(S) server and the signaling server for ``config``;
    ``turn_families``: the address families the TURN server listens on; ``role``: a worker
    among several, whose listener the parent bound; ``live()``: the config now, which a
    reload replaces (for the app's per-request settings); ``turn``: the TURN server, for
    /readyz and /metrics (the server's ``monitor`` holds them all)."""
    general = config.general
    signal = SignalServer(
        keepalive=general.keepalive,
        max_message_size=general.max_message_size,
        idle_timeout=general.effective_idle_timeout,
    )
    # One limiter for both endpoints, with a bucket per (endpoint, IP): a burst of
    # /api/turn requests (the connection check makes four) never blocks a reconnect.
    limiter = RateLimiter(general.rate_limit)
    gates = [RequestGate(limiter, "/api/turn"), RequestGate(limiter, "/ws")]
    monitor = Monitor(
        signal,
        worker=f"{role.index}/{role.count}" if role is not None else "1/1",
        cluster_required=bool(config.cluster.redis_url),
    )
    monitor.turn = turn
    app = create_app(
        config,
        signal,
        rate_gate=gates[0],
        turn_families=turn_families,
        live=live,
        monitor=monitor,
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
    server.trusted_proxies = TrustedProxies(general.trusted_proxies)
    if server.trusted_proxies and general.max_connections_per_ip:
        # Forwarded clients' WebSocket sessions, per client address (see ConnectionCap).
        server.ws_limits = ConnectionLimits(0, general.max_connections_per_ip)
    # Always set, even with the limit off (a disabled limiter answers at once): a reload
    # may turn it on.
    server.upgrade_gate = gates[1]
    server.rate_gates = gates
    server.monitor = monitor
    monitor.http = server
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


class Reloader:
    """SIGHUP: read the config again (as at start-up) and apply what can change without
    dropping a connection (:data:`flaskrtc.reload.RELOADABLE`); name the rest in a warning.

    All or nothing: the new config and the certificate are read and checked first, and
    only when both are good is anything applied. Each part that uses a setting gets a new
    object (a Limits, a PeerPolicy, an SSLContext, a RateLimiter, the app's config); no
    WebSocket, TURN allocation or TLS connection is closed.
    """

    def __init__(
        self,
        load: Callable[[], Config],
        started: Config,
        running: Config,
        *,
        http: _WSGIServer,
        turn: TurnServer,
    ) -> None:
        """``load()``: the config from its sources, as at start-up; ``started``: what it
        gave then; ``running``: what runs (the ports really bound filled in)."""
        self.load = load
        self.started = started
        self.running = running
        self.http = http
        self.turn = turn
        self.fingerprint = ""  # of the certificate in use, for the log line

    def tls_servers(self) -> list[HandshakeGuard]:
        """The listeners whose handshakes use the certificate."""
        servers: list[HandshakeGuard] = [self.http] if self.running.general.tls else []
        return servers + self.turn.tls_servers()

    def reload(self) -> bool:
        """Reload; True if the new settings were applied. Never raises: a failure is logged
        and everything keeps running as it was."""
        try:
            return self._reload()
        except Exception:  # a bug here must not take the server down
            log.exception("reload failed: nothing changed, the old settings stay")
            return False

    def _reload(self) -> bool:
        try:
            new = self.load()
        except ConfigError as err:
            log.error("reload: %s: nothing reloaded, the old settings stay", err)
            return False
        merged = merge(self.running, new)
        # Everything that can fail comes before anything is applied.
        context, printed = None, ""
        servers = self.tls_servers()
        if servers:
            cert, key = Path(merged.general.cert), Path(merged.general.key)
            try:
                context = make_ssl_context(cert, key, gevent.ssl.SSLContext)
                printed = fingerprint(cert)
            except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
                log.error(
                    "reload: TLS certificate %s / key %s: %s: nothing reloaded, the old "
                    "certificate and settings stay",
                    cert,
                    key,
                    err,
                )
                return False
        limits, policy = turn_limits(merged.turn), peer_policy(merged.turn)
        credentials = turn_credentials(merged.turn)
        restart = restart_needed(self.started, new)
        if restart:
            log.warning(
                "reload: these keys need a restart: %s (not applied; they keep their "
                "running values)",
                ", ".join(restart),
            )
        applied = changed(self.running, merged)
        set_level(merged.log_level)
        for server in servers:
            if context is not None:
                server.use_context(context)
        self.turn.core.configure(limits=limits, policy=policy, credentials=credentials)
        if merged.general.rate_limit != self.running.general.rate_limit:
            limiter = RateLimiter(merged.general.rate_limit)
            for gate in self.http.rate_gates:
                gate.limiter = limiter
        self.running = merged
        parts = []
        if context is not None:
            state = "unchanged" if printed == self.fingerprint else "new"
            parts.append(f"certificate {merged.general.cert} (sha256 {printed}, {state})")
            self.fingerprint = printed
        parts.append("settings changed: " + ", ".join(applied) if applied else "no setting changed")
        log.info("reload: done: %s", "; ".join(parts))
        return True


def _sample_status(monitor: Monitor, stop: gevent.event.Event) -> None:
    """The status page's history: a sample every few seconds until ``stop``."""
    while not stop.wait(STATUS_TICK):
        monitor.sample(time.time())


def watched_files(config: Config) -> list[str]:
    """What ``[general] reload_watch`` looks at: the config file (if there is one) and, with
    TLS, the certificate and key."""
    paths = [str(config.config_path)] if config.config_path is not None else []
    if config.general.tls:
        paths += [config.general.cert, config.general.key]
    return paths


def _watch_files(reloader: Reloader, interval: float, stop: gevent.event.Event) -> None:
    """Every ``interval`` seconds: reload (as SIGHUP does) when a watched file has changed."""
    watch = FileWatch(watched_files(reloader.running))
    if not watch.paths:
        log.info("reload: reload_watch has nothing to watch (no config file, TLS off)")
        return
    log.info("reload: watching %s every %g s", ", ".join(watch.paths), interval)
    while not stop.wait(interval):
        found = watch.due()
        if found:
            log.info("reload: %s changed", ", ".join(found))
            reloader.reload()
            # A reload may have moved the certificate (a new path in the config).
            watch.retarget(watched_files(reloader.running))


def run(
    config: Config,
    role: WorkerRole | None = None,
    reload_config: Callable[[], Config] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; then close every peer with 1001 and release sockets.
    ``role``: this process is one worker of several (flaskrtc.workers). ``reload_config()``:
    the config read again from its sources; with it, SIGHUP reloads (:class:`Reloader`)."""
    _raise_fd_limit()
    if config.general.log_format == "json":
        route_gevent_errors()  # a failed greenlet's traceback as a JSON line too
    turn: TurnServer | None = None
    started = config
    reloader: Reloader | None = None

    def live() -> Config:
        # What the app reads on each request: the reloaded config once there is one.
        return reloader.running if reloader is not None else config

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
        server, signal = build_server(
            config, ssl_context, sorted(turn.families), role=role, live=live, turn=turn
        )
    except StartupError as err:
        if turn is not None:
            turn.stop()
        log.error("%s", err)
        return 1
    cluster = start_cluster(config, signal)
    if server.monitor is not None:
        server.monitor.cluster = cluster
    server.start()
    if reload_config is not None:
        reloader = Reloader(reload_config, started, config, http=server, turn=turn)
        if ssl_context is not None:
            try:
                reloader.fingerprint = fingerprint(Path(config.general.cert))
            except (OSError, ValueError):
                pass  # only for the log line: "new" on the first reload
        if hasattr(stdsignal, "SIGHUP"):  # Windows has none: [general] reload_watch there
            # gevent runs the handler in a greenlet of its own, between two others: no lock.
            # Set before the banner: once the log says it listens, a SIGHUP is not lost.
            gevent.signal_handler(stdsignal.SIGHUP, reloader.reload)
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
    helpers = []
    if config.metrics.enabled and server.monitor is not None:
        helpers.append(gevent.spawn(_sample_status, server.monitor, stop))
    if reloader is not None and config.general.reload_watch > 0:
        helpers.append(gevent.spawn(_watch_files, reloader, config.general.reload_watch, stop))
    stop.wait()
    for helper in helpers:
        helper.kill(block=False)
    log.info("shutting down: closing %d connection(s)", len(signal.conns))
    signal.shutdown()
    if cluster is not None:
        cluster.stop()  # this instance's peers leave the other instances now
    server.stop(timeout=1)
    turn.stop()
    log.info("stopped")
    return 0
