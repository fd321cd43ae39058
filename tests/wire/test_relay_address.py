"""Relay addresses without [turn] public_ip: the local address each client reached.

A TURN listener bound to 0.0.0.0 reads each datagram's destination (IP_PKTINFO) and the
accepted stream's local address; the relay is bound there and advertised with it, and replies
leave from it. Every 127/8 address is local, so several "server addresses" exist on loopback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskrtc.turn.stun import Attr, Class, Method
from tests.wire.test_turn_wire import RawTurn, TurnProcess


@pytest.fixture(scope="module")
def wildcard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    """TURN on 0.0.0.0 with public_ip empty (the default configuration)."""
    proc = TurnProcess(
        tmp_path_factory.mktemp("wild"), bind="0.0.0.0", public_ip="", allowed_peer_ip="127.0.0.0/8"
    )
    yield proc
    proc.stop()


def allocate(
    server: TurnProcess, host: str, *, tcp: bool = False
) -> tuple[RawTurn, tuple[str, int]]:
    creds = server.credentials("addr")
    client = RawTurn(server.turn_port, creds["username"], creds["password"], host=host, tcp=tcp)
    reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    assert reply.cls == Class.SUCCESS, reply
    relayed = reply.attributes[Attr.XOR_RELAYED_ADDRESS]
    return client, relayed


def test_start_up_says_relays_use_the_address_each_client_reached(wildcard: TurnProcess) -> None:
    wildcard.wait_for_log(r"turn: relays are bound on and advertised as the local address each")
    assert not any("advertised as 127.0.0.1" in line for line in wildcard.lines)


@pytest.mark.parametrize("host", ["127.0.0.2", "127.0.0.3"])
def test_udp_relay_is_the_address_the_request_was_sent_to(wildcard: TurnProcess, host: str) -> None:
    client, relayed = allocate(wildcard, host)
    try:
        assert relayed[0] == host
        # The reply left from the address the client used (a NAT would drop any other).
        assert client.last_source == (host, wildcard.turn_port)
        # The relay socket is bound there: a permitted peer's datagram to it comes back to
        # the client as a Data indication.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            permit = client.request(
                Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: peer.getsockname()}
            )
            assert permit.cls == Class.SUCCESS, permit
            peer.sendto(b"to the relay", tuple(relayed))
            data = client.recv_message()
        assert data.method == Method.DATA and data.attributes[Attr.DATA] == b"to the relay"
    finally:
        client.close()


def test_tcp_relay_is_the_streams_local_address(wildcard: TurnProcess) -> None:
    client, relayed = allocate(wildcard, "127.0.0.4", tcp=True)
    try:
        assert relayed[0] == "127.0.0.4"
    finally:
        client.close()


def test_public_ip_wins_over_the_arrival_address(tmp_path: Path) -> None:
    # 127.0.0.5 is a local address: relays are bound there and advertised with it.
    proc = TurnProcess(tmp_path, bind="0.0.0.0", public_ip="127.0.0.5")
    try:
        proc.wait_for_log(r"advertised as \[turn\] public_ip 127\.0\.0\.5 \(a local address")
        client, relayed = allocate(proc, "127.0.0.2")
        client.close()
        assert relayed[0] == "127.0.0.5"
    finally:
        proc.stop()


def test_public_ip_not_on_this_host_is_a_one_to_one_nat(tmp_path: Path) -> None:
    # 203.0.113.5 (TEST-NET-3) is no address of this host: advertised, never sent to.
    proc = TurnProcess(tmp_path, bind="0.0.0.0", public_ip="203.0.113.5")
    try:
        proc.wait_for_log(r"public_ip 203\.0\.113\.5 \(not a local address: a 1:1 NAT is assumed")
        client, relayed = allocate(proc, "127.0.0.2")
        client.close()
        assert relayed[0] == "203.0.113.5"
    finally:
        proc.stop()
