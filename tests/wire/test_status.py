"""The status page on a real server: /status, its script and style, /status.json. A call and
a TURN relay show in its numbers; the protection is /metrics's (404 off, the token as a
Bearer header or, for the page a browser opens, as ?token=)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.wire.test_metrics import TOKEN, allocate_and_bind, get, relay_both_ways
from tests.wire.test_turn_wire import TurnProcess

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    proc = TurnProcess(
        tmp_path_factory.mktemp("status"),
        allowed_peer_ip="127.0.0.1",
        general={"rate_limit": "0"},
        metrics={"enabled": "true", "token": TOKEN},
    )
    yield proc
    proc.stop()


def status(server: ServerProcess) -> dict[str, Any]:
    code, headers, body = get(server, "/status.json", BEARER)
    assert code == 200, body
    assert headers["Cache-Control"] == "no-store"
    result: dict[str, Any] = json.loads(body)
    return result


def test_the_page_and_its_numbers_need_the_token(shown: TurnProcess) -> None:
    for path, headers in (
        ("/status", {}),
        ("/status?token=wrong-token-0123456789", {}),
        ("/status.json", {}),
        ("/status.json?token=" + TOKEN, {}),  # the numbers: the header only
        ("/status.json", {"Authorization": "Bearer wrong-token-0123456789"}),
    ):
        code, _, _ = get(shown, path, headers)
        assert code == 401, path
    code, headers, body = get(shown, "/status?token=" + TOKEN)
    assert code == 200 and b"flaskrtc status" in body
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert get(shown, "/status", BEARER)[0] == 200
    # The script and style carry no numbers: no token, but only while the page is on.
    code, headers, body = get(shown, "/status/status.js")
    assert code == 200 and b"status.json" in body
    assert headers["Content-Type"].startswith("text/javascript")
    assert get(shown, "/status/status.css")[0] == 200
    assert get(shown, "/status/other.js")[0] == 404


def test_a_call_and_a_relay_show_in_the_numbers(shown: TurnProcess) -> None:
    before = status(shown)["now"]
    a, b = shown.connect(), shown.connect()
    a.register("status-a")
    a.expect_peers(["status-a"])
    b.register("status-b")
    b.expect_peers(["status-a", "status-b"])
    a.send("offer", {"to": "status-b", "session_id": "status-a-status-b", "description": {}})
    b.expect("offer")
    b.send("answer", {"to": "status-a", "session_id": "status-a-status-b", "description": {}})
    a.expect("answer")
    creds = shown.credentials("status")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    client = allocate_and_bind(shown, creds, peer.getsockname(), tcp=False)
    relay_both_ways(client, peer, b"u" * 100, b"d" * 40)
    during = status(shown)
    now = during["now"]
    assert now["peers"] == before["peers"] + 2
    assert now["calls"] == before["calls"] + 1
    assert now["allocations"]["udp"] == before["allocations"]["udp"] + 1
    assert now["bytes_in"] == before["bytes_in"] + 100
    assert now["bytes_out"] == before["bytes_out"] + 40
    series = during["series"]
    assert len(series["t"]) == len(series["peers"]) == len(series["in_bps"]) >= 1
    assert series["t"][-1] == 0.0 and series["peers"][-1] == now["peers"]
    assert during["sample_seconds"] == 10.0
    a.send("bye", {"session_id": "status-a-status-b"})
    a.expect("bye")
    b.expect("bye")
    assert status(shown)["now"]["calls"] == before["calls"]
    client.close()
    peer.close()
    a.close()
    b.close()


def test_the_status_page_is_404_when_metrics_are_off(server: ServerProcess) -> None:
    for path in ("/status", "/status.json", "/status/status.js"):
        assert get(server, path)[0] == 404, path
