"""The client address behind a trusted reverse proxy: ``Forwarded`` (RFC 7239) or
``X-Forwarded-For``. Sans-I/O: strings in, an address (or None) out.

Only a TCP peer inside ``[general] trusted_proxies`` is believed; from anyone else the
headers are ignored (a client may send whatever it likes, and that is no error). A header
that cannot be read is ignored too: the socket address stays the client's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from flaskrtc.turn.addressing import canonical_ip

# More hops than this in one header is no real proxy chain; the rest is not looked at (the
# header's size is bounded by the HTTP parser anyway, this bounds the work per request).
MAX_HOPS = 32

# RFC 7239 §6: node-port = port / obfport; port = 1*5DIGIT; obfport = "_" 1*(ALPHA / DIGIT
# / "." / "_" / "-").
_PORT_RE = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_or_none(text: str) -> str | None:
    """``text`` as an IP address in its one canonical spelling (IPv4-mapped IPv6 as IPv4, no
    %scope), or None. Canonical, so that ``2001:DB8::1`` and ``2001:db8:0::1`` share a rate
    limit."""
    try:
        return canonical_ip(text.strip())
    except ValueError:
        return None


class TrustedProxies:
    """The ``[general] trusted_proxies`` networks; empty trusts nobody."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(net, strict=False) for net in networks
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: str) -> bool:
        """True when ``ip`` (an address string, maybe with a %scope) is a trusted proxy."""
        if not self.networks:
            return False
        canonical = ip_or_none(ip)
        if canonical is None:
            return False
        address = ipaddress.ip_address(canonical)
        return any(address in net for net in self.networks)


def _node_ip(node: str) -> str | None:
    """The IP address of a node: ``192.0.2.1``, ``192.0.2.1:8080``, ``[2001:db8::1]``,
    ``[2001:db8::1]:4711`` or a bare ``2001:db8::1``; None for ``unknown``, an obfuscated
    ``_hidden`` identifier (RFC 7239 §6.3) or anything else."""
    node = node.strip()
    if node.startswith("["):
        end = node.find("]")
        if end < 0:
            return None
        rest = node[end + 1 :]
        if rest and not (rest.startswith(":") and _PORT_RE.fullmatch(rest[1:])):
            return None
        return ip_or_none(node[1:end])
    if node.count(":") == 1:  # IPv4 with a port (an IPv6 address has at least two colons)
        node, port = node.split(":", 1)
        if not _PORT_RE.fullmatch(port):
            return None
    return ip_or_none(node)


def _split_top(text: str, separators: str) -> list[str] | None:
    """``text`` cut at ``separators`` outside quoted strings (quotes kept); None when a
    quoted string is not closed."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in separators:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        return None
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str | None:
    """A token, or a quoted-string's content with its escapes undone; None if malformed."""
    value = value.strip()
    if not value.startswith('"'):
        return None if '"' in value else value
    if len(value) < 2 or not value.endswith('"'):
        return None
    out: list[str] = []
    chars = iter(value[1:-1])
    for char in chars:
        if char == "\\":
            char = next(chars, "")
        elif char == '"':
            return None
        out.append(char)
    return "".join(out)


def forwarded_for(header: str) -> list[str | None] | None:
    """The ``for=`` node of each element of a ``Forwarded`` header, in order: its IP address,
    or None for an element whose ``for`` is missing, ``unknown``, obfuscated or not an
    address. None for the whole header when it is not RFC 7239 syntax."""
    elements = _split_top(header, ",")
    if elements is None:
        return None
    nodes: list[str | None] = []
    for element in elements:
        if not element.strip():
            continue  # "a, , b": empty list elements are allowed (RFC 9110 §5.6.1)
        node: str | None = None
        pairs = _split_top(element, ";")
        assert pairs is not None  # the quotes balanced in the element already
        for pair in pairs:
            if not pair.strip():
                continue
            name, equals, value = pair.partition("=")
            unquoted = _unquote(value)
            if not equals or not name.strip() or unquoted is None:
                return None
            if name.strip().lower() == "for":
                node = _node_ip(unquoted)
        nodes.append(node)
    return nodes


def _pick(hops: list[str | None], trusted: TrustedProxies) -> str | None:
    """The client among ``hops`` (each proxy appends the address it got the request from):
    the right-most hop that is not a trusted proxy.

    Not the left-most: every hop left of the last trusted proxy is what the previous sender
    wrote, and the first one is whatever the client itself put in the header. Only the hops
    our own proxies appended are true, so we walk from the right while the hop is one of
    them, and the first other address is the one that connected to our outermost proxy. A
    hop that is no address (``unknown``, obfuscated, garbage) ends the walk with None: who
    sent the request is then unknown, and the socket address is kept.
    """
    hops = hops[-MAX_HOPS:]
    for hop in reversed(hops):
        if hop is None:
            return None
        if not trusted.trusts(hop):
            return hop
    # Every hop is a trusted proxy: the request began at the left-most one.
    return hops[0] if hops else None


def client_address(
    peer: str,
    forwarded: str | None,
    x_forwarded_for: str | None,
    trusted: TrustedProxies,
) -> str | None:
    """The client's address from the headers when ``peer`` (the TCP peer) is a trusted proxy,
    else None (keep the socket address). ``Forwarded`` wins when it is present: a header we
    cannot read then means "unknown", not "ask X-Forwarded-For", which a proxy that sets
    only ``Forwarded`` would pass on from the client unchecked."""
    if not trusted.trusts(peer):
        return None
    if forwarded is not None and forwarded.strip():
        hops = forwarded_for(forwarded)
        return _pick(hops, trusted) if hops else None
    if x_forwarded_for is not None and x_forwarded_for.strip():
        items = [item for item in x_forwarded_for.split(",") if item.strip()]
        return _pick([_node_ip(item) for item in items[-MAX_HOPS:]], trusted)
    return None
