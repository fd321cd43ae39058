"""Slow and greedy HTTP clients on a real server: one deadline for the TLS handshake and one
for the request head, connection caps in total and per IP, per-IP rate limits (429)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
import pytest
from gevent.server import StreamServer

from flaskrtc.tls import HandshakeGuard, ensure_certificate, make_ssl_context
from tests.conftest import ServerProcess


def client_hello() -> bytes:
    """The first flight of a real TLS client (its ClientHello), to trickle byte by byte."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def trickle(sock: socket.socket, data: bytes, interval: float, give_up: float) -> float | None:
    """Send ``data`` one byte per ``interval``; the seconds until the server closed, or None
    if it was still open after ``give_up`` seconds."""
    started = time.monotonic()
    sock.settimeout(interval)
    for byte in data:
        if time.monotonic() - started > give_up:
            return None
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(1) == b"":  # waits one interval for the server to hang up
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset, or a pipe broken by the server's close
            return time.monotonic() - started
    return None


def test_trickled_tls_handshake_and_request_head_are_cut_at_10_s(server: ServerProcess) -> None:
    results: dict[str, float | None] = {}

    def tls_trickler() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            results["tls"] = trickle(sock, client_hello() * 4, 0.5, give_up=14)

    def head_trickler() -> None:
        tls = server.raw_socket()  # a finished handshake, then a head that never ends
        with tls:
            head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100
            results["head"] = trickle(tls, head, 0.5, give_up=14)

    threads = [threading.Thread(target=tls_trickler), threading.Thread(target=head_trickler)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    # A byte every half second never restarts the clock: each gets 10 s in all.
    for what in ("tls", "head"):
        took = results.get(what)
        assert took is not None, f"{what}: still open after 14 s of trickling"
        assert 9.0 <= took <= 12.5, (what, took)
    server.wait_for_log(r"127\.0\.0\.1: request head not complete in 10 s, closed")
    server.wait_for_log(r"TLS handshake failed: no handshake in time")


class _Guarded(HandshakeGuard, StreamServer):  # type: ignore[misc]
    handshake_timeout = 0.6


def test_handshake_deadline_is_total_not_per_byte(tmp_path: Path) -> None:
    # In-process, with a short deadline: bytes every 0.1 s would restart a per-read timeout.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_certificate(cert, key, ["127.0.0.1"])
    handled: list[object] = []
    server = _Guarded(
        ("127.0.0.1", 0),
        lambda sock, address: handled.append(address),
        ssl_context=make_ssl_context(cert, key, gevent.ssl.SSLContext),
    )
    server.start()
    try:
        client = gevent.socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
        hello = client_hello()
        started = time.monotonic()
        closed_after: float | None = None
        for byte in hello[:60]:
            try:
                client.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            client.settimeout(0.1)
            try:
                if client.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
        client.close()
        assert closed_after is not None, "the handshake was still open after 60 trickled bytes"
        assert 0.5 <= closed_after <= 2.0, closed_after
        assert handled == []
    finally:
        server.stop()
        gevent.sleep(0)


def ws_upgrade(server: ServerProcess) -> bytes:
    """The status line of a WebSocket upgrade on a fresh connection (closed afterwards)."""
    sock = server.raw_socket()
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    sock.close()
    return head


def refused_at_once(port: int) -> bool:
    """True if the server closes a new TCP connection without waiting for anything."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(3)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False  # admitted: the server waits for our TLS handshake


def poll(condition: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_connections_per_ip_are_capped_with_one_log_line(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, extra={"general.max_connections_per_ip": "3"})
    try:
        held = [srv.connect() for _ in range(3)]
        for n, client in enumerate(held):
            client.send("keepalive", {"n": n})
            assert client.expect("keepalive")["data"] == {"n": n}
        assert all(refused_at_once(srv.port) for _ in range(20))
        refusals = [line for line in srv.lines if "refused a connection" in line]
        assert len(refusals) == 1, refusals  # 20 refused, one line (the next in 10 s counts)
        assert "WARNING" in refusals[0]
        assert "from 127.0.0.1: [general] max_connections_per_ip = 3 reached" in refusals[0]
        # The held connections are untouched, and a slot freed is a slot to take.
        held[0].send("keepalive", {"still": 0})
        assert held[0].expect("keepalive")["data"] == {"still": 0}
        held.pop().close()
        assert poll(lambda: not refused_at_once(srv.port)), "the freed slot never came back"
        for client in held:
            client.close()
    finally:
        srv.stop()


def test_total_connections_are_capped(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path,
        extra={"general.max_connections": "2", "general.max_connections_per_ip": "0"},
    )
    try:
        held = [srv.connect() for _ in range(2)]
        assert refused_at_once(srv.port)
        srv.wait_for_log(
            r"WARNING .*refused a connection from 127\.0\.0\.1: "
            r"\[general\] max_connections = 2 reached"
        )
        held.pop().close()
        assert poll(lambda: not refused_at_once(srv.port))
        for client in held:
            client.close()
    finally:
        srv.stop()


def test_rate_limit_answers_429_with_retry_after_per_endpoint(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, extra={"general.rate_limit": "2"})  # bursts of 4
    try:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", srv.port, context=srv.ssl_context(), timeout=10
        )

        def api_turn() -> http.client.HTTPResponse:
            conn.request("GET", "/api/turn?service=turn&username=u")
            response = conn.getresponse()
            response.read()
            return response

        statuses = [api_turn().status for _ in range(4)]
        assert statuses == [200] * 4
        limited = api_turn()
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["Access-Control-Allow-Origin"] == "*"
        # The WebSocket upgrade has buckets of its own: four pass, the fifth is refused.
        heads = [ws_upgrade(srv) for _ in range(5)]
        assert [h.split(b" ")[1] for h in heads] == [b"101"] * 4 + [b"429"], heads
        assert b"retry-after: " in heads[4].lower()
        for endpoint in ("/api/turn", "/ws"):
            srv.wait_for_log(
                rf"WARNING .*127\.0\.0\.1: {endpoint} over \[general\] rate_limit = 2/s"
            )
        # After the wait it names, the client is served again.
        time.sleep(int(limited.headers["Retry-After"]))  # the wait the server asked for
        assert api_turn().status == 200
        conn.close()
    finally:
        srv.stop()


def test_default_rate_limit_is_20_per_second_with_bursts_of_40(server: ServerProcess) -> None:
    # 60 clients at once from one address (threads, each its own connection).
    n = 60
    barrier = threading.Barrier(n + 1)
    answers: list[tuple[int, bytes]] = []

    def one() -> None:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=server.ssl_context(), timeout=20
        )
        conn.connect()  # the handshake before the start, so the requests bunch up
        barrier.wait(20)
        conn.request("GET", "/api/turn?service=turn&username=burst")
        response = conn.getresponse()
        answers.append((response.status, response.read()))
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    barrier.wait(20)
    started = time.monotonic()
    for thread in threads:
        thread.join(30)
    took = time.monotonic() - started
    statuses = [status for status, _ in answers]
    assert len(statuses) == n
    allowed = statuses.count(200)
    # 40 at once, then 20 per second for as long as the requests took to arrive.
    assert 40 <= allowed <= 40 + 20 * took + 1, (allowed, took)
    assert statuses.count(429) == n - allowed, statuses
    if took < 0.9:  # a loaded machine may spread them; the bound above still holds
        assert allowed < n, (allowed, took)
    for status, body in answers:
        if status == 429:
            assert json.loads(body) == {"error": "too many requests: retry later"}


def test_rate_limit_zero_turns_it_off(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, tls=False, extra={"general.rate_limit": "0"})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        for _ in range(150):
            conn.request("GET", "/api/turn?service=turn&username=u")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        conn.close()
        assert all(ws_upgrade(srv).split(b" ")[1] == b"101" for _ in range(60))
    finally:
        srv.stop()
