"""UdpRelayPorts on real sockets on 127.0.0.1: the port range, even ports, a given port, the
bounded number of binds on a full range, and where relays are bound and advertised."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import gevent.socket
import pytest

from flaskrtc.turn.addressing import RelayAddressing
from flaskrtc.turn.server import RelaySocket, UdpRelayPorts

LOOPBACK = RelayAddressing(bind_v4="127.0.0.1", fallback_v4="127.0.0.1")


def free_block(size: int) -> int:
    """The first port of ``size`` consecutive UDP ports free on 127.0.0.1 now (even)."""
    for base in range(42000, 60000, 512):
        probes = []
        try:
            for port in range(base, base + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    pytest.skip("no block of free UDP ports on 127.0.0.1")


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    relays: list[Any] = []
    yield relays
    for relay in relays:
        relay.sock.close()


def test_relays_stay_in_the_range_and_are_distinct(opened: list[Any]) -> None:
    low = free_block(8)
    ports = UdpRelayPorts(addressing=LOOPBACK, min_port=low, max_port=low + 7)
    for _ in range(8):
        relay = ports.open(4)
        assert relay is not None
        opened.append(relay)
    numbers = sorted(r.address[1] for r in opened)
    assert numbers == list(range(low, low + 8))
    assert all(r.address[0] == "127.0.0.1" and r.public == r.address for r in opened)
    assert ports.open(4) is None  # the range is full


def test_even_ports(opened: list[Any]) -> None:
    low = free_block(16) + 1  # an odd lower bound: the first even port is low + 1
    ports = UdpRelayPorts(addressing=LOOPBACK, min_port=low, max_port=low + 8)
    for _ in range(4):
        relay = ports.open(4, even=True)
        assert relay is not None and relay.address[1] % 2 == 0
        assert low <= relay.address[1] <= low + 8
        opened.append(relay)
    assert ports.open(4, even=True) is None  # the 4 even ports are taken
    odd = ports.open(4)  # odd ones are still there
    assert odd is not None and odd.address[1] % 2 == 1
    opened.append(odd)
    ports = UdpRelayPorts(addressing=LOOPBACK, min_port=low + 8, max_port=low + 8)
    assert ports.open(4, even=True) is None  # an odd-only range has no even port


def test_a_given_port_inside_the_range_only(opened: list[Any]) -> None:
    low = free_block(4)
    ports = UdpRelayPorts(addressing=LOOPBACK, min_port=low, max_port=low + 3)
    relay = ports.open(4, port=low + 2)
    assert relay is not None and relay.address == ("127.0.0.1", low + 2)
    opened.append(relay)
    assert ports.open(4, port=low + 2) is None  # taken
    assert ports.open(4, port=low + 4) is None  # outside the range
    assert ports.open(4, port=low - 1) is None


def test_a_full_range_costs_at_most_64_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    binds: list[tuple[str, int]] = []

    class Taken:
        def __init__(self, *args: Any) -> None:
            pass

        def setsockopt(self, *args: Any) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            binds.append(address)
            raise OSError(98, "Address already in use")

        def close(self) -> None:
            pass

    monkeypatch.setattr(gevent.socket, "socket", Taken)
    ports = UdpRelayPorts(addressing=LOOPBACK, min_port=40000, max_port=49999)
    assert ports.open(4) is None
    assert len(binds) == 64 and len(set(binds)) == 64
    assert all(40000 <= port <= 49999 for _, port in binds)
    binds.clear()
    assert ports.open(4, even=True) is None
    assert len(binds) == 64 and all(port % 2 == 0 for _, port in binds)
    binds.clear()
    small = UdpRelayPorts(addressing=LOOPBACK, min_port=40000, max_port=40009)
    assert small.open(4) is None and len(binds) == 10  # fewer ports than the cap: each once
    binds.clear()
    assert small.open(4, even=True) is None and len(binds) == 5


def test_close_stops_the_reader_and_frees_the_port(opened: list[Any]) -> None:
    low = free_block(1)
    started: list[RelaySocket] = []

    def on_open(relay: RelaySocket) -> None:
        relay.reader = gevent.spawn(gevent.sleep, 60)
        started.append(relay)

    ports = UdpRelayPorts(addressing=LOOPBACK, min_port=low, max_port=low, on_open=on_open)
    relay = ports.open(4)
    assert relay is not None and started == [relay]
    reader = relay.reader
    assert reader is not None
    ports.close(relay)
    assert relay.reader is None
    reader.join(timeout=5)
    assert reader.dead
    again = ports.open(4)  # the port is free again
    assert again is not None and again.address[1] == low
    opened.append(again)


def test_relays_are_bound_where_the_client_arrived(opened: list[Any]) -> None:
    low = free_block(2)
    wildcard = RelayAddressing(fallback_v4="192.0.2.1")  # bind 0.0.0.0, public_ip unset
    ports = UdpRelayPorts(addressing=wildcard, min_port=low, max_port=low + 1)
    relay = ports.open(4, local="127.0.0.1")
    assert relay is not None and relay.address[0] == "127.0.0.1" and relay.public[0] == "127.0.0.1"
    opened.append(relay)
    nat = RelayAddressing(bind_v4="127.0.0.1", public_v4="198.51.100.10")  # a 1:1 NAT's address
    ports = UdpRelayPorts(addressing=nat, min_port=low, max_port=low + 1)
    relay = ports.open(4, local="127.0.0.1")
    assert relay is not None
    assert relay.address[0] == "127.0.0.1" and relay.public == ("198.51.100.10", relay.address[1])
    opened.append(relay)


def test_supports_ipv6_only_with_an_ipv6_address() -> None:
    assert not UdpRelayPorts(addressing=LOOPBACK, min_port=1024, max_port=1025).supports(6)
    v6 = RelayAddressing(bind_v6="::1")
    assert UdpRelayPorts(addressing=v6, min_port=1024, max_port=1025).supports(6)


def test_host_addresses_named_by_the_rules() -> None:
    rules = RelayAddressing(
        bind_v4="0.0.0.0", public_v4="198.51.100.10", fallback_v4="10.0.0.5", bind_v6="::"
    )
    assert rules.host_addresses() == ["198.51.100.10", "10.0.0.5"]
    assert LOOPBACK.host_addresses() == ["127.0.0.1"]
    both = RelayAddressing(bind_v4="10.0.0.5", bind_v6="2001:db8:0::1", fallback_v4="10.0.0.5")
    assert both.host_addresses() == ["10.0.0.5", "2001:db8::1"]
