"""Start-up banner and graceful shutdown of the real process."""

from __future__ import annotations

import base64
import os
import signal
import socket
from pathlib import Path

import pytest

from flaskrtc.signal.wsframe import CloseReceived
from tests.conftest import ServerProcess
from tests.wire.test_ws import RawClient


def test_banner_prints_urls_to_open(server: ServerProcess) -> None:
    server.wait_for_log(rf"web demo: +https://127\.0\.0\.1:{server.port}/")
    server.wait_for_log(rf"signaling: +wss://127\.0\.0\.1:{server.port}/ws")
    server.wait_for_log(r"TURN credentials: +https://.*/api/turn\?service=turn")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_sends_close_frames_and_releases_port(tmp_path: Path, sig: int) -> None:
    srv = ServerProcess(tmp_path)
    peers = [RawClient(srv, base64.b64encode(os.urandom(16)).decode()) for _ in range(3)]
    for i, raw in enumerate(peers):
        raw.send_json({"type": "new", "data": {"id": f"sd{i}"}})
        assert raw.next_json()["type"] == "peers"
    srv.proc.send_signal(sig)
    for raw in peers:
        # Peers may still see a peers list first; then the close frame 1001.
        event = raw.next_event()
        while not isinstance(event, CloseReceived):
            assert event is not None, "connection dropped without a close frame"
            event = raw.next_event()
        assert event.code == 1001
        raw.sock.close()
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)
    # The port is free again.
    probe = socket.socket()
    probe.bind(("127.0.0.1", srv.port))
    probe.close()
