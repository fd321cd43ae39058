"""Process lifecycle: TLS material, the gevent WSGI server, the banner, clean shutdown."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import signal as stdsignal
import socket
import ssl
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.socket
import gevent.ssl
from gevent.pywsgi import WSGIServer

from flaskrtc import __version__
from flaskrtc.app import create_app
from flaskrtc.config import Config
from flaskrtc.signal.server import SignalingHandler, SignalServer
from flaskrtc.tls import HandshakeGuard, ensure_certificate, make_ssl_context
from flaskrtc.turn.addressing import is_wildcard
from flaskrtc.turn.auth import Credentials, Nonces
from flaskrtc.turn.core import Limits, TurnCore
from flaskrtc.turn.policy import PeerPolicy
from flaskrtc.turn.server import TurnServer, UdpRelayPorts, relay_addressing

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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def banner(config: Config, scheme: str, host: str, port: int) -> list[str]:
    """The start-up lines: where to point a browser, the apps and ICE clients."""
    ws = "wss" if scheme == "https" else "ws"
    shown = ["localhost"] if host in ("0.0.0.0", "::") else [_url_host(host)]
    if config.general.domain not in ("", "localhost") and host in ("0.0.0.0", "::"):
        shown.append(config.general.domain)
    lines = [f"flaskrtc {__version__} listening on {scheme}://{_url_host(host)}:{port}"]
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
    hosts = [general.domain, config.turn.public_ip]
    try:
        if ensure_certificate(cert, key, hosts):
            log.info("generated a self-signed certificate: %s (key %s)", cert, key)
        return make_ssl_context(cert, key, gevent.ssl.SSLContext)
    except (OSError, ValueError, TypeError) as err:
        raise StartupError(f"TLS certificate {cert} / key {key}: {err}") from err


def build_turn(config: Config, ssl_context: ssl.SSLContext | None) -> TurnServer:
    """Create and start the TURN server; its real ports are in its *_address attributes."""
    turn = config.turn
    addressing = relay_addressing(turn.public_ip, turn.bind)
    ports = UdpRelayPorts(addressing=addressing, min_port=turn.min_port, max_port=turn.max_port)
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
            total_quota=turn.total_quota,
            max_permissions=turn.max_permissions,
            max_channels=turn.max_channels,
        ),
    )
    server = TurnServer(core)
    ports.on_open = server.start_relay
    try:
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


class _WSGIServer(HandshakeGuard, WSGIServer):  # type: ignore[misc]
    """gevent's WSGI server with guarded TLS handshakes."""


def build_server(
    config: Config, ssl_context: ssl.SSLContext | None
) -> tuple[WSGIServer, SignalServer]:
    """Create (not start) the HTTP(S) server and the signaling server for ``config``."""
    general = config.general
    signal = SignalServer(keepalive=general.keepalive, max_message_size=general.max_message_size)
    app = create_app(config, signal)
    kwargs: dict[str, Any] = {}
    if general.tls:
        kwargs["ssl_context"] = ssl_context
    family = socket.AF_INET6 if ":" in general.bind else socket.AF_INET
    listener = gevent.socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((general.bind, general.port))
        listener.listen(1024)
    except OSError as err:
        listener.close()
        raise StartupError(f"cannot listen on {general.bind}:{general.port}: {err}") from err
    server = _WSGIServer(
        listener,
        app,
        handler_class=SignalingHandler,
        log=_LogWriter(http_log, logging.INFO),
        error_log=_LogWriter(http_log, logging.ERROR),
        **kwargs,
    )
    return server, signal


def run(config: Config) -> int:
    """Serve until SIGINT/SIGTERM; then close every peer with 1001 and release sockets."""
    _raise_fd_limit()
    turn: TurnServer | None = None
    try:
        ssl_context = _ssl_context(config)
        turn = build_turn(config, ssl_context)
        # /api/turn must name the ports really bound (port 0 picks free ones).
        assert turn.udp_address is not None
        tls_port = turn.tls_address[1] if turn.tls_address else 0
        config = dataclasses.replace(
            config,
            turn=dataclasses.replace(config.turn, port=turn.udp_address[1], tls_port=tls_port),
        )
        server, signal = build_server(config, ssl_context)
    except StartupError as err:
        if turn is not None:
            turn.stop()
        log.error("%s", err)
        return 1
    server.start()
    host, port = server.socket.getsockname()[:2]
    scheme = "https" if config.general.tls else "http"
    for line in banner(config, scheme, host, port):
        log.info("%s", line)
    turn_host = _url_host(config.turn.bind)
    log.info(
        "turn: listening on udp and tcp %s:%d%s; relay ports %d-%d",
        turn_host,
        config.turn.port,
        f", tls {turn_host}:{config.turn.tls_port}" if config.turn.tls_port else "",
        config.turn.min_port,
        config.turn.max_port,
    )

    stop = gevent.event.Event()
    for signum in (stdsignal.SIGINT, stdsignal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    log.info("shutting down: closing %d connection(s)", len(signal.conns))
    signal.shutdown()
    server.stop(timeout=1)
    turn.stop()
    log.info("stopped")
    return 0
