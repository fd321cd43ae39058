"""Failed and stalled TLS handshakes on the HTTPS and TURN-over-TLS listeners."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from pathlib import Path

import gevent
import gevent.socket
import gevent.ssl
import pytest
from gevent.server import StreamServer

from flaskrtc.tls import HandshakeGuard, ensure_certificate, make_ssl_context
from tests.conftest import ServerProcess, free_port


def untrusting_client(port: int) -> None:
    """Connect the way a browser does before its user accepts a self-signed certificate."""
    ctx = ssl.create_default_context()  # system CAs only: our certificate is unknown
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def test_refused_certificate_is_one_log_line_not_a_traceback(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, extra={"turn.tls_port": str(free_port())})
    try:
        turn_tls = srv.turn_tls_port
        assert turn_tls, "the test server should listen for TURN over TLS"
        for port in (srv.port, turn_tls):
            untrusting_client(port)
        srv.wait_for_log(r"TLS handshake failed: the client does not trust the certificate")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to the TLS port
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
                while sock.recv(4096):
                    pass  # until the server closes
        # Both listeners logged, and the server still answers a well-behaved client.
        with srv.ssl_context().wrap_socket(
            socket.create_connection(("127.0.0.1", srv.port), timeout=5),
            server_hostname="127.0.0.1",
        ) as tls:
            tls.sendall(b"GET /api/turn?service=turn&username=u HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(12).startswith(b"HTTP/1.1 200")
        failures = [line for line in srv.lines if "TLS handshake failed" in line]
        assert len(failures) >= 3, srv.lines
        assert not any("Traceback" in line or "SSLError" in line for line in srv.lines), srv.lines
    finally:
        assert srv.stop() == 0


class _Guarded(HandshakeGuard, StreamServer):  # type: ignore[misc]
    handshake_timeout = 0.3


def test_stalled_handshake_is_closed_after_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_certificate(cert, key, ["127.0.0.1"])
    handled: list[object] = []
    server = _Guarded(
        ("127.0.0.1", 0),
        lambda sock, address: handled.append(address),
        ssl_context=make_ssl_context(cert, key, gevent.ssl.SSLContext),
    )
    server.start()
    caplog.set_level(logging.INFO, logger="flaskrtc.tls")
    try:
        client = gevent.socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
        started = time.monotonic()
        assert client.recv(1) == b""  # says nothing; the server gives up and closes
        assert time.monotonic() - started < 4
        client.close()
        assert handled == []
        assert "no handshake in time" in caplog.text
    finally:
        server.stop()
        gevent.sleep(0)
