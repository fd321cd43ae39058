"""TurnServer.start with port 0: UDP and TCP must end up on one port number."""

from __future__ import annotations

from typing import Any

import pytest

import flaskrtc.turn.server as turn_server
from tests.unit.test_turn_core import make_core


def test_port_zero_retries_when_the_udp_port_is_taken_for_tcp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = turn_server._tcp_socket
    calls: list[int] = []

    def flaky(bind: str, port: int) -> Any:
        calls.append(port)
        if len(calls) == 1:
            raise OSError(98, "Address already in use")  # as if another process had it
        return real(bind, port)

    monkeypatch.setattr(turn_server, "_tcp_socket", flaky)
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
    def taken(bind: str, port: int) -> Any:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(turn_server, "_tcp_socket", taken)
    core, _ = make_core()
    server = turn_server.TurnServer(core)
    with pytest.raises(OSError):
        server.start(bind="127.0.0.1", port=38123, tls_port=0, ssl_context=None)
