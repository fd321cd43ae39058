"""HTTPS, /api/turn and static files on a real server."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import REPO, ServerProcess


def fetch(
    server: ServerProcess,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        server.base + path, data=body, method=method, headers=headers or {}
    )
    ctx = server.ssl_context() if server.tls else None
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def raw_get(server: ServerProcess, target: str) -> bytes:
    """GET with the request target sent exactly as written (no client-side normalising)."""
    sock = server.raw_socket()
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def test_tls_certificate_generated_with_sans_and_private_key(server: ServerProcess) -> None:
    cert_path = server.workdir / "certs" / "cert.pem"
    key_path = server.workdir / "certs" / "key.pem"
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1"} <= ips
    server.wait_for_log("self-signed certificate")
    # The client verifies the chain and the 127.0.0.1 SAN (no CERT_NONE anywhere).
    status, _, _ = fetch(server, "/")
    assert status == 200


def test_plain_http_is_refused_on_the_tls_port(server: ServerProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    sock.close()
    assert not data.startswith(b"HTTP/1.1 200")
    # and the listener is still fine afterwards
    assert fetch(server, "/")[0] == 200


def test_api_turn_get_returns_coturn_compatible_credentials(server: ServerProcess) -> None:
    before = int(time.time())
    status, headers, body = fetch(server, "/api/turn?service=turn&username=flutter-webrtc")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Content-Type"].startswith("application/json")
    data = json.loads(body)
    expiry, _, user = data["username"].partition(":")
    assert user == "flutter-webrtc"
    assert before + 86400 <= int(expiry) <= int(time.time()) + 86400
    expected = base64.b64encode(
        hmac.new(b"test-secret", data["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert data["password"] == expected
    assert data["ttl"] == 86400
    # The ports really bound (the test config asks for free ones), UDP first; TLS is off.
    assert data["uris"] == [
        f"turn:127.0.0.1:{server.turn_port}?transport=udp",
        f"turn:127.0.0.1:{server.turn_port}?transport=tcp",
    ]


def test_api_turn_post_form_and_json(server: ServerProcess) -> None:
    status, headers, body = fetch(
        server,
        "/api/turn",
        method="POST",
        body=b"service=turn&username=bob",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and json.loads(body)["username"].endswith(":bob")
    assert headers["Access-Control-Allow-Origin"] == "*"
    status, _, body = fetch(
        server,
        "/api/turn",
        method="POST",
        body=json.dumps({"service": "turn", "username": "carol"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and json.loads(body)["username"].endswith(":carol")


def test_api_turn_preflight(server: ServerProcess) -> None:
    status, headers, _ = fetch(server, "/api/turn", method="OPTIONS")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?username=bob",
        "?service=stun&username=bob",
        "?service=turn",
        "?service=turn&username=",
        "?service=turn&username=a:b",
        "?service=turn&username=" + "x" * 200,
    ],
)
def test_api_turn_bad_input_is_400_json(server: ServerProcess, query: str) -> None:
    status, headers, body = fetch(server, "/api/turn" + query)
    assert status == 400
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(body)["error"]


def test_api_turn_uses_request_host_without_public_ip(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, tls=False, extra={"turn.public_ip": ""})
    try:
        status, _, body = fetch(
            srv, "/api/turn?service=turn&username=u", headers={"Host": "turn.example.org:8086"}
        )
        assert status == 200
        assert json.loads(body)["uris"] == [
            f"turn:turn.example.org:{srv.turn_port}?transport=udp",
            f"turn:turn.example.org:{srv.turn_port}?transport=tcp",
        ]
    finally:
        srv.stop()


def test_static_index_and_mime_types(server: ServerProcess) -> None:
    status, headers, body = fetch(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body == (REPO / "web" / "index.html").read_bytes()
    for path, mime in (
        ("/js/app.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ):
        status, headers, _ = fetch(server, path)
        assert status == 200 and headers["Content-Type"].startswith(mime), (path, headers)
    status, headers, _ = fetch(server, "/index.html")
    assert status == 200


def test_directory_serves_its_index(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("top")
    (root / "sub" / "index.html").write_text("inner")
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    srv = ServerProcess(tmp_path, tls=False, extra={"general.html_root": str(root)})
    try:
        assert fetch(srv, "/sub/")[2] == b"inner"
        assert fetch(srv, "/sub")[2] == b"inner"
        assert fetch(srv, "/nope.html")[0] == 404
        for target in (
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/..%2fsecret.txt",
            "/sub/%2e%2e/%2e%2e/secret.txt",
            "/%2e%2e%2fsecret.txt",
            "/sub/..%5c..%5csecret.txt",
            "//etc/passwd",
            "/%00",
        ):
            response = raw_get(srv, target)
            assert b"TOP-SECRET" not in response and b"root:" not in response, target
            assert response.split(b" ", 2)[1] in (b"400", b"404"), (target, response[:80])
    finally:
        srv.stop()


def test_ssl_verification_fails_for_a_wrong_hostname(server: ServerProcess) -> None:
    ctx = server.ssl_context()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(sock, server_hostname="not-this-host.example")
    sock.close()


def test_turn_uris_order_hosts_and_tls() -> None:
    from flaskrtc.app import turn_uris
    from flaskrtc.config import Config, GeneralConfig, TurnConfig

    config = Config(GeneralConfig(domain="rtc.example.org"), TurnConfig(public_ip="203.0.113.5"))
    assert turn_uris(config, "ignored:8086") == [
        "turn:203.0.113.5:19302?transport=udp",
        "turn:203.0.113.5:19302?transport=tcp",
        "turns:rtc.example.org:5349?transport=tcp",
    ]
    v6 = Config(GeneralConfig(), TurnConfig(public_ip="2001:db8::5", tls_port=0))
    assert turn_uris(v6, "x") == [
        "turn:[2001:db8::5]:19302?transport=udp",
        "turn:[2001:db8::5]:19302?transport=tcp",
    ]
    # No public_ip: the host the client used (IPv6 literal kept in brackets).
    local = Config(GeneralConfig(), TurnConfig())
    assert turn_uris(local, "[::1]:8086")[0] == "turn:[::1]:19302?transport=udp"
    assert turn_uris(local, "[::1]:8086")[2] == "turns:[::1]:5349?transport=tcp"


def test_turn_uris_name_only_families_turn_listens_on() -> None:
    from flaskrtc.app import turn_uris
    from flaskrtc.config import Config, GeneralConfig, TurnConfig

    both = Config(GeneralConfig(), TurnConfig(public_ip="203.0.113.5, 2001:db8::5", tls_port=0))
    v4_first = [
        "turn:203.0.113.5:19302?transport=udp",
        "turn:203.0.113.5:19302?transport=tcp",
        "turn:[2001:db8::5]:19302?transport=udp",
        "turn:[2001:db8::5]:19302?transport=tcp",
    ]
    assert turn_uris(both, "x", (4, 6), client_family=4) == v4_first
    # A client that came over IPv6 gets the IPv6 address first (the apps use uris[0]).
    assert turn_uris(both, "x", (4, 6), client_family=6) == v4_first[2:] + v4_first[:2]
    assert turn_uris(both, "x", (4,), client_family=6) == v4_first[:2]
    local = Config(GeneralConfig(), TurnConfig(tls_port=0))
    # TURN on IPv4 only: a page on [::1] is given IPv4 loopback, never [::1].
    assert turn_uris(local, "[::1]:8086", (4,)) == [
        "turn:127.0.0.1:19302?transport=udp",
        "turn:127.0.0.1:19302?transport=tcp",
    ]
    assert turn_uris(local, "127.0.0.1:8086", (6,))[0] == "turn:[::1]:19302?transport=udp"
    bound = Config(GeneralConfig(), TurnConfig(bind="198.51.100.4", tls_port=0))
    assert turn_uris(bound, "[2001:db8::9]:8086", (4,))[0] == (
        "turn:198.51.100.4:19302?transport=udp"
    )
    # No address of a listened family is known: nothing rather than a dead URI.
    wild = Config(GeneralConfig(), TurnConfig(bind="0.0.0.0", tls_port=0))
    assert turn_uris(wild, "[2001:db8::9]:8086", (4,)) == []
    # [turn] servers follow this server's own URIs, always.
    more = ("turn:turn2.example.org:3478?transport=udp",)
    extra = Config(GeneralConfig(), TurnConfig(tls_port=0, servers=more))
    assert turn_uris(extra, "127.0.0.1:8086")[2:] == list(more)
    assert turn_uris(
        dataclasses.replace(extra, turn=dataclasses.replace(extra.turn, bind="0.0.0.0")),
        "[2001:db8::9]:8086",
        (4,),
    ) == list(more)
    # A host name is the client's to resolve: kept.
    assert turn_uris(wild, "rtc.example.org", (4,))[0] == "turn:rtc.example.org:19302?transport=udp"


def test_dotfiles_are_never_served(tmp_path: Path) -> None:
    root = tmp_path / "site"
    for name in (".env", ".git/config", "sub/.secret", ".hidden/page.html", "sub/.well/x.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("TOP-SECRET")
    (root / "index.html").write_text("top")
    (root / "sub" / "ok.txt").write_text("fine")
    srv = ServerProcess(tmp_path, tls=False, extra={"general.html_root": str(root)})
    try:
        assert fetch(srv, "/sub/ok.txt")[2] == b"fine"
        for target in (
            "/.env",
            "/.git/config",
            "/.git/",
            "/sub/.secret",
            "/.hidden/page.html",
            "/sub/.well/x.txt",
            "/%2egit/config",
            "/sub/%2Esecret",
        ):
            response = raw_get(srv, target)
            assert response.split(b" ", 2)[1] == b"404", (target, response[:80])
            assert b"TOP-SECRET" not in response, target
    finally:
        srv.stop()


def test_security_headers_on_every_response(server: ServerProcess) -> None:
    for path in ("/", "/check.html", "/js/app.js", "/api/turn?service=turn&username=h", "/nope"):
        _, headers, _ = fetch(server, path)
        assert headers["X-Content-Type-Options"] == "nosniff", path
        csp = headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        # Code, styles and images from this server only; no plugins, no framing.
        for name in ("default-src", "script-src", "style-src", "img-src"):
            assert directives[name] == "'self'", (path, csp)
        assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert headers["Referrer-Policy"] == "no-referrer"
