"""Issue 12's logs against a real ``python -m flaskrtc``: ``log_format = json`` lines parse and
carry their fields, and ``trusted_proxies`` makes a proxy's forwarded client the one that is
logged, rate limited and capped (and nobody else's headers count)."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

from flaskrtc.turn.stun import Attr, Class, Method
from tests.conftest import ServerProcess
from tests.wire.test_turn_wire import RawTurn

A, B = "198.51.100.7", "198.51.100.8"
TURN_PATH = "/api/turn?service=turn&username=logs"


def entries(srv: ServerProcess) -> list[dict[str, Any]]:
    """Every log line so far, parsed: a line that is not one JSON object fails the test."""
    parsed = []
    for line in list(srv.lines):
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


def wait_entry(srv: ServerProcess, timeout: float = 10, **fields: Any) -> dict[str, Any]:
    """The first JSON log entry holding ``fields`` (``message`` is matched as a substring),
    polled on each new line until ``timeout``."""
    deadline = time.monotonic() + timeout
    with srv._cond:
        while True:
            for entry in entries(srv):
                if all(
                    (name == "message" and str(want) in entry.get("message", ""))
                    or (name != "message" and entry.get(name) == want)
                    for name, want in fields.items()
                ):
                    return entry
            left = deadline - time.monotonic()
            if left <= 0 or srv.proc.poll() is not None:
                raise AssertionError(f"no entry with {fields}; log:\n" + "\n".join(srv.lines))
            srv._cond.wait(min(left, 0.5))


def get(srv: ServerProcess, path: str, headers: dict[str, str] | None = None) -> int:
    """The status of a GET of ``path`` with ``headers``."""
    request = urllib.request.Request(srv.base + path, headers=headers or {})
    context = srv.ssl_context() if srv.tls else None
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def ws(srv: ServerProcess, headers: dict[str, str]) -> websocket.WebSocket:
    return websocket.create_connection(
        srv.ws_url,
        timeout=10,
        sslopt=srv.sslopt(),
        header=[f"{name}: {value}" for name, value in headers.items()],
    )


# --- log_format = json ----------------------------------------------------------------------


def test_json_lines_parse_and_carry_peer_client_user(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path, extra={"general.log_format": "json", "general.log_level": "DEBUG"}
    )
    try:
        listening = wait_entry(srv, message="listening on https://127.0.0.1:")
        assert listening["logger"] == "flaskrtc.server" and listening["level"] == "INFO"
        assert "worker" not in listening
        client = srv.connect()
        client.register("424242", "json")
        client.expect_peers(["424242"])
        client.close()
        registered = wait_entry(srv, message=": registered", peer="424242")
        assert registered["client"] == "127.0.0.1" and isinstance(registered["conn"], int)
        gone = wait_entry(srv, message=": disconnected", peer="424242")
        assert gone["client"] == "127.0.0.1" and gone["reason"]
        connected = wait_entry(srv, message=": connected", conn=registered["conn"])
        assert connected["client"] == "127.0.0.1" and "peer" not in connected

        # TURN: an allocation made and deleted, then a wrong password.
        with urllib.request.urlopen(
            srv.base + TURN_PATH, context=srv.ssl_context(), timeout=10
        ) as reply:
            creds = json.loads(reply.read())
        turn = RawTurn(srv.turn_port, creds["username"], creds["password"])
        assert turn.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17}).cls == Class.SUCCESS
        assert turn.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
        port = turn.sock.getsockname()[1]
        turn.close()
        made = wait_entry(srv, message="allocation ", user=creds["username"], port=port)
        assert made["level"] == "DEBUG" and made["transport"] == "udp"
        assert made["client"] == "127.0.0.1" and made["relay"].startswith("127.0.0.1:")
        wait_entry(srv, message=" deleted by ", user=creds["username"], relay=made["relay"])
        wrong = RawTurn(srv.turn_port, creds["username"], "wrong")
        assert wrong.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17}).cls == Class.ERROR
        wrong.close()
        failure = wait_entry(srv, message="turn auth failure", reason="wrong-password")
        assert failure["level"] == "WARNING" and failure["user"] == creds["username"]
        assert (failure["client"], failure["transport"]) == ("127.0.0.1", "udp")
        access = wait_entry(srv, message='"GET /api/turn', status=200)
        assert access["client"] == "127.0.0.1" and access["logger"] == "flaskrtc.http"
    finally:
        assert srv.stop() == 0
    # Every line, to the last one of the shutdown, is JSON.
    assert entries(srv)[-1]["message"] == "stopped"


# --- trusted_proxies ------------------------------------------------------------------------


def proxied(tmp_path: Path, trusted: str, **general: str) -> ServerProcess:
    """A plain-HTTP server (a proxy terminates TLS) with JSON logs; rate_limit 0.01/s is one
    request per client and endpoint, then 429 for 100 s: no timing in the test."""
    extra = {
        "general.log_format": "json",
        "general.trusted_proxies": trusted,
        "general.rate_limit": "0.01",
        **{f"general.{k}": v for k, v in general.items()},
    }
    return ServerProcess(tmp_path, tls=False, extra=extra)


def test_a_trusted_proxy_forwards_the_client(tmp_path: Path) -> None:
    srv = proxied(tmp_path, "127.0.0.1/32")
    try:
        # A's one request, then 429; B, another client behind the same proxy, still passes.
        assert get(srv, TURN_PATH, {"X-Forwarded-For": A}) == 200
        assert get(srv, TURN_PATH, {"X-Forwarded-For": A}) == 429
        assert get(srv, TURN_PATH, {"X-Forwarded-For": f"203.0.113.1, {B}"}) == 200
        limited = wait_entry(srv, message="over [general] rate_limit", client=A)
        assert limited["endpoint"] == "/api/turn" and limited["status"] == 429
        assert limited["message"].startswith(f"{A}: /api/turn")
        wait_entry(srv, message=f'{A} "GET /api/turn', status=429)
        wait_entry(srv, message=f'{B} "GET /api/turn', status=200, client=B)

        # RFC 7239 Forwarded, an IPv6 client: its own bucket.
        v6 = {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'}
        assert get(srv, TURN_PATH, v6) == 200
        wait_entry(srv, message='2001:db8::7 "GET /api/turn', client="2001:db8::7")

        # Garbage is no error: the request is the proxy's own (one bucket for both).
        assert get(srv, TURN_PATH, {"X-Forwarded-For": "garbage"}) == 200
        assert get(srv, TURN_PATH, {"Forwarded": 'for="unterminated'}) == 429
        assert get(srv, TURN_PATH, {"Forwarded": "for=_hidden"}) == 429
        wait_entry(srv, message='127.0.0.1 "GET /api/turn', status=429)

        # /ws: logged as the forwarded client, and its upgrade rate limited as that client.
        sock = ws(srv, {"X-Forwarded-For": f"6.6.6.6, {A}"})
        sock.send(json.dumps({"type": "new", "data": {"id": "777001", "name": "a"}}))
        registered = wait_entry(srv, message=": registered", peer="777001")
        assert registered["client"] == A and registered["message"].startswith("ws#")
        assert f" {A} peer 777001" in registered["message"]
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws(srv, {"X-Forwarded-For": A})
        assert refused.value.status_code == 429
        wait_entry(srv, message=f"{A}: /ws over [general] rate_limit", client=A)
        ws(srv, {"X-Forwarded-For": B}).close()
        wait_entry(srv, message=": connected", client=B)
        sock.close()
        wait_entry(srv, message=": disconnected", peer="777001", client=A)
    finally:
        srv.stop()
    assert not [e for e in entries(srv) if e["level"] == "ERROR"]


@pytest.mark.parametrize("trusted", ["", "10.0.0.0/8"], ids=["nobody", "another-range"])
def test_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path, trusted: str) -> None:
    srv = proxied(tmp_path, trusted)
    try:
        assert get(srv, TURN_PATH, {"X-Forwarded-For": A}) == 200
        # Another claimed address changes nothing: the bucket is the socket's, 127.0.0.1.
        assert get(srv, TURN_PATH, {"X-Forwarded-For": B, "Forwarded": f"for={B}"}) == 429
        limited = wait_entry(srv, message="over [general] rate_limit", client="127.0.0.1")
        assert limited["message"].startswith("127.0.0.1: /api/turn")
        sock = ws(srv, {"X-Forwarded-For": A})
        sock.send(json.dumps({"type": "new", "data": {"id": "777002", "name": "b"}}))
        assert wait_entry(srv, message=": registered", peer="777002")["client"] == "127.0.0.1"
        sock.close()
        wait_entry(srv, message=": disconnected", peer="777002")
    finally:
        srv.stop()
    claimed = [e for e in entries(srv) if A in json.dumps(e) or B in json.dumps(e)]
    assert claimed == []  # a spoofing attempt is no error, and leaves no trace of its claim


def test_per_client_websocket_cap_behind_a_trusted_proxy(tmp_path: Path) -> None:
    srv = proxied(tmp_path, "127.0.0.1", rate_limit="0", max_connections_per_ip="1")
    try:
        # Upgrades refused for another reason hold no slot (twice: a leak would show).
        for _ in range(2):
            with srv.raw_socket() as raw:
                raw.sendall(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 8\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"X-Forwarded-For: " + A.encode() + b"\r\n\r\n"
                )
                assert raw.recv(4096).startswith(b"HTTP/1.1 426")
        first = ws(srv, {"X-Forwarded-For": A})
        # A second session of A is refused once its headers are read...
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws(srv, {"X-Forwarded-For": A})
        assert refused.value.status_code == 503
        wait_entry(srv, message=f"{A}: /ws refused (503)", client=A, proxy="127.0.0.1")
        # ... while B, over another connection from the same proxy address, is let in: the
        # accept-time per-IP cap (1) does not apply to the trusted proxy.
        second = ws(srv, {"X-Forwarded-For": B})
        second.close()
        first.close()
        wait_entry(srv, message=": disconnected", client=A)
        # A's slot is free again once its session has ended.
        deadline = time.monotonic() + 10
        while True:
            try:
                ws(srv, {"X-Forwarded-For": A}).close()
                break
            except websocket.WebSocketBadStatusException:
                assert time.monotonic() < deadline, "A's WebSocket slot was never released"
    finally:
        srv.stop()


def test_without_trust_the_per_ip_cap_still_holds_at_accept(tmp_path: Path) -> None:
    """No trusted proxy: two connections from 127.0.0.1 with cap 1, whatever they claim."""
    srv = proxied(tmp_path, "", rate_limit="0", max_connections_per_ip="1")
    try:
        first = ws(srv, {"X-Forwarded-For": A})
        with pytest.raises((websocket.WebSocketException, OSError, ssl.SSLError)):
            ws(srv, {"X-Forwarded-For": B})
        wait_entry(srv, message="refused a connection from 127.0.0.1", cap="max_connections_per_ip")
        first.close()
    finally:
        srv.stop()
