"""How the signaling shell writes: by the greenlet that produced the frames, one write per
connection per batch, what the socket does not take left to the writer (in order, over TLS
with the same bytes), and long broadcasts that let the event loop run. In-process, on
socket pairs (plain and TLS)."""

from __future__ import annotations

import json
import select
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
import pytest

import flaskrtc.signal.server as signal_server
from flaskrtc.signal.hub import Broadcast, Send
from flaskrtc.signal.server import Connection, SignalServer, Transport
from flaskrtc.signal.wsframe import OP_TEXT, FrameDecoder, Message, encode_frame
from flaskrtc.tls import ensure_certificate, make_ssl_context

MASK = b"\x01\x02\x03\x04"


class Recording:
    """A server-side socket that records every write (and passes everything through)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.writes: list[bytes] = []

    def send(self, data: Any, *args: Any) -> int:
        sent = int(self._sock.send(data, *args))
        self.writes.append(bytes(data[:sent]))
        return sent

    def sendall(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Client:
    """The far end of a socket pair, speaking WebSocket frames."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(1 << 30, require_mask=False)
        self.messages: list[bytes] = []

    def send(self, text: str) -> None:
        self.sock.sendall(encode_frame(OP_TEXT, text.encode(), mask=MASK))

    def read_until(self, count: int) -> list[bytes]:
        """Read until ``count`` messages have arrived in all (10 s at most)."""
        with gevent.Timeout(10):
            while len(self.messages) < count:
                data = self.sock.recv(65536)
                assert data, "connection closed"
                self.messages += [e.data for e in self.decoder.feed(data) if isinstance(e, Message)]
        return self.messages


@pytest.fixture
def server() -> Iterator[SignalServer]:
    srv = SignalServer(keepalive=60, max_message_size=1 << 24)
    yield srv
    srv.shutdown(timeout=0.5)


def plain_pair(
    server: SignalServer, *, record: bool = False, small: bool = False
) -> tuple[Connection, Client, Any]:
    ours, theirs = gevent.socket.socketpair()
    if small:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock: Any = Recording(ours) if record else ours
    return start(server, sock, ours.makefile("rb")), Client(theirs), sock


def start(server: SignalServer, sock: Any, rfile: Any) -> Connection:
    before = set(server.conns)
    gevent.spawn(server.serve, Transport(sock, rfile, ("127.0.0.1", 1)))
    gevent.idle()  # the reader registers its connection and waits for input
    [conn_id] = set(server.conns) - before
    return server.conns[conn_id]


def register(client: Client, peer_id: str) -> None:
    client.send(json.dumps({"type": "new", "data": {"id": peer_id}}))


def test_frames_are_written_by_the_greenlet_that_produced_them(server: SignalServer) -> None:
    conn, client, _ = plain_pair(server)
    client.sock.settimeout(0)  # a read that would wait raises instead
    server.apply([Send(conn.id, '{"type":"x","data":1}')])
    # No yield since: the writer greenlet has not run, yet the frame is on the socket.
    data = client.sock.recv(65536)
    assert client.decoder.feed(data) == [Message(b'{"type":"x","data":1}', False)]


def test_messages_read_together_are_written_in_one_write_per_receiver(
    server: SignalServer,
) -> None:
    _, alice, _ = plain_pair(server)
    _, bob, bob_sock = plain_pair(server, record=True)
    register(alice, "a")
    alice.read_until(1)
    register(bob, "b")
    bob.read_until(1)  # b's list (a's refreshed list follows in a's socket)
    bob_sock.writes.clear()
    offers = [
        json.dumps({"type": "offer", "data": {"to": "b", "n": n, "description": {}}})
        for n in range(3)
    ]
    # One write from the client: the server reads the three messages at once.
    alice.sock.sendall(b"".join(encode_frame(OP_TEXT, o.encode(), mask=MASK) for o in offers))
    got = bob.read_until(4)[1:]
    assert [json.loads(m)["data"]["n"] for m in got] == [0, 1, 2]
    assert len(bob_sock.writes) == 1, bob_sock.writes  # one write for the three


def test_what_the_socket_does_not_take_is_written_by_the_writer_in_order(
    server: SignalServer,
) -> None:
    conn, client, _ = plain_pair(server, small=True)
    big = '{"type":"x","data":"' + "b" * (2 << 20) + '"}'
    server.apply([Send(conn.id, big), Send(conn.id, '{"type":"x","data":1}')])
    server.apply([Send(conn.id, '{"type":"x","data":2}')])  # queued behind the rest
    got = client.read_until(3)
    assert got == [big.encode(), b'{"type":"x","data":1}', b'{"type":"x","data":2}']


@pytest.fixture
def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ensure_certificate(cert, key, [])
    server_side = make_ssl_context(cert, key, gevent.ssl.SSLContext)
    client_side = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_side.load_verify_locations(str(cert))
    return server_side, client_side


def test_over_tls_a_blocked_write_is_retried_with_the_same_bytes_in_order(
    server: SignalServer, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    # OpenSSL must be given a blocked write's bytes again, exactly: the writer finishes it,
    # and what was queued meanwhile follows it.
    server_side, client_side = tls_contexts
    ours, theirs = gevent.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours_tls = server_side.wrap_socket(ours, server_side=True, do_handshake_on_connect=False)
    theirs_tls = client_side.wrap_socket(
        theirs, server_hostname="localhost", do_handshake_on_connect=False
    )
    gevent.joinall(
        [gevent.spawn(ours_tls.do_handshake), gevent.spawn(theirs_tls.do_handshake)],
        raise_error=True,
    )
    conn = start(server, ours_tls, ours_tls.makefile("rb"))
    assert conn._tls
    client = Client(theirs_tls)
    texts = ['{"type":"x","data":"' + str(n) * (300_000 + n) + '"}' for n in range(5)]
    for text in texts:  # each after the previous one blocked (nobody reads yet)
        server.apply([Send(conn.id, text)])
    assert conn._pending is not None or conn._writing, "no write ever blocked"
    assert client.read_until(5) == [t.encode() for t in texts]


def test_a_long_broadcast_lets_the_event_loop_run(
    server: SignalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal_server, "FLUSH_SLICE", -1.0)  # yield after every connection
    pairs = [plain_pair(server) for _ in range(3)]
    seen: list[int] = []

    def spy() -> None:  # runs as soon as the broadcaster yields
        ready, _, _ = select.select([c.sock for _, c, _ in pairs], [], [], 0)
        seen.append(len(ready))

    gevent.spawn(spy)
    server.apply([Broadcast(tuple(conn.id for conn, _, _ in pairs), '{"type":"x"}')])
    assert seen and 0 < seen[0] < 3, seen  # it ran in the middle of the broadcast
    for _, client, _ in pairs:
        assert client.read_until(1) == [b'{"type":"x"}']
