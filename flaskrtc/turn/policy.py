"""Which peer addresses the relay may talk to (sans-I/O: no sockets, no gevent).

A TURN server sends whatever its clients ask it to, from inside the operator's network, so an
open relay is a way in: to the host's own loopback services, to the cloud metadata endpoint
169.254.169.254, to multicast. RFC 8656 §10.2 and §12.2 let a server refuse peer addresses with
403 (Forbidden); coturn learnt the hard way that a deny list must also catch IPv6 spellings of
IPv4 addresses (CVE-2020-26262: ``::ffff:127.0.0.1`` and ``0.0.0.0`` reached loopback).
:class:`PeerPolicy` decides those 403s and which relayed packets are dropped.

The host's own addresses (where its relays and listeners are bound, ``[turn] public_ip``) are
denied too, since a relay sending to them reaches the host's services from inside; the one
exception is this server's own live relay sockets, which clients of one server use to reach
each other. A permission won by that exception is :attr:`Access.RELAYS_ONLY`: it must reach
those relay sockets and nothing else at that IP (RFC 8656 permissions cover a whole IP).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Container, Iterable

__all__ = ["DEFAULT_DENIED", "Access", "PeerPolicy"]

# Denied unless exempted by ``allowed``. Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7,
# 100.64/10) are deliberately absent: relaying inside a LAN is a normal use.
DEFAULT_DENIED: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the host itself on Linux (CVE-2020-26262)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, including 169.254.169.254 (cloud instance metadata)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved (RFC 1112 §4), including broadcast 255.255.255.255
    "::/128",  # unspecified: like 0.0.0.0, a connect() to it reaches the host itself
    "::1/128",  # loopback
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)

_MAPPED = 0xFFFF  # upper 96 bits of ::ffff:0:0/96

# IPv6 forms that carry an IPv4 address in their low 32 bits, keyed by their upper 96 bits.
# Each is a way to reach that IPv4 address (CVE-2020-26262 used the mapped form).
_EMBED_LOW32 = frozenset(
    {
        _MAPPED,  # ::ffff:0:0/96, IPv4-mapped (RFC 4291 §2.5.5.2): a dual-stack socket sends IPv4
        0,  # ::/96, IPv4-compatible (RFC 4291 §2.5.5.1, deprecated but still routable)
        0x64FF9B << 64,  # 64:ff9b::/96, NAT64 well-known prefix (RFC 6052 §2.1)
        0xFFFF0000,  # ::ffff:0:0:0/96, IPv4-translated (RFC 2765 §2.1, SIIT)
    }
)
_SIXTOFOUR = 0x2002  # 2002::/16, 6to4 (RFC 3056 §2): IPv4 in bits 16..47
_TEREDO = 0x20010000  # 2001::/32, Teredo (RFC 4380 §4): client IPv4 inverted in the low 32 bits
_V4_MASK = 0xFFFFFFFF

# A network as (first address, netmask) integers: "n & mask == first" is the membership test,
# much cheaper than building ipaddress objects per check.
_Net = tuple[int, int]


def _embedded_v4(n: int) -> int | None:
    """The IPv4 address (as an integer) an IPv6 address ``n`` leads to, if any."""
    if n >> 32 in _EMBED_LOW32:
        return n & _V4_MASK
    if n >> 112 == _SIXTOFOUR:
        return (n >> 80) & _V4_MASK
    if n >> 96 == _TEREDO:
        return ~n & _V4_MASK
    return None


def _parse(entries: Iterable[str], what: str) -> tuple[tuple[_Net, ...], tuple[_Net, ...]]:
    """IPv4 and IPv6 networks of ``entries``, each list collapsed to the fewest networks."""
    if isinstance(entries, str):
        # A bare string would iterate per character and fail with a baffling message.
        raise ValueError(f"{what} must be a list of IP addresses or CIDRs, not a string")
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except (ValueError, TypeError, AttributeError):
            raise ValueError(
                f"{what} entry {entry!r} is not an IP address or CIDR (e.g. 10.0.0.0/8, fc00::/7)"
            ) from None
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
            continue
        v6.append(network)
        # "::ffff:10.0.0.0/104" names IPv4 addresses; let it match their plain IPv4 form too.
        if network.prefixlen >= 96 and int(network.network_address) >> 32 == _MAPPED:
            first = int(network.network_address) & _V4_MASK
            v4.append(ipaddress.IPv4Network((first, network.prefixlen - 96)))

    def table(nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> tuple[_Net, ...]:
        return tuple((int(n.network_address), int(n.netmask)) for n in nets)

    return table(ipaddress.collapse_addresses(v4)), table(ipaddress.collapse_addresses(v6))


class Access(enum.Enum):
    """What the policy lets the relay do with a peer address."""

    DENIED = "denied"  # 403
    OPEN = "open"  # any port of that IP
    RELAYS_ONLY = "relays-only"  # only this server's live relay addresses at that IP


def _member(n: int, nets: tuple[_Net, ...]) -> bool:
    for first, mask in nets:
        if n & mask == first:
            return True
    return False


class PeerPolicy:
    """Decide whether the relay may send to a peer IP address; immutable once built."""

    __slots__ = ("_allow4", "_allow6", "_deny4", "_deny6")

    def __init__(self, *, denied: Iterable[str] = (), allowed: Iterable[str] = ()) -> None:
        """``denied`` adds to :data:`DEFAULT_DENIED`; ``allowed`` exempts from both.

        Entries are IP addresses or CIDRs (host bits may be set); a bad one raises ValueError.
        """
        base4, base6 = _parse(DEFAULT_DENIED, "default denied")
        extra4, extra6 = _parse(denied, "denied peer address")
        self._deny4 = base4 + extra4
        self._deny6 = base6 + extra6
        self._allow4, self._allow6 = _parse(allowed, "allowed peer address")

    def _denied4(self, n: int) -> bool:
        return _member(n, self._deny4) and not _member(n, self._allow4)

    def permits(
        self,
        ip: str,
        relay_addresses: Container[tuple[str, int]] | None = None,
        port: int | None = None,
        own: Container[str] = (),
    ) -> bool:
        """Whether the relay may send to ``ip`` (and ``port``); False for unparseable input.

        ``relay_addresses`` holds this server's live relayed addresses as ``(ip, port)`` with
        ``ip`` in canonical ``str(ipaddress.ip_address(...))`` form; a peer that is one of them
        is always permitted, so two clients of one server can reach each other. See
        :meth:`classify` for ``own`` and for what such a permission may reach.
        """
        return self.classify(ip, port, relay_addresses, own) is not Access.DENIED

    def classify(
        self,
        ip: str,
        port: int | None = None,
        relay_addresses: Container[tuple[str, int]] | None = None,
        own: Container[str] = (),
    ) -> Access:
        """How the relay may use peer ``ip`` (asked for with ``port``).

        ``own`` holds the host's own addresses in canonical form: denied like loopback unless
        ``allowed`` lists them. A denied ``(ip, port)`` that is in ``relay_addresses`` (a live
        relay of this server) is :attr:`Access.RELAYS_ONLY`.
        """
        if not isinstance(ip, str):
            return Access.DENIED
        try:
            # Rejects leading-zero octets like "0127.0.0.1" too (CVE-2021-29921, Python 3.9.5+).
            address = ipaddress.ip_address(ip)
        except ValueError:
            return Access.DENIED
        n = int(address)  # drops any "%scope" suffix, which routing to a peer does not need
        if address.version == 4:
            canonical = str(address)
            blocked = self._denied4(n) or (canonical in own and not _member(n, self._allow4))
        else:
            embedded = _embedded_v4(n)
            # Only the mapped form is the same socket address; 6to4/NAT64 go via a gateway.
            if n >> 32 == _MAPPED and embedded is not None:
                canonical = str(ipaddress.IPv4Address(embedded))
            else:
                canonical = str(ipaddress.IPv6Address(n))
            blocked = self._denied6(n, embedded, own)
        if not blocked:
            return Access.OPEN
        if relay_addresses is not None and port is not None:
            if (canonical, port) in relay_addresses:
                return Access.RELAYS_ONLY
        return Access.DENIED

    def _denied6(self, n: int, embedded: int | None, own: Container[str]) -> bool:
        if _member(n, self._allow6):
            return False
        if _member(n, self._deny6) or str(ipaddress.IPv6Address(n)) in own:
            return True
        if embedded is None:
            return False
        # The IPv4 address behind an IPv6 spelling gets the IPv4 rules (CVE-2020-26262).
        if self._denied4(embedded):
            return True
        return str(ipaddress.IPv4Address(embedded)) in own and not _member(embedded, self._allow4)
