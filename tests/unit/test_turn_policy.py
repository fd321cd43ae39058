"""Peer address policy: default denies, IPv6 spellings of IPv4 (CVE-2020-26262), overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from flaskrtc.config import load_config
from flaskrtc.turn.policy import DEFAULT_DENIED, Access, PeerPolicy

DEFAULT = PeerPolicy()

DENIED_BY_DEFAULT = [
    # IPv4
    "0.0.0.0",  # reached loopback on coturn (CVE-2020-26262)
    "0.1.2.3",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "224.0.0.1",  # multicast
    "239.255.255.250",  # SSDP
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    # IPv6
    "::",
    "::1",
    "fe80::1",
    "febf:ffff::1",  # still inside fe80::/10
    "fe80::1%eth0",  # a scope id changes nothing
    "ff02::1",  # multicast
    "ff0e::101",
    # IPv4-mapped, the CVE-2020-26262 bypass
    "::ffff:127.0.0.1",
    "::FFFF:7f00:1",  # other spelling of the same
    "::ffff:0.0.0.0",
    "::ffff:169.254.169.254",
    "::ffff:224.0.0.1",
    "::ffff:255.255.255.255",
    # IPv4-compatible
    "::127.0.0.1",
    "::169.254.169.254",
    "::0.0.0.2",
    # IPv4-translated (SIIT)
    "::ffff:0:127.0.0.1",
    # NAT64 well-known prefix
    "64:ff9b::7f00:1",
    "64:ff9b::169.254.169.254",
    "64:ff9b::",
    # 6to4
    "2002:7f00:1::",
    "2002:7f00:1:1234::5",
    "2002:a9fe:a9fe::1",  # 169.254.169.254
    "2002::",  # 0.0.0.0
    # Teredo: client 127.0.0.1 stored inverted in the low 32 bits (RFC 4380 §4)
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
]

PERMITTED_BY_DEFAULT = [
    "8.8.8.8",
    "203.0.113.7",
    "1.0.0.1",
    "223.255.255.255",  # just below multicast
    "128.0.0.1",  # just above loopback
    "169.253.255.255",
    "2001:db8::1",
    "2606:4700:4700::1111",
    "fec0::1",  # outside fe80::/10
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 to 8.8.8.8
    "2002:808:808::1",  # 6to4 for 8.8.8.8
    "::8.8.8.8",
    # private ranges: LAN use
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.10",
    "100.64.0.1",  # carrier-grade NAT
    "fc00::1",
    "fd12:3456::1",
    "::ffff:192.168.1.10",
]


@pytest.mark.parametrize("ip", DENIED_BY_DEFAULT)
def test_denied_by_default(ip: str) -> None:
    assert DEFAULT.permits(ip) is False


@pytest.mark.parametrize("ip", PERMITTED_BY_DEFAULT)
def test_permitted_by_default(ip: str) -> None:
    assert DEFAULT.permits(ip) is True


@pytest.mark.parametrize(
    "ip",
    [
        "",
        " ",
        "localhost",
        "example.com",
        "300.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "0127.0.0.1",  # leading zeros: octal to some parsers (CVE-2021-29921)
        "127.0.0.1 ",
        "127.0.0.1:80",
        "[::1]",
        "::1/128",
        "10.0.0.0/8",
        "1:2:3:4:5:6:7:8:9",
        "gggg::1",
        "\x00",
        "2130706433",  # 127.0.0.1 as an integer string
    ],
)
def test_garbage_is_not_permitted(ip: str) -> None:
    assert DEFAULT.permits(ip) is False
    # Not even when an exemption would match what a lenient parser made of it.
    assert PeerPolicy(allowed=["0.0.0.0/0", "::/0"]).permits(ip) is False


@pytest.mark.parametrize("value", [None, 2130706433, b"\x7f\x00\x00\x01", ("127.0.0.1", 1)])
def test_non_string_is_not_permitted(value: object) -> None:
    assert DEFAULT.permits(value) is False  # type: ignore[arg-type]


def test_default_list_is_what_the_docs_say() -> None:
    assert "127.0.0.0/8" in DEFAULT_DENIED and "169.254.0.0/16" in DEFAULT_DENIED
    assert not any(net.startswith(("10.", "192.168.", "172.16.")) for net in DEFAULT_DENIED)


# --- configured denies -----------------------------------------------------------------------


def test_denied_adds_to_defaults() -> None:
    policy = PeerPolicy(denied=["10.0.0.0/8", "192.168.1.1", "fd00::/8", "2001:db8::1"])
    assert policy.permits("10.1.2.3") is False
    assert policy.permits("192.168.1.1") is False
    assert policy.permits("192.168.1.2") is True
    assert policy.permits("fd00::5") is False
    assert policy.permits("fc00::5") is True
    assert policy.permits("2001:db8::1") is False
    assert policy.permits("2001:db8::2") is True
    assert policy.permits("127.0.0.1") is False  # defaults still apply
    assert policy.permits("8.8.8.8") is True


def test_denied_ipv4_covers_its_ipv6_spellings() -> None:
    policy = PeerPolicy(denied=["10.0.0.0/8"])
    for ip in ("::ffff:10.0.0.1", "::10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::", "::ffff:0:a00:1"):
        assert policy.permits(ip) is False, ip


def test_denied_cidr_with_host_bits() -> None:
    # "10.1.2.3/8" means 10.0.0.0/8, as in the config file (ip_network(strict=False)).
    policy = PeerPolicy(denied=[" 10.1.2.3/8 "])
    assert policy.permits("10.200.0.1") is False


def test_denied_mapped_cidr_also_denies_plain_ipv4() -> None:
    policy = PeerPolicy(denied=["::ffff:192.168.0.0/112"])
    assert policy.permits("192.168.5.5") is False
    assert policy.permits("::ffff:192.168.5.5") is False
    assert policy.permits("192.169.0.1") is True


def test_deny_everything() -> None:
    policy = PeerPolicy(denied=["0.0.0.0/0", "::/0"])
    assert policy.permits("8.8.8.8") is False
    assert policy.permits("2001:db8::1") is False


# --- exemptions ------------------------------------------------------------------------------


def test_allowed_exempts_a_default_deny() -> None:
    policy = PeerPolicy(allowed=["127.0.0.1"])
    assert policy.permits("127.0.0.1") is True
    assert policy.permits("127.0.0.2") is False
    assert policy.permits("::1") is False  # a different address
    # The same address spelled as IPv6 is the same destination.
    assert policy.permits("::ffff:127.0.0.1") is True


def test_allowed_cidr() -> None:
    policy = PeerPolicy(allowed=["127.0.0.0/8", "::1"])
    assert policy.permits("127.0.0.1") is True
    assert policy.permits("127.1.2.3") is True
    assert policy.permits("::1") is True
    assert policy.permits("169.254.169.254") is False


def test_allowed_beats_configured_deny() -> None:
    policy = PeerPolicy(
        denied=["10.0.0.0/8", "2001:db8::/32"], allowed=["10.1.0.0/16", "2001:db8::7"]
    )
    assert policy.permits("10.1.2.3") is True
    assert policy.permits("10.2.0.1") is False
    assert policy.permits("::ffff:10.1.2.3") is True
    assert policy.permits("::ffff:10.2.0.1") is False
    assert policy.permits("2001:db8::7") is True
    assert policy.permits("2001:db8::8") is False


def test_allowed_ipv6_spelling_is_honoured() -> None:
    # Explicitly allowing a NAT64 or mapped address means it.
    assert PeerPolicy(allowed=["64:ff9b::/96"]).permits("64:ff9b::7f00:1") is True
    mapped = PeerPolicy(allowed=["::ffff:127.0.0.1"])
    assert mapped.permits("::ffff:127.0.0.1") is True
    assert mapped.permits("127.0.0.1") is True


def test_allowed_metadata_needs_to_be_explicit() -> None:
    assert PeerPolicy(allowed=["10.0.0.0/8"]).permits("169.254.169.254") is False
    assert PeerPolicy(allowed=["169.254.169.254"]).permits("169.254.169.254") is True


# --- this server's own relay addresses -------------------------------------------------------


def test_own_relay_address_is_permitted() -> None:
    relays = {("127.0.0.1", 50000), ("::1", 50002)}
    assert DEFAULT.permits("127.0.0.1", relays, 50000) is True
    assert DEFAULT.permits("127.0.0.1", relays, 50001) is False  # not a live relay port
    assert DEFAULT.permits("127.0.0.2", relays, 50000) is False
    assert DEFAULT.permits("::1", relays, 50002) is True
    assert DEFAULT.permits("0:0:0:0:0:0:0:1", relays, 50002) is True  # canonicalised


def test_own_relay_address_via_mapped_form() -> None:
    relays = {("127.0.0.1", 50000)}
    assert DEFAULT.permits("::ffff:127.0.0.1", relays, 50000) is True
    # Other IPv6 spellings go through gateways, not to our socket.
    assert DEFAULT.permits("64:ff9b::7f00:1", relays, 50000) is False
    assert DEFAULT.permits("::127.0.0.1", relays, 50000) is False


def test_own_relay_address_beats_configured_deny() -> None:
    policy = PeerPolicy(denied=["203.0.113.0/24"])
    relays = {("203.0.113.7", 49152)}
    assert policy.permits("203.0.113.7", relays, 49152) is True
    assert policy.permits("203.0.113.7", relays, 49153) is False
    assert policy.permits("203.0.113.7") is False


def test_relay_addresses_need_a_port() -> None:
    relays = {("127.0.0.1", 50000)}
    assert DEFAULT.permits("127.0.0.1", relays) is False
    assert DEFAULT.permits("127.0.0.1", None, 50000) is False


def test_relay_addresses_any_container() -> None:
    class Live:
        def __init__(self) -> None:
            self.asked: list[object] = []

        def __contains__(self, item: object) -> bool:
            self.asked.append(item)
            return item == ("127.0.0.1", 1)

    live = Live()
    assert DEFAULT.permits("127.0.0.1", live, 1) is True
    assert live.asked == [("127.0.0.1", 1)]


# --- the host's own addresses, and what the own-relay exception may reach (issue 10) -------

OWN = {"203.0.113.7", "2001:db8::7"}


def test_own_host_addresses_are_denied_like_loopback() -> None:
    assert DEFAULT.classify("203.0.113.7", 22, own=OWN) is Access.DENIED
    assert DEFAULT.classify("203.0.113.8", 22, own=OWN) is Access.OPEN
    assert DEFAULT.classify("2001:db8::7", 22, own=OWN) is Access.DENIED
    assert DEFAULT.classify("2001:db8:0::7", 22, own=OWN) is Access.DENIED  # canonicalised
    assert DEFAULT.classify("2001:db8::8", 22, own=OWN) is Access.OPEN
    assert DEFAULT.permits("203.0.113.7", own=OWN) is False
    assert DEFAULT.permits("203.0.113.7") is True  # without ``own``: an ordinary address


@pytest.mark.parametrize(
    "spelling",
    ["::ffff:203.0.113.7", "::203.0.113.7", "64:ff9b::203.0.113.7", "2002:cb00:7107::1"],
)
def test_ipv6_spellings_of_an_own_ipv4_address_are_denied(spelling: str) -> None:
    assert DEFAULT.classify(spelling, 22, own=OWN) is Access.DENIED
    assert DEFAULT.classify(spelling, 22) is Access.OPEN


def test_allowed_exempts_own_addresses() -> None:
    policy = PeerPolicy(allowed=["203.0.113.7", "2001:db8::7"])
    assert policy.classify("203.0.113.7", 22, own=OWN) is Access.OPEN
    assert policy.classify("::ffff:203.0.113.7", 22, own=OWN) is Access.OPEN
    assert policy.classify("2001:db8::7", 22, own=OWN) is Access.OPEN
    assert PeerPolicy(allowed=["203.0.113.7"]).classify("64:ff9b::cb00:7107", 1, own=OWN) is (
        Access.OPEN
    )


def test_denied_relay_address_is_relays_only_and_open_one_is_open() -> None:
    relays = {("127.0.0.1", 50000), ("203.0.113.7", 50002), ("8.8.8.8", 50004)}
    assert DEFAULT.classify("127.0.0.1", 50000, relays) is Access.RELAYS_ONLY
    assert DEFAULT.classify("127.0.0.1", 50001, relays) is Access.DENIED
    assert DEFAULT.classify("203.0.113.7", 50002, relays, OWN) is Access.RELAYS_ONLY
    assert DEFAULT.classify("203.0.113.7", 50003, relays, OWN) is Access.DENIED
    assert DEFAULT.classify("::ffff:127.0.0.1", 50000, relays) is Access.RELAYS_ONLY
    # A relay on an address peers may reach anyway gains nothing from the exception.
    assert DEFAULT.classify("8.8.8.8", 50004, relays) is Access.OPEN
    assert DEFAULT.classify("127.0.0.1", None, relays) is Access.DENIED
    assert DEFAULT.classify("not an ip", 50000, relays) is Access.DENIED
    assert DEFAULT.classify(None, 50000, relays) is Access.DENIED  # type: ignore[arg-type]


# --- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["", "localhost", "10.0.0.0/33", "1.2.3.4/8/9", "::1/129", "x"])
@pytest.mark.parametrize("kind", ["denied", "allowed"])
def test_bad_entry_raises_clear_value_error(kind: str, entry: str) -> None:
    with pytest.raises(ValueError) as info:
        PeerPolicy(**{kind: ["10.0.0.0/8", entry]})
    message = str(info.value)
    assert repr(entry) in message
    assert f"{kind} peer address" in message
    assert "IP address or CIDR" in message


@pytest.mark.parametrize("kind", ["denied", "allowed"])
def test_bare_string_is_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match="not a string"):
        PeerPolicy(**{kind: "127.0.0.1"})


def test_non_string_entry_raises_value_error() -> None:
    with pytest.raises(ValueError):
        PeerPolicy(denied=[None])  # type: ignore[list-item]


def test_generators_are_accepted() -> None:
    policy = PeerPolicy(allowed=(ip for ip in ["127.0.0.1"]))
    assert policy.permits("127.0.0.1") is True


def test_many_entries_are_collapsed() -> None:
    # 256 adjacent /24s behave as one /16 (and cost one comparison).
    policy = PeerPolicy(denied=[f"10.9.{i}.0/24" for i in range(256)])
    assert policy.permits("10.9.200.1") is False
    assert policy.permits("10.10.0.1") is True


def test_config_values_feed_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What config.py accepts (canonical CIDRs), PeerPolicy accepts, with the same meaning.
    monkeypatch.chdir(tmp_path)
    overrides = {
        "turn.denied_peer_ip": "10.1.2.3/8, fd00::/8",
        "turn.allowed_peer_ip": "127.0.0.1, fe80::1%eth0",
    }
    turn = load_config(None, {}, overrides).turn
    policy = PeerPolicy(denied=turn.denied_peer_ip, allowed=turn.allowed_peer_ip)
    assert policy.permits("10.200.0.1") is False
    assert policy.permits("fd00::1") is False
    assert policy.permits("127.0.0.1") is True
    assert policy.permits("fe80::1") is True
    assert policy.permits("fe80::2") is False


def test_ipv4_mapped_prefix_of_96_bits_names_every_ipv4_address() -> None:
    # "::ffff:0:0/96" is all of IPv4 in its IPv6 spelling (RFC 4291 §2.5.5.2): denying it
    # denies the plain IPv4 form too.
    policy = PeerPolicy(denied=["::ffff:0:0/96"])
    assert policy.permits("203.0.113.9") is False
    assert policy.permits("::ffff:203.0.113.9") is False
    assert policy.permits("2001:db8::1") is True


def test_a_plain_ipv6_prefix_of_96_bits_or_more_names_no_ipv4_address() -> None:
    # Only the ::ffff:0:0/96 block carries IPv4 addresses: 2001:db8::/96 ends in 32 bits
    # too, but it must not turn into a rule about IPv4 (it would deny all of it).
    policy = PeerPolicy(denied=["2001:db8::/96", "2001:db8:1::/120"])
    assert policy.permits("203.0.113.9") is True
    assert policy.permits("0.0.0.1") is False  # 0.0.0.0/8 is denied by default anyway
    assert policy.permits("2001:db8::5") is False
