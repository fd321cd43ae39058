"""TurnServer.start with port 0: UDP and TCP must end up on one port number."""

from __future__ import annotations

import socket
from typing import Any

import pytest

import flaskrtc.turn.server as turn_server
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
