"""Which address a relay is bound on and advertised with (flaskrtc.turn.addressing)."""

from __future__ import annotations

import pytest

from flaskrtc.turn.addressing import RelayAddressing, canonical_ip, is_wildcard
from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.stun import Attr, Class
from tests.unit.test_turn_core import Client, make_core

WILD = RelayAddressing(fallback_v4="192.0.2.250")


def test_no_public_ip_relays_live_on_the_address_the_client_reached() -> None:
    assert WILD.choose(4, "198.18.0.10") == ("198.18.0.10", "198.18.0.10")
    assert WILD.choose(4, "127.0.0.1") == ("127.0.0.1", "127.0.0.1")


def test_a_dual_stack_listener_sees_ipv4_clients_as_mapped_addresses() -> None:
    assert WILD.choose(4, "::ffff:198.18.0.10") == ("198.18.0.10", "198.18.0.10")
    assert canonical_ip("::ffff:198.18.0.10") == "198.18.0.10"
    assert canonical_ip("2001:db8:0:0::5") == "2001:db8::5"


def test_unknown_arrival_address_falls_back_to_bind_then_the_guess() -> None:
    assert WILD.choose(4, None) == ("0.0.0.0", "192.0.2.250")
    assert WILD.choose(4, "0.0.0.0") == ("0.0.0.0", "192.0.2.250")
    bound = RelayAddressing(bind_v4="198.18.0.10", fallback_v4="198.18.0.10")
    assert bound.choose(4, None) == ("198.18.0.10", "198.18.0.10")


def test_an_arrival_address_of_the_other_family_is_not_used() -> None:
    v6 = RelayAddressing(bind_v6="2001:db8::5")
    assert v6.choose(6, "198.18.0.10") == ("2001:db8::5", "2001:db8::5")
    assert WILD.choose(4, "2001:db8::7") == ("0.0.0.0", "192.0.2.250")


def test_public_ip_wins_whatever_the_client_reached() -> None:
    local = RelayAddressing(public_v4="198.18.0.10", public_v4_local=True)
    assert local.choose(4, "127.0.0.1") == ("198.18.0.10", "198.18.0.10")
    # 1:1 NAT: the host does not own the public address; bind where the NAT delivers.
    nat = RelayAddressing(public_v4="203.0.113.5", public_v4_local=False)
    assert nat.choose(4, "10.0.0.5") == ("0.0.0.0", "203.0.113.5")
    assert nat.choose(4, "127.0.0.1") == ("0.0.0.0", "203.0.113.5")


def test_ipv6_relays_exist_only_with_an_ipv6_address_to_give() -> None:
    assert WILD.supports(4)
    assert not WILD.supports(6)
    assert RelayAddressing(public_v6="2001:db8::5").supports(6)
    assert RelayAddressing(bind_v6="2001:db8::5").supports(6)


def test_wildcards() -> None:
    assert is_wildcard("0.0.0.0") and is_wildcard("::") and is_wildcard("")
    assert not is_wildcard("127.0.0.1")


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        (WILD, "the local address each client reached"),
        (RelayAddressing(public_v4="198.18.0.10", public_v4_local=True), "relays are bound there"),
        (RelayAddressing(public_v4="203.0.113.5"), "a 1:1 NAT is assumed"),
        (RelayAddressing(bind_v4="198.18.0.10"), "[turn] bind 198.18.0.10"),
    ],
)
def test_the_start_up_line_names_the_rule_in_force(rules: RelayAddressing, says: str) -> None:
    assert says in rules.describe(pktinfo=True)


def test_without_pktinfo_the_start_up_line_says_what_to_set() -> None:
    text = WILD.describe(pktinfo=False)
    assert "192.0.2.250" in text and "public_ip" in text


def test_the_core_opens_relays_on_the_five_tuples_server_address() -> None:
    core, ports = make_core()
    ft = FiveTuple("udp", ("198.51.100.7", 40000), ("198.18.0.10", 3478))
    client = Client(core, ft)
    assert client.allocate().cls == Class.SUCCESS
    # EVEN-PORT with the R bit opens two relays: both on the address the client reached.
    second = Client(core, FiveTuple("udp", ("198.51.100.7", 40001), ("198.18.0.11", 3478)))
    reply = second.allocate({Attr.EVEN_PORT: True})
    assert reply.cls == Class.SUCCESS
    assert ports.locals == ["198.18.0.10", "198.18.0.11", "198.18.0.11"]


def test_guessed_addresses_skip_loopback_and_link_local_and_prefer_public(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flaskrtc.turn.server as turn_server

    sources = {
        "_routed_source": ["10.0.0.5"],
        "_interface_addresses": ["127.0.0.1", "169.254.1.1", "93.184.216.34", "10.0.0.5"],
        "_hostname_addresses": ["127.0.1.1"],
    }
    for name, found in sources.items():
        monkeypatch.setattr(turn_server, name, lambda _family, found=found: found)
    assert turn_server.guess_public_ipv4() == "93.184.216.34"  # public before private
    for name in sources:
        monkeypatch.setattr(turn_server, name, lambda _family: ["::1", "fe80::1", "127.0.0.1"])
    # Nothing usable: IPv4 falls back to loopback (for loopback clients), IPv6 to none.
    assert turn_server.guess_public_ipv4() == "127.0.0.1"
    assert turn_server.guess_public_ipv6() == ""
    monkeypatch.setattr(turn_server, "_interface_addresses", lambda _family: ["2001:db8::7"])
    assert turn_server.guess_public_ipv6() == "2001:db8::7"


def test_a_relay_of_the_other_family_is_never_loopback_for_a_client_off_loopback() -> None:
    # No public_ip, wildcard binds, and no address of the other family known (loopback only):
    # a client over IPv6 cannot get an IPv4 relay on 127.0.0.1 (440), one on ::1 can.
    addressing = RelayAddressing(bind_v4="0.0.0.0", bind_v6="::", fallback_v4="127.0.0.1")
    assert not addressing.supports(4, "2001:db8::10")
    assert addressing.supports(4, "::1")
    assert addressing.choose(4, "::1") == ("127.0.0.1", "127.0.0.1")
    assert not addressing.supports(6, "198.51.100.1")  # an IPv4 client: no IPv6 relay known
    assert addressing.supports(6, "127.0.0.1")  # loopback: ::1
    assert addressing.choose(6, "127.0.0.1") == ("::1", "::1")
    # With a real address of the other family, it is used.
    known = RelayAddressing(fallback_v4="198.18.0.10", fallback_v6="2001:db8::10")
    assert known.supports(4, "2001:db8::10")
    assert known.choose(4, "2001:db8::10") == ("0.0.0.0", "198.18.0.10")
    assert known.choose(6, "198.51.100.1") == ("::", "2001:db8::10")
