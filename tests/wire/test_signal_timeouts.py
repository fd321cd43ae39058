"""The signaling writer's send timeout, in-process on a socket pair (the real one is 30 s)."""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest

import flaskrtc.signal.server as signal_server
from flaskrtc.signal.server import SignalServer, Transport


def test_peer_that_stops_reading_is_dropped_after_the_send_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signal_server, "SEND_TIMEOUT", 0.3)
    server = SignalServer(keepalive=60, max_message_size=1 << 20)
    server.max_queued = 1 << 40  # only the timeout may end this connection, not the size cap
    ours, theirs = gevent.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport = Transport(ours, ours.makefile("rb"), ("127.0.0.1", 1))
    reader = gevent.spawn(server.serve, transport)
    try:
        gevent.idle()  # the reader registers its connection and blocks in recv
        [conn] = server.conns.values()
        conn.enqueue(b"x" * (4 << 20))  # far more than the socket buffers; nobody reads it
        reader.join(timeout=5)
        assert reader.dead, "the writer never gave up on a peer that does not read"
        assert server.conns == {}
    finally:
        reader.kill()
        theirs.close()
        ours.close()
