"""TURN allocation state (RFC 8656 §2.2, §7 to §12), with time passed in.

An :class:`Allocation` is what the relay's hot path reads: ``channel_to_peer`` maps a
ChannelData channel to its peer address, ``peer_to_channel`` the reverse, ``permissions``
the peer IPs allowed through. They are plain dicts kept current by :class:`Allocations`, so
the gevent shell forwards a packet with one or two dict look-ups and no parsing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

Address = tuple[str, int]

# RFC 8656 §9 and §12: permission and channel binding lifetimes.
PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
# RFC 8656 §7.2: how long a port kept by EVEN-PORT's R bit waits for its RESERVATION-TOKEN.
RESERVATION_LIFETIME = 30.0
# RFC 8656 §12 narrowed channel numbers to 0x4000-0x4FFF, but RFC 5766 allowed up to 0x7FFF
# and coturn (server and its test client) still uses that range: accept it, as coturn does.
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFF


class FiveTuple(NamedTuple):
    """A client's transport, its address, and the server address it talks to (RFC 8656 §2)."""

    transport: str  # "udp", "tcp" or "tls"
    client: Address
    server: Address


class Relay(Protocol):
    """A relay transport address the shell opened (a bound UDP socket)."""

    @property
    def address(self) -> Address:
        """The local (ip, port) the relay socket is bound to."""
        ...

    @property
    def public(self) -> Address:
        """The (ip, port) clients are told (XOR-RELAYED-ADDRESS): public_ip and the port."""
        ...

    @property
    def raw(self) -> Any:
        """The socket datagrams to peers are sent from (``sendto``)."""
        ...


class RelayPorts(Protocol):
    """Opens and closes relay sockets for the core (the shell's side of the bargain)."""

    def supports(self, family: int) -> bool:
        """Whether relays of address family 4 or 6 can be opened."""
        ...

    def open(
        self,
        family: int,
        *,
        port: int | None = None,
        even: bool = False,
        local: str | None = None,
    ) -> Relay | None:
        """Bind a relay socket: a given ``port``, an even one, or any in the range; None if
        none is free (508). ``local`` is the server address the client's request arrived on
        (the five-tuple's server side), which decides where the relay lives when
        ``[turn] public_ip`` is not set (see :mod:`flaskrtc.turn.addressing`)."""
        ...

    def close(self, relay: Relay) -> None:
        """Release a relay socket."""
        ...


@dataclass(eq=False)
class Allocation:
    """One client's allocation: its relay, lifetime, permissions and channels."""

    five_tuple: FiveTuple
    username: str
    key: bytes  # long-term key, to sign responses (RFC 8489 §9.2.4)
    relay: Relay
    expires: float
    transaction_id: bytes  # of the Allocate, to answer its retransmissions (§7.2)
    response: bytes = b""  # the success response, resent on retransmission
    permissions: dict[str, float] = field(default_factory=dict)  # peer ip -> expiry
    channel_to_peer: dict[int, Address] = field(default_factory=dict)
    peer_to_channel: dict[Address, int] = field(default_factory=dict)
    channel_expiry: dict[int, float] = field(default_factory=dict)
    shell: Any = None  # the shell's per-allocation state (socket reader greenlet)

    @property
    def family(self) -> int:
        """4 or 6: the relay's address family."""
        return 6 if ":" in self.relay.address[0] else 4

    def permit(self, ip: str, now: float) -> None:
        """Install or refresh the permission for ``ip`` (RFC 8656 §9, §10.2)."""
        self.permissions[ip] = now + PERMISSION_LIFETIME

    def bind(self, channel: int, peer: Address, now: float) -> None:
        """Bind or refresh ``channel`` to ``peer``; also refreshes its permission (§12.2)."""
        self.channel_to_peer[channel] = peer
        self.peer_to_channel[peer] = channel
        self.channel_expiry[channel] = now + CHANNEL_LIFETIME
        self.permit(peer[0], now)

    def expire(self, now: float) -> None:
        """Drop expired permissions and channel bindings."""
        for ip in [ip for ip, t in self.permissions.items() if t <= now]:
            del self.permissions[ip]
        for channel in [c for c, t in self.channel_expiry.items() if t <= now]:
            peer = self.channel_to_peer.pop(channel)
            del self.peer_to_channel[peer]
            del self.channel_expiry[channel]


@dataclass
class Reservation:
    """A relay port kept for a later Allocate with RESERVATION-TOKEN (RFC 8656 §14.9)."""

    relay: Relay
    expires: float


class Allocations:
    """Every live allocation, by five-tuple and by relay address, with quotas."""

    def __init__(self, ports: RelayPorts) -> None:
        self.ports = ports
        self.by_five_tuple: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}  # by bound address (hot path)
        self.by_public: dict[Address, Allocation] = {}  # by advertised address (policy)
        self.per_user: dict[str, int] = {}
        self.reservations: dict[bytes, Reservation] = {}

    def __len__(self) -> int:
        return len(self.by_five_tuple)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self.by_five_tuple.values()))

    def get(self, five_tuple: FiveTuple) -> Allocation | None:
        """The allocation of ``five_tuple``, if any."""
        return self.by_five_tuple.get(five_tuple)

    def add(self, allocation: Allocation) -> None:
        """Register a new allocation."""
        self.by_five_tuple[allocation.five_tuple] = allocation
        self.by_relay[allocation.relay.address] = allocation
        self.by_public[allocation.relay.public] = allocation
        self.per_user[allocation.username] = self.per_user.get(allocation.username, 0) + 1

    def remove(self, allocation: Allocation) -> None:
        """Delete ``allocation`` and release its relay socket (once)."""
        if self.by_five_tuple.pop(allocation.five_tuple, None) is None:
            return
        self.by_relay.pop(allocation.relay.address, None)
        self.by_public.pop(allocation.relay.public, None)
        left = self.per_user.get(allocation.username, 1) - 1
        if left:
            self.per_user[allocation.username] = left
        else:
            self.per_user.pop(allocation.username, None)
        self.ports.close(allocation.relay)

    def relay_addresses(self) -> dict[Address, Allocation]:
        """Live advertised relay addresses: peers use these to reach this server's relays,
        and the peer policy always lets them through."""
        return self.by_public

    def expire(self, now: float) -> list[Allocation]:
        """Remove expired allocations and reservations; prune the rest. Returns the removed."""
        gone = [a for a in self.by_five_tuple.values() if a.expires <= now]
        for allocation in gone:
            self.remove(allocation)
        for allocation in self.by_five_tuple.values():
            allocation.expire(now)
        for token in [t for t, r in self.reservations.items() if r.expires <= now]:
            self.ports.close(self.reservations.pop(token).relay)
        return gone
