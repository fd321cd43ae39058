"""The Flask app: static web demo at ``/``, signaling at ``/ws``, credentials at ``/api/turn``."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import mimetypes
import time
from collections.abc import Callable, Collection
from pathlib import Path

from flask import Flask, Response, abort, jsonify, request, send_from_directory
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, NotFound

from flaskrtc import __version__
from flaskrtc.auth import TokenError, verify_token
from flaskrtc.config import Config, public_ips
from flaskrtc.metrics import CONTENT_TYPE, Monitor
from flaskrtc.ratelimit import retry_after_header
from flaskrtc.resources import resolve_html_root
from flaskrtc.signal.server import TRANSPORT_KEY, SignalServer
from flaskrtc.status import STATUS_CSS, STATUS_HTML, STATUS_JS
from flaskrtc.turn.addressing import LOOPBACK, url_host
from flaskrtc.turn.credentials import CredentialError, make_credential

log = logging.getLogger("flaskrtc.http")

# Types the web demo needs, registered here so they do not depend on the host's
# /etc/mime.types (browsers refuse JavaScript modules served as text/plain).
for _type, _ext in (
    ("text/javascript", ".js"),
    ("text/javascript", ".mjs"),
    ("text/css", ".css"),
    ("text/html", ".html"),
    ("application/json", ".json"),
    ("application/manifest+json", ".webmanifest"),
    ("application/wasm", ".wasm"),
    ("image/svg+xml", ".svg"),
    ("image/png", ".png"),
    ("image/x-icon", ".ico"),
):
    mimetypes.add_type(_type, _ext)


# Every page of the demo loads its scripts, styles and images from this server only, and
# never runs inline code; it may connect (fetch, WebSocket) to another flaskrtc, because
# its "Server" setting points it at one, so connect-src names schemes, not this origin alone.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "media-src 'self'",
        "connect-src 'self' https: wss: http: ws:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # A page opened with ?token= must not hand its URL to anyone else.
    "Referrer-Policy": "no-referrer",
}


def _host_of(host_header: str) -> str:
    """The host part of a Host header: ``[::1]:8086`` → ``[::1]``, ``a.b:8086`` → ``a.b``."""
    if host_header.startswith("["):
        end = host_header.find("]")
        return host_header[: end + 1] if end > 0 else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _family(host: str) -> int | None:
    """4 or 6 for an IP literal (``[::1]`` too), None for a host name."""
    try:
        return ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return None


def turn_uris(
    config: Config,
    request_host: str,
    families: Collection[int] = (4, 6),
    client_family: int = 4,
) -> list[str]:
    """The ICE server URIs for /api/turn: UDP first (the apps use only ``uris[0]``).

    ``families`` are the address families the TURN server listens on: an address of any
    other family is never handed out. With ``[turn] public_ip`` its addresses are used, the
    one of ``client_family`` (how the client reached /api/turn) first; else the host the
    client used, or, when that is an address of a family TURN does not listen on, its
    loopback or ``[turn] bind`` counterpart, else nothing (an empty list, logged).
    """
    turn = config.turn
    hosts = [ip for ip in public_ips(turn.public_ip) if _family(ip) in families]
    hosts.sort(key=lambda ip: _family(ip) != client_family)
    if not hosts:
        host = _host_of(request_host).strip("[]") or "127.0.0.1"
        family = _family(host)
        if family is not None and family not in families:
            bind = turn.bind if _family(turn.bind) in families else ""
            if ipaddress.ip_address(host).is_loopback:
                host = LOOPBACK[6 if family == 4 else 4]
            elif bind and not ipaddress.ip_address(bind).is_unspecified:
                host = bind
            else:
                log.warning(
                    "/api/turn: TURN does not listen on IPv%d, which this client used (%s): "
                    "no TURN URI to give; set [turn] public_ip or [turn] bind = ::",
                    family,
                    host,
                )
                return list(turn.servers)
        hosts = [host]
    uris: list[str] = []
    for host in hosts:
        uris.append(f"turn:{url_host(host)}:{turn.port}?transport=udp")
        uris.append(f"turn:{url_host(host)}:{turn.port}?transport=tcp")
    if turn.tls_port:
        # The certificate names `domain`; with the default "localhost" the client's own
        # host name is the better guess.
        domain = config.general.domain
        tls_hosts = [domain] if domain and domain != "localhost" else hosts
        for host in tls_hosts:
            uris.append(f"turns:{url_host(host)}:{turn.tls_port}?transport=tcp")
    # [turn] servers: other TURN servers sharing the secret, after this one's own URIs.
    return uris + [uri for uri in turn.servers if uri not in uris]


def create_app(
    config: Config,
    signal: SignalServer,
    *,
    clock: Callable[[], float] = time.time,
    rate_gate: Callable[[str], float] | None = None,
    turn_families: Collection[int] = (4, 6),
    live: Callable[[], Config] | None = None,
    monitor: Monitor | None = None,
) -> Flask:
    """Build the Flask app for ``config``; ``signal`` serves the WebSocket connections.

    ``rate_gate(ip)`` limits /api/turn: 0 lets a request through, else it is answered 429
    with that many seconds in ``Retry-After``. ``turn_families``: the address families the
    TURN server listens on (the only ones /api/turn names). ``live()``: the config now (a
    reload replaces it), asked on each request; without it ``config`` stays. ``monitor``:
    what /readyz and /metrics report (the process's servers); a new one, knowing only
    ``signal``, if None.
    """

    def current() -> Config:
        return live() if live is not None else config

    if monitor is None:
        monitor = Monitor(signal, cluster_required=bool(config.cluster.redis_url))
    # [metrics] needs a restart to change (flaskrtc/reload.py): read once.
    metrics = config.metrics
    metrics_allow = [ipaddress.ip_network(net) for net in metrics.allow]
    metrics_token = metrics.token.encode()
    html_root = resolve_html_root(config.general.html_root)
    if html_root != Path(config.general.html_root).resolve():
        # Which copy: the binary's, the installed package's or the checkout's.
        log.info("web demo files: %s (no ./web here)", html_root)
    app = Flask("flaskrtc", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024

    def client_ip() -> str:
        # REMOTE_ADDR: the TCP peer, or the client a trusted proxy names (SignalingHandler).
        return request.remote_addr or "?"

    def check_token(where: str) -> str | None:
        """None if access is granted (or [auth] is off), else why it is refused."""
        secret = current().auth.secret
        if not secret:
            return None
        peer_id = request.args.get("id", "")
        try:
            verify_token(secret, peer_id, request.args.get("token", ""), clock())
        except TokenError as err:
            # The token itself is never logged: it is a credential while it is valid.
            log.warning(
                "%s: %s refused: %s (id %r)",
                client_ip(),
                where,
                err.reason,
                peer_id[:128],
                extra={
                    "client": client_ip(),
                    "endpoint": where,
                    "peer": peer_id[:128],
                    "reason": err.reason,
                    "status": 401 if where == "/api/turn" else 4401,
                },
            )
            return err.reason
        return None

    def refuse_400(reason: str) -> None:
        # DEBUG: a client's own mistake, not the operator's concern at INFO.
        log.debug(
            "%s: /api/turn answered 400: %s",
            client_ip(),
            reason,
            extra={"client": client_ip(), "endpoint": "/api/turn", "status": 400},
        )

    @app.after_request
    def headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.path in ("/healthz", "/readyz", "/metrics", "/status", "/status.json"):
            response.headers["Cache-Control"] = "no-store"  # a probe must see the present
        if request.path == "/api/turn":
            # The web app may be hosted on another origin (docs/protocol.md §9).
            response.headers["Access-Control-Allow-Origin"] = "*"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.route("/api/turn", methods=["GET", "POST", "OPTIONS"])
    def api_turn() -> Response | tuple[Response, int]:
        if rate_gate is not None:
            wait = rate_gate(client_ip())
            if wait > 0:
                response = jsonify(error="too many requests: retry later")
                response.headers["Retry-After"] = retry_after_header(wait)
                return response, 429
        if request.method == "OPTIONS":
            return Response(status=204)
        refused = check_token("/api/turn")
        if refused is not None:
            response = jsonify(error=f"unauthorized: {refused}")
            response.headers["WWW-Authenticate"] = 'Token realm="flaskrtc"'
            return response, 401
        values: dict[str, str] = dict(request.values.items())
        if request.is_json:
            body = request.get_json(silent=True)
            if isinstance(body, dict):
                values.update((k, v) for k, v in body.items() if isinstance(v, str))
        settings = current()  # one config for the whole answer, even across a reload
        service = values.get("service")
        if service != "turn":
            refuse_400("service must be 'turn'")
            return jsonify(error="service must be 'turn'"), 400
        try:
            cred = make_credential(
                settings.turn.secret, values.get("username") or "", clock(), settings.turn.ttl
            )
        except CredentialError as err:
            refuse_400(str(err))
            return jsonify(error=str(err)), 400
        monitor.credentials_issued += 1
        return jsonify(
            username=cred.username,
            password=cred.password,
            ttl=cred.ttl,
            uris=turn_uris(
                settings, request.host, turn_families, _family(client_ip().split("%")[0]) or 4
            ),
        )

    # Health probes: no rate limit, no [metrics] protection (load balancers must reach them).
    @app.route("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok", version=__version__, worker=monitor.worker)

    @app.route("/readyz")
    def readyz() -> tuple[Response, int]:
        checks = monitor.readiness()
        down = [name for name, state in checks.items() if state != "up"]
        status = "ready" if not down else "unavailable"
        body = jsonify(status=status, down=down, checks=checks, worker=monitor.worker)
        return body, 503 if down else 200

    def metrics_refusal(*, token_in_query: bool = False, token: bool = True) -> Response | None:
        """None when this request may read /metrics, else the 403 or 401 answer.
        ``token_in_query``: ``?token=`` counts too (the status page, which a browser opens
        with no header of its own); ``token``: the token is asked for at all (not for the
        page's script and style, which carry no numbers)."""
        if metrics_allow:
            try:
                address = ipaddress.ip_address(client_ip().split("%")[0])
            except ValueError:
                address = None
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            if address is None or not any(address in net for net in metrics_allow):
                return Response(
                    "address not allowed ([metrics] allow)\n", 403, mimetype="text/plain"
                )
        if metrics_token and token:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            given = value.strip().encode()
            if token_in_query and not value:
                scheme, given = "bearer", request.args.get("token", "").encode()
            # compare_digest: the time taken does not tell how much of a guess was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, metrics_token):
                response = Response("bearer token required\n", 401, mimetype="text/plain")
                response.headers["WWW-Authenticate"] = 'Bearer realm="flaskrtc metrics"'
                return response
        return None

    @app.route("/metrics")
    def metrics_page() -> Response:
        if not metrics.enabled:
            raise NotFound()
        refused = metrics_refusal()
        if refused is not None:
            return refused
        return Response(monitor.exposition(), 200, content_type=CONTENT_TYPE)

    # The status page: the same protection as /metrics (see metrics_refusal).
    @app.route("/status")
    def status_page() -> Response:
        if not metrics.enabled:
            raise NotFound()
        refused = metrics_refusal(token_in_query=True)
        if refused is not None:
            return refused
        return Response(STATUS_HTML, 200, mimetype="text/html")

    @app.route("/status/<name>")
    def status_asset(name: str) -> Response:
        assets = {
            "status.js": (STATUS_JS, "text/javascript"),
            "status.css": (STATUS_CSS, "text/css"),
        }
        if not metrics.enabled or name not in assets:
            raise NotFound()
        refused = metrics_refusal(token=False)
        if refused is not None:
            return refused
        text, mimetype = assets[name]
        return Response(text, 200, mimetype=mimetype)

    @app.route("/status.json")
    def status_json() -> Response:
        if not metrics.enabled:
            raise NotFound()
        refused = metrics_refusal()
        if refused is not None:
            return refused
        return jsonify(monitor.status(clock()))

    @app.route("/ws", websocket=True)
    def ws() -> Response:
        transport = request.environ.get(TRANSPORT_KEY)
        if transport is None:  # pragma: no cover - the handler always sets it
            abort(400)
        # Browsers cannot read the status of a refused upgrade, so a bad token is said in
        # an `error` message and a 4401 close on the open socket (docs/protocol.md §11).
        refused = check_token("/ws")
        if refused is not None:
            signal.serve(transport, refusal=f"unauthorized: {refused}")
        elif current().auth.secret:
            signal.serve(transport, peer_id=request.args.get("id", ""))
        else:
            signal.serve(transport)
        return Response(status=101)

    @app.route("/ws")
    def ws_plain() -> tuple[str, int, dict[str, str]]:
        return (
            "This is the signaling WebSocket: connect with ws:// or wss://\n",
            426,
            {
                "Upgrade": "websocket",
                "Content-Type": "text/plain",
            },
        )

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def static_files(path: str) -> Response:
        # send_from_directory refuses any path that leaves html_root (safe_join), after
        # percent-decoding, so "%2e%2e/" is refused as well as "../".
        if any(part.startswith(".") for part in path.split("/")):
            # Dotfiles and dot-folders (.git, .env, editor swap files) are never published.
            raise NotFound()
        target = html_root / path if path else html_root
        try:
            if target.is_dir():
                path = (path.rstrip("/") + "/index.html").lstrip("/")
        except (OSError, ValueError):
            raise NotFound() from None
        return send_from_directory(html_root, path)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> ResponseReturnValue:
        if request.path.startswith("/api/"):
            return jsonify(error=err.description), err.code or 500
        return err

    return app
