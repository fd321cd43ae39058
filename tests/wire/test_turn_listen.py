"""TURN's listeners: port 0 gives UDP and TCP one port number; TCP without Nagle; a UDP
buffer that holds a burst."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

import flaskrtc.turn.server as turn_server
from flaskrtc.turn.stun import Class, Message, Method, parse, serialize
from tests.unit.test_turn_core import make_core


def test_port_zero_retries_when_the_udp_port_is_taken_for_tcp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = turn_server.bound_socket
    calls: list[int] = []

    def flaky(kind: int, host: str, port: int, *rest: Any) -> Any:
        if kind == socket.SOCK_STREAM:
            calls.append(port)
            if len(calls) == 1:
                raise OSError(98, "Address already in use")  # as if another process had it
        return real(kind, host, port, *rest)

    monkeypatch.setattr(turn_server, "bound_socket", flaky)
    core, _ = make_core()
    server = turn_server.TurnServer(core)
    server.start(bind="127.0.0.1", port=0, tls_port=0, ssl_context=None)
    try:
        assert len(calls) == 2
        assert server.udp_address == server.tcp_address
        assert server.udp_address is not None and server.udp_address[1] == calls[1]
    finally:
        server.stop()


def test_fixed_port_taken_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = turn_server.bound_socket

    def taken(kind: int, host: str, port: int, *rest: Any) -> Any:
        if kind == socket.SOCK_STREAM:
            raise OSError(98, "Address already in use")
        return real(kind, host, port, *rest)

    monkeypatch.setattr(turn_server, "bound_socket", taken)
    core, _ = make_core()
    server = turn_server.TurnServer(core)
    with pytest.raises(OSError):
        server.start(bind="127.0.0.1", port=38123, tls_port=0, ssl_context=None)


def test_tcp_clients_get_no_nagle_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relayed packets are small writes; with Nagle each waited for the last one's ACK
    (doctor's TCP self-test measured about 40 ms a round trip before this, 0.4 ms after)."""
    import socket

    import gevent

    seen: list[int] = []
    real = turn_server.TurnServer._serve_stream

    def spy(self: Any, sock: Any, client: Any, transport: str) -> None:
        serving = gevent.spawn(real, self, sock, client, transport)
        gevent.sleep(0)  # the handler runs until it waits for the client's first bytes
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        serving.join()

    monkeypatch.setattr(turn_server.TurnServer, "_serve_stream", spy)
    core, _ = make_core()
    server = turn_server.TurnServer(core)
    server.start(bind="127.0.0.1", port=0, tls_port=0, ssl_context=None)
    try:
        assert server.tcp_address is not None
        client = gevent.socket.create_connection(server.tcp_address)
        with gevent.Timeout(10):
            while not seen:
                gevent.sleep(0.01)
        client.close()
        assert seen == [1]
    finally:
        server.stop()


def test_udp_listener_asks_for_a_large_buffer() -> None:
    """The kernel grants what was asked up to net.core.rmem_max (Linux reports twice that);
    without the request it would keep its default (212 KB, about 200 small datagrams)."""
    sockets = turn_server.bind_turn_sockets("127.0.0.1", 0, 0)
    try:
        granted = sockets.udp[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        cap = Path("/proc/sys/net/core/rmem_max")
        if cap.exists():
            expected = 2 * min(turn_server.UDP_BUFFER, int(cap.read_text()))
            assert granted == expected
        else:
            assert granted >= turn_server.UDP_BUFFER  # other systems report what they grant
    finally:
        for sock in sockets.all():
            sock.close()


def test_a_burst_arriving_while_the_server_is_busy_is_answered_in_full() -> None:
    """2000 Binding requests land while the server cannot read (this test holds the only
    thread and never yields): all wait in the listener's buffer and are answered once it
    reads again. With the kernel's default buffer most of them were dropped."""
    import gevent

    cap = Path("/proc/sys/net/core/rmem_max")
    if cap.exists() and int(cap.read_text()) < turn_server.UDP_BUFFER_NOTE:
        pytest.skip("net.core.rmem_max is below 1 MB here: the buffer cannot be grown")
    core, _ = make_core(unauth_rate=0)  # Bindings are unsigned replies: no per-IP limit
    server = turn_server.TurnServer(core)
    server.start(bind="127.0.0.1", port=0, tls_port=0, ssl_context=None)
    count = 2000
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the standard, blocking one
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, turn_server.UDP_BUFFER)
        client.bind(("127.0.0.1", 0))
        assert server.udp_address is not None
        ids: set[bytes | None] = set()
        for _ in range(count):
            request = Message(Method.BINDING, Class.REQUEST)
            ids.add(request.transaction_id)
            client.sendto(serialize(request), server.udp_address)  # no yield: server idle
        client.setblocking(False)
        answered: set[bytes | None] = set()
        deadline = time.monotonic() + 20
        while len(answered) < count and time.monotonic() < deadline:
            try:
                answered.add(parse(client.recv(2048)).transaction_id)
            except BlockingIOError:
                gevent.sleep(0.001)  # the server reads and answers meanwhile
        assert answered == ids
    finally:
        client.close()
        server.stop()


def test_a_buffer_the_kernel_capped_is_said_at_start_up_with_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The start-up line reads the socket the server serves on: a buffer shrunk after
    binding (as a low net.core.rmem_max would leave it) is named, with the sysctl."""
    sockets = turn_server.bind_turn_sockets("127.0.0.1", 0, 0)
    sockets.udp[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    core, _ = make_core()
    server = turn_server.TurnServer(core)
    with caplog.at_level(logging.INFO, logger="flaskrtc.turn"):
        server.serve(sockets, None)
    server.stop()
    notes = [r.getMessage() for r in caplog.records if "UDP receive buffer" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "128 KB" in notes[0] and "net.core.rmem_max=4194304" in notes[0]


def test_a_grown_buffer_is_not_mentioned(caplog: pytest.LogCaptureFixture) -> None:
    cap = Path("/proc/sys/net/core/rmem_max")
    if not cap.exists() or int(cap.read_text()) < turn_server.UDP_BUFFER_NOTE:
        pytest.skip("the buffer can be grown past the note's threshold on Linux only")
    core, _ = make_core()
    server = turn_server.TurnServer(core)
    with caplog.at_level(logging.INFO, logger="flaskrtc.turn"):
        server.start(bind="127.0.0.1", port=0, tls_port=0, ssl_context=None)
    server.stop()
    assert not any("UDP receive buffer" in r.getMessage() for r in caplog.records)
