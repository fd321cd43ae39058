"""``[general] trusted_proxies``: the client address from Forwarded / X-Forwarded-For."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flaskrtc.config import ConfigError, load_config
from flaskrtc.forwarded import TrustedProxies, client_address, forwarded_for
from flaskrtc.ratelimit import ConnectionLimits

PROXIES = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"])


def xff(value: str, peer: str = "127.0.0.1") -> str | None:
    return client_address(peer, None, value, PROXIES)


def fwd(value: str, peer: str = "127.0.0.1", x_forwarded_for: str | None = None) -> str | None:
    return client_address(peer, value, x_forwarded_for, PROXIES)


def test_trusts() -> None:
    assert PROXIES.trusts("127.0.0.1") and PROXIES.trusts("10.200.0.1")
    assert PROXIES.trusts("::ffff:10.0.0.1")  # a dual-stack socket's view of an IPv4 proxy
    assert PROXIES.trusts("fd00::1%eth0")
    assert not PROXIES.trusts("127.0.0.2") and not PROXIES.trusts("2001:db8::1")
    assert not PROXIES.trusts("not an address") and not PROXIES.trusts("")
    assert not TrustedProxies() and not TrustedProxies().trusts("127.0.0.1")


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("  198.51.100.7  ", "198.51.100.7"),
        # The right-most address that is no trusted proxy; what the client wrote on the left
        # (6.6.6.6) is ignored.
        ("6.6.6.6, 198.51.100.7", "198.51.100.7"),
        ("6.6.6.6, 198.51.100.7, 10.0.0.2", "198.51.100.7"),
        ("6.6.6.6,198.51.100.7,10.0.0.2,127.0.0.1", "198.51.100.7"),
        # A chain of trusted proxies only: the request began at the left-most.
        ("10.0.0.3, 10.0.0.2", "10.0.0.3"),
        ("2001:DB8:0::1", "2001:db8::1"),  # canonical spelling: one rate-limit key
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("198.51.100.7:4711", "198.51.100.7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("198.51.100.7, , ", "198.51.100.7"),
    ],
)
def test_x_forwarded_for(header: str, client: str) -> None:
    assert xff(header) == client


@pytest.mark.parametrize(
    "header",
    ["", "   ", ",", "garbage", "6.6.6.6, garbage", "unknown", "_hidden", "[2001:db8::1",
     "999.1.1.1", "1.2.3.4 5.6.7.8", "\x00", "[::1]x", "1.2.3.4:"],
)  # fmt: skip
def test_x_forwarded_for_garbage_keeps_the_socket_address(header: str) -> None:
    assert xff(header) is None


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("for=198.51.100.7", "198.51.100.7"),
        ("For=198.51.100.7", "198.51.100.7"),  # parameter names are case-insensitive
        ('for="198.51.100.7"', "198.51.100.7"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8::1]"', "2001:db8::1"),
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ("proto=https; for=192.0.2.60", "192.0.2.60"),
        ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
        ("for=192.0.2.43, for=198.51.100.17, for=10.0.0.1", "198.51.100.17"),
        ('for=192.0.2.43;by="a,b;c", for=10.0.0.1', "192.0.2.43"),  # separators in quotes
        ('for="\\1\\9\\2.0.2.43"', "192.0.2.43"),  # quoted-pair escapes
    ],
)
def test_forwarded(header: str, client: str) -> None:
    assert fwd(header) == client


@pytest.mark.parametrize(
    "header",
    [
        "for=unknown",
        "for=_hidden",
        'for="_gazonk"',
        "for=192.0.2.43, for=unknown",  # the hop before our proxy is unknown: so is the client
        "for=192.0.2.43, for=_hidden, for=10.0.0.1",
        "by=10.0.0.1",  # no for= at all
        'for="198.51.100.7',  # unterminated quote
        "for",  # no =
        "=198.51.100.7",
        'for=19"8.51.100.7',
        "for=not-an-ip",
        'for="[2001:db8::1]:4711:9"',
    ],
)
def test_forwarded_unknown_or_garbage_keeps_the_socket_address(header: str) -> None:
    assert fwd(header) is None
    # A Forwarded header we cannot read does not hand the decision to X-Forwarded-For,
    # which a proxy that only sets Forwarded would pass on from the client unchecked.
    assert fwd(header, x_forwarded_for="203.0.113.9") is None


def test_forwarded_wins_over_x_forwarded_for() -> None:
    assert fwd("for=198.51.100.7", x_forwarded_for="203.0.113.9") == "198.51.100.7"
    assert fwd("  ", x_forwarded_for="203.0.113.9") == "203.0.113.9"  # blank = absent


def test_forwarded_for_nodes() -> None:
    assert forwarded_for('for=1.2.3.4;proto=http, for="[::1]:80", by=x') == [
        "1.2.3.4",
        "::1",
        None,
    ]
    assert forwarded_for('for="x') is None


@pytest.mark.parametrize("peer", ["198.51.100.99", "127.0.0.2", "2001:db8::5", "", "junk"])
def test_untrusted_peer_headers_are_ignored(peer: str) -> None:
    assert xff("198.51.100.7", peer=peer) is None
    assert fwd("for=198.51.100.7", peer=peer) is None


def test_nobody_trusted_by_default() -> None:
    assert client_address("127.0.0.1", "for=1.2.3.4", "1.2.3.4", TrustedProxies()) is None


def test_long_chains_are_bounded() -> None:
    chain = ", ".join(["10.0.0.1"] * 10000)
    assert xff("198.51.100.7, " + chain) == "10.0.0.1"  # only the last 32 hops are read
    assert xff(chain + ", 198.51.100.7") == "198.51.100.7"


@given(st.text(max_size=200), st.text(max_size=200))
def test_any_header_text_is_safe(forwarded: str, x_forwarded_for: str) -> None:
    """Whatever the headers hold: an address string or None, never an exception."""
    for header in (forwarded, None):
        found = client_address("127.0.0.1", header, x_forwarded_for, PROXIES)
        assert found is None or isinstance(found, str)


def test_trusted_proxies_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {}, {}).general.trusted_proxies == ()
    env = {"FLASKRTC_GENERAL_TRUSTED_PROXIES": "127.0.0.1, 10.1.2.3/8 ,fd00::/8"}
    assert load_config(None, env, {}).general.trusted_proxies == (
        "127.0.0.1/32",
        "10.0.0.0/8",
        "fd00::/8",
    )
    with pytest.raises(ConfigError, match=r"general.trusted_proxies = '10.0.0.0/33'"):
        load_config(None, {}, {"general.trusted_proxies": "10.0.0.0/33"})


def test_connection_limits_total_only() -> None:
    """A trusted proxy's connections count in the total but skip the per-IP cap."""
    limits = ConnectionLimits(3, 1)
    assert limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") is not None
    assert limits.admit("10.0.0.1", per_ip=False) is None
    assert limits.admit("10.0.0.1", per_ip=False) is None
    refusal = limits.admit("10.0.0.1", per_ip=False)
    assert refusal is not None and refusal.cap == "max_connections"
    for _ in range(3):
        limits.release("10.0.0.1")
    assert limits.total == 0 and limits.count("10.0.0.1") == 0
