"""Process lifecycle: TLS material, the gevent WSGI server, the banner, clean shutdown."""

from __future__ import annotations

import logging
import signal as stdsignal
import socket
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
from flaskrtc.tls import ensure_certificate, make_ssl_context

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


def build_server(config: Config) -> tuple[WSGIServer, SignalServer]:
    """Create (not start) the HTTP(S) server and the signaling server for ``config``."""
    general = config.general
    signal = SignalServer(keepalive=general.keepalive, max_message_size=general.max_message_size)
    app = create_app(config, signal)
    kwargs: dict[str, Any] = {}
    if general.tls:
        cert, key = Path(general.cert), Path(general.key)
        hosts = [general.domain, config.turn.public_ip]
        try:
            if ensure_certificate(cert, key, hosts):
                log.info("generated a self-signed certificate: %s (key %s)", cert, key)
            kwargs["ssl_context"] = make_ssl_context(cert, key, gevent.ssl.SSLContext)
        except (OSError, ValueError, TypeError) as err:
            raise StartupError(f"TLS certificate {cert} / key {key}: {err}") from err
    family = socket.AF_INET6 if ":" in general.bind else socket.AF_INET
    listener = gevent.socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((general.bind, general.port))
        listener.listen(1024)
    except OSError as err:
        listener.close()
        raise StartupError(f"cannot listen on {general.bind}:{general.port}: {err}") from err
    server = WSGIServer(
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
    try:
        server, signal = build_server(config)
    except StartupError as err:
        log.error("%s", err)
        return 1
    server.start()
    host, port = server.socket.getsockname()[:2]
    scheme = "https" if config.general.tls else "http"
    for line in banner(config, scheme, host, port):
        log.info("%s", line)
    log.info(
        "turn: the built-in TURN relay is not part of this build yet; /api/turn issues "
        "credentials for turn:%s (use coturn with static-auth-secret meanwhile)",
        config.turn.port,
    )

    stop = gevent.event.Event()
    for signum in (stdsignal.SIGINT, stdsignal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    log.info("shutting down: closing %d connection(s)", len(signal.conns))
    signal.shutdown()
    server.stop(timeout=1)
    log.info("stopped")
    return 0
