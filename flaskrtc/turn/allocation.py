"""TURN allocation state (RFC 8656 §2.2, §7 to §12), with time passed in.

An :class:`Allocation` is what the relay's hot path reads: ``channel_to_peer`` maps a
ChannelData channel to its peer address, ``peer_to_channel`` the reverse, ``permissions``
the peer IPs allowed through on any port and ``relay_permissions`` the IPs allowed through
only to and from this server's own live relay sockets (a permission won by the own-relay
exception of :mod:`flaskrtc.turn.policy`). They are plain dicts kept current by
:class:`Allocations`, so a packet is forwarded with one or two dict look-ups and no parsing.

Quotas count relay ports: an allocation's (two for a dual allocation) and the ports
EVEN-PORT reserves for them alike, per user (the user part of a REST username), per client
IP and in total.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
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

    def supports(self, family: int, local: str | None = None) -> bool:
        """Whether relays of address family 4 or 6 can be opened for a client whose request
        arrived on server address ``local``."""
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
    username: str  # as the client sent it: a later request must use the same (RFC 8656 §5)
    key: bytes  # long-term key, to sign responses (RFC 8489 §9.2.4)
    relay: Relay
    expires: float
    transaction_id: bytes  # of the Allocate, to answer its retransmissions (§7.2)
    response: bytes = b""  # the success response, resent on retransmission
    permissions: dict[str, float] = field(default_factory=dict)  # peer ip -> expiry
    # Peer IPs the policy denies, permitted only because a live relay of this server is
    # there: datagrams go to and come from those relay addresses only, not any port.
    relay_permissions: dict[str, float] = field(default_factory=dict)
    channel_to_peer: dict[int, Address] = field(default_factory=dict)
    peer_to_channel: dict[Address, int] = field(default_factory=dict)
    channel_expiry: dict[int, float] = field(default_factory=dict)
    shell: Any = None  # the shell's per-allocation state (socket reader greenlet)
    user: str = ""  # the quota key: the user part of a REST username, a static user's name
    reservation: bytes | None = None  # token of the port EVEN-PORT's R bit kept (§7.2)
    # The IPv6 relay of a dual allocation (ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §7.2); then
    # ``relay`` is the IPv4 one. Datagrams to a peer leave from the relay of its family.
    second: Relay | None = None

    @property
    def family(self) -> int:
        """4 or 6: the address family of ``relay`` (the first relay)."""
        return 6 if ":" in self.relay.address[0] else 4

    @property
    def families(self) -> tuple[int, ...]:
        """The address families this allocation relays: one, or (4, 6) when dual."""
        return (self.family,) if self.second is None else (self.family, 6)

    @property
    def relays(self) -> tuple[Relay, ...]:
        """Every relay of this allocation, ``relay`` first."""
        return (self.relay,) if self.second is None else (self.relay, self.second)

    def relay_for(self, ip: str) -> Relay:
        """The relay datagrams to a peer at ``ip`` leave from: the one of its family."""
        second = self.second
        return self.relay if second is None or ":" not in ip else second

    def permit(self, ip: str, now: float, *, relays_only: bool = False) -> None:
        """Install or refresh the permission for ``ip`` (RFC 8656 §9, §10.2); with
        ``relays_only`` it reaches this server's live relays at ``ip`` and nothing else.
        An IP holds one kind at a time: the latest decision of the policy wins."""
        if relays_only:
            self.permissions.pop(ip, None)
            self.relay_permissions[ip] = now + PERMISSION_LIFETIME
        else:
            self.relay_permissions.pop(ip, None)
            self.permissions[ip] = now + PERMISSION_LIFETIME

    def permitted_ips(self) -> int:
        """How many peer IPs hold a permission of either kind (for max_permissions)."""
        return len(self.permissions) + len(self.relay_permissions)

    def has_permission(self, ip: str) -> bool:
        """Whether ``ip`` holds a permission of either kind."""
        return ip in self.permissions or ip in self.relay_permissions

    def bind(self, channel: int, peer: Address, now: float, *, relays_only: bool = False) -> None:
        """Bind or refresh ``channel`` to ``peer``; also refreshes its permission (§12.2)."""
        self.channel_to_peer[channel] = peer
        self.peer_to_channel[peer] = channel
        self.channel_expiry[channel] = now + CHANNEL_LIFETIME
        self.permit(peer[0], now, relays_only=relays_only)

    def expire(self, now: float) -> None:
        """Drop expired permissions and channel bindings."""
        for table in (self.permissions, self.relay_permissions):
            for ip in [ip for ip, t in table.items() if t <= now]:
                del table[ip]
        for channel in [c for c, t in self.channel_expiry.items() if t <= now]:
            peer = self.channel_to_peer.pop(channel)
            del self.peer_to_channel[peer]
            del self.channel_expiry[channel]


@dataclass(eq=False)
class Reservation:
    """A relay port kept for a later Allocate with RESERVATION-TOKEN (RFC 8656 §14.9),
    counted in the quotas of the allocation that made it and freed with it."""

    relay: Relay
    expires: float
    owner: Allocation


class LiveRelays:
    """``address in live``: whether ``address`` is one of this server's live relay sockets,
    by the address it is advertised with or the one it is bound to, or (with workers) one of
    a sibling worker's (``others``)."""

    __slots__ = ("_bound", "_others", "_public")

    def __init__(
        self,
        public: dict[Address, Allocation],
        bound: dict[Address, Allocation],
        others: Container[Address] | None = None,
    ):
        self._public, self._bound, self._others = public, bound, others

    def __contains__(self, address: object) -> bool:
        if address in self._public or address in self._bound:
            return True
        return self._others is not None and address in self._others


