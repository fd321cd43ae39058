"""Optional authentication ([auth] secret) on a real server: tokens on /ws and /api/turn, the
id a token binds, refusals (401, or an error and a 4401 close) logged with the client IP."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from flaskrtc.auth import make_token
from flaskrtc.signal.wsframe import CloseReceived
from tests.conftest import Client, ServerProcess
from tests.wire.test_http import fetch
from tests.wire.test_ws import RawClient

SECRET = "wire-test-auth-secret-0123"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Through the environment (FLASKRTC_AUTH_SECRET), as a deployment might set it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLASKRTC_AUTH_SECRET", SECRET)
        srv = ServerProcess(tmp_path_factory.mktemp("auth"))
    yield srv
    srv.stop()


def token(peer_id: str, ttl: int = 600, now: float | None = None) -> str:
    return make_token(SECRET, peer_id, time.time() if now is None else now, ttl)


def query(peer_id: str, tok: str) -> str:
    return urllib.parse.urlencode({"id": peer_id, "token": tok})


def connect(server: ServerProcess, suffix: str) -> Client:
    ws = websocket.create_connection(server.ws_url + suffix, timeout=10, sslopt=server.sslopt())
    return Client(ws)


def refused_close(client: Client) -> tuple[dict[str, Any], int]:
    """The error message and the close code a refused connection gets."""
    err = client.expect("error")
    opcode, data = client.ws.recv_data(control_frame=True)
    while opcode != websocket.ABNF.OPCODE_CLOSE:
        opcode, data = client.ws.recv_data(control_frame=True)
    return err, int.from_bytes(data[:2], "big")


def test_api_turn_needs_a_valid_token(auth_server: ServerProcess) -> None:
    base = "/api/turn?service=turn&username=alice"
    status, headers, body = fetch(auth_server, base)
    assert status == 401
    assert json.loads(body) == {"error": "unauthorized: a token (?token=) is required"}
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in headers
    status, _, body = fetch(auth_server, f"{base}&{query('alice', token('alice'))}")
    assert status == 200 and json.loads(body)["username"].endswith(":alice")
    expired = token("alice", ttl=60, now=time.time() - 120)
    status, _, body = fetch(auth_server, f"{base}&{query('alice', expired)}")
    assert (status, json.loads(body)["error"]) == (401, "unauthorized: token expired")
    status, _, _ = fetch(auth_server, f"{base}&{query('bob', token('alice'))}")
    assert status == 401
    auth_server.wait_for_log(
        r"WARNING .*127\.0\.0\.1: /api/turn refused: token expired \(id 'alice'\)"
    )
    # The access log shows that a token was given, never the token.
    logged = [line for line in auth_server.lines if "GET /api/turn?" in line]
    assert logged and all("token=***" in line for line in logged[1:]), logged
    assert not any(re.search(r"token=\d", line) for line in auth_server.lines)


def test_ws_without_token_gets_an_error_and_a_4401_close(auth_server: ServerProcess) -> None:
    watcher = connect(auth_server, "?" + query("watcher", token("watcher")))
    watcher.register("watcher")
    watcher.expect_peers(["watcher"])
    # What a Flutter app does against a server with [auth] on: no token at all.
    app = auth_server.connect()
    err, code = refused_close(app)
    assert err["data"] == {"request": "", "reason": "unauthorized: a token (?token=) is required"}
    assert code == 4401
    app.ws.close()
    for bad in ("?id=x", "?" + query("x", "123.abc"), "?" + query("x", token("y"))):
        client = connect(auth_server, bad)
        # A refused connection can do nothing: its new is not acted on either.
        client.register("x")
        err, code = refused_close(client)
        assert code == 4401 and err["data"]["reason"].startswith("unauthorized: ")
        client.ws.close()
    auth_server.wait_for_log(r"WARNING .*127\.0\.0\.1: /ws refused: malformed token \(id 'x'\)")
    watcher.send("keepalive", {})
    msg = watcher.recv()
    assert msg["type"] == "keepalive", msg  # no peers list: nobody else ever registered
    watcher.close()


def test_a_token_binds_the_peer_id(auth_server: ServerProcess) -> None:
    alice = connect(auth_server, "?" + query("alice2", token("alice2")))
    alice.register("someone-else")
    err = alice.expect("error")
    assert err["data"] == {
        "request": "new",
        "reason": "your token is for id 'alice2', not 'someone-else'",
    }
    alice.register("alice2")  # still open: the right id registers
    assert [p["id"] for p in alice.expect("peers")["data"]] == ["alice2"]
    # Another token's connection cannot take the id over...
    mallory = connect(auth_server, "?" + query("mallory", token("mallory")))
    mallory.register("alice2")
    assert mallory.expect("error")["data"]["request"] == "new"
    alice.send("keepalive", {"still": "mine"})
    assert alice.expect("keepalive")["data"] == {"still": "mine"}
    # ... while alice reconnecting with a token for her own id does (a network change).
    again = connect(auth_server, "?" + query("alice2", token("alice2", ttl=30)))
    again.register("alice2")
    again.expect("peers")
    assert alice.expect("error")["data"]["reason"].startswith("id 'alice2' was taken over")
    for client in (alice, mallory, again):
        client.close()


def test_relayed_messages_carry_the_bound_id(auth_server: ServerProcess) -> None:
    a = connect(auth_server, "?" + query("ra", token("ra")))
    b = connect(auth_server, "?" + query("rb", token("rb")))
    a.register("ra")
    a.expect("peers")
    b.register("rb")
    b.expect("peers")
    a.send("offer", {"to": "rb", "from": "forged", "description": {"sdp": ""}})
    assert b.expect("offer")["data"]["from"] == "ra"
    a.close()
    b.close()


def test_token_from_the_cli_opens_the_socket(auth_server: ServerProcess, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run(
        [sys.executable, "-m", "flaskrtc", "token", "cli-peer", "--ttl", "120"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "FLASKRTC_AUTH_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    client = connect(auth_server, "?" + query("cli-peer", result.stdout.strip()))
    client.register("cli-peer")
    assert "cli-peer" in [p["id"] for p in client.expect("peers")["data"]]
    client.close()


def test_refused_socket_is_closed_even_if_the_client_never_answers(
    auth_server: ServerProcess,
) -> None:
    raw = RawClient(auth_server, "dGhlIHNhbXBsZSBub25jZQ==")
    assert raw.status_line.startswith(b"HTTP/1.1 101")
    msg = raw.next_json()
    assert msg["type"] == "error"
    close = raw.next_event()
    assert isinstance(close, CloseReceived) and close.code == 4401
    started = time.monotonic()
    assert raw.next_event(timeout=10) is None  # the server hangs up after its 2 s
    assert time.monotonic() - started < 5
    raw.sock.close()


def test_without_a_secret_no_token_is_needed(server: ServerProcess) -> None:
    # The default: the Flutter apps' way, no token, on /ws and /api/turn.
    assert fetch(server, "/api/turn?service=turn&username=app")[0] == 200
    client = server.connect()
    client.register("no-token-app")
    assert "no-token-app" in [p["id"] for p in client.expect("peers")["data"]]
    client.close()
