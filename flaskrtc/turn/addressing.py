"""Where a relay socket is bound and which address it is advertised with (sans-I/O).

A relayed transport address (XOR-RELAYED-ADDRESS, RFC 8656 §7.3) is only useful if every peer
can send to it. The rules, in order:

1. ``[turn] public_ip`` is set: it is advertised, whatever the client used (the 1:1 NAT of
   cloud hosts: the host itself does not own the address). Relays are bound on it when it is a
   local address, else on ``[turn] bind`` so that the NAT's translated packets arrive.
2. Otherwise the relay is bound on the local address the client's request arrived on (the UDP
   packet's destination, read with ``IP_PKTINFO``; the accepted stream's ``getsockname()``) and
   advertised with it, as coturn does per listener. A client that came over a public address
   gets a relay there, never a loopback one.
   A relay of the other address family than the arrival address (RFC 8656 §7.2: an IPv6
   client's default IPv4 relay, a dual allocation's IPv6 relay) is on loopback when the
   client came over loopback, else as in rule 3.
3. When that address is unknown (no ``IP_PKTINFO`` on this platform, a wildcard listener):
   ``[turn] bind`` if it is one address, else ``fallback`` (the host's first non-loopback
   address of the family, found by the shell at start-up; none for IPv6: no IPv6 relays).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["LOOPBACK", "RelayAddressing", "canonical_ip", "is_wildcard", "url_host"]


def canonical_ip(ip: str) -> str:
    """``ip`` in canonical form; an IPv4-mapped IPv6 address (a dual-stack socket's view of an
    IPv4 client) becomes the IPv4 address it maps."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def is_wildcard(ip: str) -> bool:
    """Whether ``ip`` is 0.0.0.0 or :: (a socket bound there receives on every address)."""
    return ip in ("", "0.0.0.0", "::")


LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def url_host(host: str) -> str:
    """``host`` as a URL or URI writes it: an IPv6 literal in brackets (RFC 3986 §3.2.2,
    RFC 7065 §3.1 for turn: URIs); a name, an IPv4 address or a bracketed one as it is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


@dataclass(frozen=True)
class RelayAddressing:
    """The relay address rules for one server; built once at start-up."""

    bind_v4: str = "0.0.0.0"  # [turn] bind, or the wildcard of its family
    bind_v6: str = "::"
    public_v4: str = ""  # [turn] public_ip of each family; "" = not set
    public_v6: str = ""
    public_v4_local: bool = False  # whether the host owns public_v4 (it can bind there)
    public_v6_local: bool = False
    fallback_v4: str = "127.0.0.1"  # rule 3, when the arrival address is unknown
    fallback_v6: str = ""  # "" = no IPv6 relays unless a client arrives over IPv6

    def supports(self, family: int, arrival: str | None = None) -> bool:
        """Whether a relay of ``family`` can be given an address a peer could use, for a
        client whose request arrived on local address ``arrival``: never a loopback relay
        for a client that did not come over loopback (it would be 440, not a dead relay)."""
        public = self.public_v4 if family == 4 else self.public_v6
        bind = self.bind_v4 if family == 4 else self.bind_v6
        fallback = self.fallback_v4 if family == 4 else self.fallback_v6
        if public or not is_wildcard(bind):
            return True
        if arrival is None or is_wildcard(arrival):
            # Unknown (no IP_PKTINFO here): the fallback, as the start-up log warns.
            return bool(fallback)
        here = ipaddress.ip_address(canonical_ip(arrival))
        if here.version == family or here.is_loopback:
            return True
        return bool(fallback) and not ipaddress.ip_address(fallback).is_loopback

    def choose(self, family: int, arrival: str | None) -> tuple[str, str]:
        """``(bind host, advertised host)`` of a relay of ``family`` (4 or 6) for a client
        whose request arrived on local address ``arrival`` (None or a wildcard: unknown)."""
        public = self.public_v4 if family == 4 else self.public_v6
        bind = self.bind_v4 if family == 4 else self.bind_v6
        if public:
            local = self.public_v4_local if family == 4 else self.public_v6_local
            return (public if local else bind), public
        if arrival is not None and not is_wildcard(arrival):
            here = canonical_ip(arrival)
            if _family(here) == family:
                return here, here
            if ipaddress.ip_address(here).is_loopback:
                # A client on loopback gets a relay of the other family on loopback too
                # (rule 2 for local clients): a peer of that family on this host reaches it.
                loopback = LOOPBACK[family]
                return loopback, loopback
        if not is_wildcard(bind):
            return bind, bind
        fallback = self.fallback_v4 if family == 4 else self.fallback_v6
        return bind, fallback

    def host_addresses(self) -> list[str]:
        """The host's addresses these rules name (``[turn] bind``, ``public_ip``, the
        fallback): peers there are the host itself, denied unless they are live relays."""
        named = (
            self.bind_v4,
            self.bind_v6,
            self.public_v4,
            self.public_v6,
            self.fallback_v4,
            self.fallback_v6,
        )
        return [canonical_ip(ip) for ip in dict.fromkeys(named) if not is_wildcard(ip)]

    def describe(self, pktinfo: bool) -> str:
        """One start-up line saying which rule gives relays their address."""
        if self.public_v4 or self.public_v6:
            parts = []
            for public, local in (
                (self.public_v4, self.public_v4_local),
                (self.public_v6, self.public_v6_local),
            ):
                if not public:
                    continue
                if local:
                    parts.append(f"{public} (a local address: relays are bound there)")
                else:
                    parts.append(
                        f"{public} (not a local address: a 1:1 NAT is assumed; forward the "
                        "TURN ports and the relay port range to this host)"
                    )
            return "relays are advertised as [turn] public_ip " + ", ".join(parts)
        if not is_wildcard(self.bind_v4):
            return f"relays are bound on and advertised as [turn] bind {self.bind_v4}"
        if pktinfo:
            return (
                "relays are bound on and advertised as the local address each client reached "
                "(no [turn] public_ip; set it only behind a 1:1 NAT)"
            )
        return (
            f"relays are advertised as {self.fallback_v4}: this platform cannot tell which "
            "local address a UDP client reached; set [turn] public_ip or [turn] bind"
        )
