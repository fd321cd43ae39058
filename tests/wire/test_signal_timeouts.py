"""The signaling writer's send timeout, in-process on a socket pair (the real one is 30 s)."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.socket
import pytest

import flaskrtc.signal.server as signal_server
from flaskrtc.signal.hub import Action, Hub
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


class PendingListHub(Hub):
    """A hub with a peers list due ``wait`` seconds from now; counts its polls."""

    def __init__(self, wait: float) -> None:
        super().__init__()
        self.due: float | None = time.monotonic() + wait
        self.polls = 0

    def next_deadline(self) -> float | None:
        return self.due

    def poll(self, now: float) -> list[Action]:
        self.polls += 1
        if self.due is not None and now >= self.due:
            self.due = None
        return []


def test_tick_loop_sleeps_until_a_pending_peers_list_is_due() -> None:
    # While a peers list waits out its coalescing window, the tick loop must sleep until it
    # is due: it used to wake itself (its own apply set its event) and spin without
    # yielding for the whole window, stalling every other connection.
    hub = PendingListHub(wait=0.5)
    server = SignalServer(keepalive=60, max_message_size=1 << 20, hub=hub)
    ticker = gevent.spawn(server._tick_loop)
    try:
        gevent.idle()  # the loop reads the deadline and sleeps
        for _ in range(50):  # messages forwarded meanwhile: each applies the hub's actions
            server.apply([])
            gevent.idle()
        assert hub.due is not None, "the loop spun until the deadline had passed"
        assert hub.polls <= 1, hub.polls
        # An earlier deadline wakes it at once.
        hub.due = time.monotonic() - 1
        server.apply([])
        gevent.idle()
        assert hub.due is None and hub.polls >= 1
    finally:
        ticker.kill()