class Allocations:
    """Every live allocation, by five-tuple and by relay address, with quota counts."""

    def __init__(self, ports: RelayPorts, others: Container[Address] | None = None) -> None:
        """``others``: the live relays of sibling workers (``address in others``), if any."""
        self.ports = ports
        self.by_five_tuple: dict[FiveTuple, Allocation] = {}
        self.by_relay: dict[Address, Allocation] = {}  # by bound address (hot path)
        self.by_public: dict[Address, Allocation] = {}  # by advertised address (policy)
        # Allocations plus reservations, per quota key; a key leaves with its last one, so
        # the tables hold live keys only.
        self.per_user: dict[str, int] = {}
        self.per_ip: dict[str, int] = {}
        self.reservations: dict[bytes, Reservation] = {}
        self.live = LiveRelays(self.by_public, self.by_relay, others)
        self._total = 0  # relay ports held by allocations and reservations

    def __len__(self) -> int:
        return len(self.by_five_tuple)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self.by_five_tuple.values()))

    @property
    def total(self) -> int:
        """Relay ports held by allocations (two for a dual one) and reservations (for
        total_quota)."""
        return self._total

    def get(self, five_tuple: FiveTuple) -> Allocation | None:
        """The allocation of ``five_tuple``, if any."""
        return self.by_five_tuple.get(five_tuple)

    def _count(self, owner: Allocation, delta: int) -> None:
        self._total += delta
        for table, key in ((self.per_user, owner.user), (self.per_ip, owner.five_tuple.client[0])):
            left = table.get(key, 0) + delta
            if left > 0:
                table[key] = left
            else:
                table.pop(key, None)

    def add(self, allocation: Allocation) -> None:
        """Register a new allocation (each of its relays counts in the quotas)."""
        self.by_five_tuple[allocation.five_tuple] = allocation
        for relay in allocation.relays:
            self.by_relay[relay.address] = allocation
            self.by_public[relay.public] = allocation
        self._count(allocation, len(allocation.relays))

    def remove(self, allocation: Allocation) -> None:
        """Delete ``allocation``, its reservation, and release its relay sockets (once)."""
        if self.by_five_tuple.pop(allocation.five_tuple, None) is None:
            return
        for relay in allocation.relays:
            self.by_relay.pop(relay.address, None)
            self.by_public.pop(relay.public, None)
            self.ports.close(relay)
        self._count(allocation, -len(allocation.relays))
        if allocation.reservation is not None:
            self.drop_reservation(allocation.reservation)

    def remove_family(self, allocation: Allocation, family: int) -> None:
        """Delete one relay of a dual allocation (RFC 8656 §8: a Refresh to 0 with
        REQUESTED-ADDRESS-FAMILY); the other goes on. A single relay: the whole allocation."""
        if allocation.second is None:
            self.remove(allocation)
            return
        gone = allocation.second if family == 6 else allocation.relay
        if family != 6:
            allocation.relay = allocation.second
        allocation.second = None
        self.by_relay.pop(gone.address, None)
        self.by_public.pop(gone.public, None)
        self.ports.close(gone)
        self._count(allocation, -1)

    def reserve(self, token: bytes, relay: Relay, expires: float, owner: Allocation) -> None:
        """Keep ``relay`` for a later Allocate with ``token``, on ``owner``'s quotas."""
        self.reservations[token] = Reservation(relay, expires, owner)
        owner.reservation = token
        self._count(owner, 1)

    def take_reservation(self, token: bytes) -> Reservation | None:
        """Remove and return the reservation of ``token`` (its port stays open), or None."""
        reservation = self.reservations.pop(token, None)
        if reservation is not None:
            self._count(reservation.owner, -1)
            if reservation.owner.reservation == token:
                reservation.owner.reservation = None
        return reservation

    def drop_reservation(self, token: bytes) -> None:
        """Remove the reservation of ``token`` and close its port."""
        reservation = self.take_reservation(token)
        if reservation is not None:
            self.ports.close(reservation.relay)

    def relay_addresses(self) -> dict[Address, Allocation]:
        """Live advertised relay addresses: peers use these to reach this server's relays,
        and the peer policy always lets them through."""
        return self.by_public

    def clear(self) -> None:
        """Remove every allocation and reservation (shutdown)."""
        for allocation in self:
            self.remove(allocation)
        for token in list(self.reservations):
            self.drop_reservation(token)

    def expire(self, now: float) -> list[Allocation]:
        """Remove expired allocations and reservations; prune the rest. Returns the removed."""
        gone = [a for a in self.by_five_tuple.values() if a.expires <= now]
        for allocation in gone:
            self.remove(allocation)
        for allocation in self.by_five_tuple.values():
            allocation.expire(now)
        for token in [t for t, r in self.reservations.items() if r.expires <= now]:
            self.drop_reservation(token)
        return gone
