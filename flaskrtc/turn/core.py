"""The TURN server's request handling (RFC 8656 on RFC 8489), sans-I/O.

:meth:`TurnCore.handle` takes one STUN message or ChannelData from a client, its
five-tuple and the time, and returns what to send: replies to the client and datagrams for
peers. Relay sockets are opened through the injected :class:`RelayPorts`, so the core is
tested with a fake and no sockets. The relay's hot path (ChannelData both ways) does not
come through here: the shell reads the allocation's dicts directly.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from flaskrtc.turn.allocation import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    RESERVATION_LIFETIME,
    Address,
    Allocation,
    Allocations,
    FiveTuple,
    Relay,
    RelayPorts,
    Reservation,
)
from flaskrtc.turn.auth import Credentials, NonceCheck, Nonces
from flaskrtc.turn.policy import PeerPolicy
from flaskrtc.turn.stun import (
    ERROR_REASONS,
    Attr,
    Class,
    Message,
    Method,
    StunError,
    check_integrity,
    decode_channel_data,
    is_channel_data,
    parse,
    serialize,
)

log = logging.getLogger("flaskrtc.turn")

UDP = 17
FAMILY_IPV4, FAMILY_IPV6 = 0x01, 0x02

# Short reason phrases (stun.ERROR_REASONS): error responses go to unauthenticated sources
# too, and must not be bigger than the request that caused them (no amplification).
REASONS = ERROR_REASONS


@dataclass(frozen=True)
class ToClient:
    """Bytes for the client on its own transport."""

    data: bytes


@dataclass(frozen=True)
class ToPeer:
    """A datagram to send from ``allocation``'s relay socket to ``peer``."""

    allocation: Allocation
    peer: Address
    data: bytes


Effect = ToClient | ToPeer


class TurnError(Exception):
    """A request that fails; carries the error code and whether to sign the reply."""

    def __init__(self, code: int, *, key: bytes | None = None, extra: dict[int, Any] | None = None):
        super().__init__(f"{code} {REASONS.get(code, '')}")
        self.code = code
        self.key = key
        self.extra = extra or {}


@dataclass(frozen=True)
class Limits:
    """Quotas and lifetimes (RFC 8656 §7.2 defaults)."""

    default_lifetime: int = 600
    max_lifetime: int = 3600
    user_quota: int = 10  # 0 = unlimited
    total_quota: int = 1000  # 0 = unlimited
    max_permissions: int = 64
    max_channels: int = 64


class TurnCore:
    """Allocations and the handling of every TURN request and indication."""

    def __init__(
        self,
        *,
        ports: RelayPorts,
        credentials: Credentials,
        nonces: Nonces,
        policy: PeerPolicy,
        limits: Limits = Limits(),
    ) -> None:
        self.allocations = Allocations(ports)
        self.credentials = credentials
        self.nonces = nonces
        self.policy = policy
        self.limits = limits
        self._handlers: dict[int, Any] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }

    # -- entry points ------------------------------------------------------------------

    def handle(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Effect]:
        """Handle one datagram (UDP) or one framed message (TCP/TLS) from a client."""
        if is_channel_data(data):
            return self._channel_data(data, five_tuple)
        try:
            msg = parse(data)
        except StunError as err:
            # A request with a sound header but bad attributes gets 400; anything else is
            # silently discarded (RFC 8489 §6.3).
            reply = err.error_response()
            return [ToClient(serialize(reply))] if reply is not None else []
        if msg.cls == Class.REQUEST:
            return [ToClient(self._request(msg, five_tuple, now))]
        if msg.cls == Class.INDICATION and msg.method == Method.SEND:
            return self._send_indication(msg, five_tuple)
        return []  # responses and other indications are not for a server

    def data_indication(self, allocation: Allocation, peer: Address, data: bytes) -> bytes | None:
        """A Data indication for a peer datagram that has no channel (RFC 8656 §11.3),
        or None when no permission lets it through."""
        if peer[0] not in allocation.permissions:
            return None
        msg = Message(
            Method.DATA,
            Class.INDICATION,
            secrets.token_bytes(12),
            {Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: data},
        )
        return serialize(msg)

    def expire(self, now: float) -> list[Allocation]:
        """Expire allocations, permissions, channels and reservations (call every second)."""
        return self.allocations.expire(now)

    # -- requests ----------------------------------------------------------------------

    def _request(self, msg: Message, ft: FiveTuple, now: float) -> bytes:
        fingerprint = Attr.FINGERPRINT in msg.attributes
        try:
            if msg.method == Method.BINDING:
                # RFC 8489 §6.3.1: no authentication, the reflexive address back.
                if msg.unknown_required:
                    raise TurnError(420, extra={Attr.UNKNOWN_ATTRIBUTES: msg.unknown_required})
                reply = msg.response(Class.SUCCESS, {Attr.XOR_MAPPED_ADDRESS: ft.client})
                return serialize(reply, fingerprint=fingerprint)
            key, username = self._authenticate(msg, ft, now)
            if msg.unknown_required:
                raise TurnError(420, key=key, extra={Attr.UNKNOWN_ATTRIBUTES: msg.unknown_required})
            handler = self._handlers.get(msg.method)
            if handler is None:
                raise TurnError(400, key=key)
            attributes = handler(msg, ft, now, key, username)
            if isinstance(attributes, bytes):
                return attributes  # a retransmitted Allocate: the same response again
            reply = msg.response(Class.SUCCESS, attributes)
            data = serialize(reply, integrity_key=key, fingerprint=fingerprint)
            if msg.method == Method.ALLOCATE:
                allocation = self.allocations.get(ft)
                if allocation is not None:
                    allocation.response = data
            return data
        except TurnError as err:
            log.debug(
                "%s request %#05x from %s: error %d",
                ft.transport,
                msg.method,
                ft.client,
                err.code,
            )
            attrs: dict[int, Any] = {Attr.ERROR_CODE: (err.code, REASONS.get(err.code, ""))}
            attrs.update(err.extra)
            reply = msg.response(Class.ERROR, attrs)
            return serialize(reply, integrity_key=err.key, fingerprint=fingerprint)

    def _challenge(self, code: int, ft: FiveTuple, now: float) -> TurnError:
        # 401/438 carry REALM and a fresh NONCE and nothing else (RFC 8489 §9.2.4).
        nonce = self.nonces.issue(ft.client[0], now)
        return TurnError(code, extra={Attr.REALM: self.credentials.realm, Attr.NONCE: nonce})

    def _authenticate(self, msg: Message, ft: FiveTuple, now: float) -> tuple[bytes, str]:
        """Long-term credential check, RFC 8489 §9.2.4; returns (key, username)."""
        if Attr.MESSAGE_INTEGRITY not in msg.attributes:
            raise self._challenge(401, ft, now)
        username = msg.attributes.get(Attr.USERNAME)
        realm = msg.attributes.get(Attr.REALM)
        nonce = msg.attributes.get(Attr.NONCE)
        if (
            not isinstance(username, str)
            or not isinstance(realm, str)
            or not isinstance(nonce, str)
        ):
            raise TurnError(400)
        if self.nonces.check(nonce, ft.client[0], now) is not NonceCheck.VALID:
            raise self._challenge(438, ft, now)
        key = self.credentials.key_for(username, now) if realm == self.credentials.realm else None
        if key is None or not check_integrity(msg, key):
            log.debug(
                "%s %s: %s for user %r realm %r",
                ft.transport,
                ft.client,
                "unknown or expired credential" if key is None else "wrong password",
                username,
                realm,
            )
            # Unknown user, expired REST credential, wrong realm or password: 401 (pion's 400
            # is wrong; RFC 8489 §9.2.4 says 401).
            raise self._challenge(401, ft, now)
        return key, username

    def _own(self, ft: FiveTuple, key: bytes, username: str) -> Allocation:
        allocation = self.allocations.get(ft)
        if allocation is None:
            raise TurnError(437, key=key)
        if allocation.username != username:
            raise TurnError(441, key=key)  # RFC 8656 §5
        return allocation

    def _lifetime(self, msg: Message) -> int:
        # RFC 8656 §7.2 / §8.2: min(requested, max); below the default, the default.
        requested = msg.attributes.get(Attr.LIFETIME)
        if not isinstance(requested, int):
            return self.limits.default_lifetime
        return max(self.limits.default_lifetime, min(requested, self.limits.max_lifetime))

    def _allocate(
        self, msg: Message, ft: FiveTuple, now: float, key: bytes, username: str
    ) -> dict[int, Any] | bytes:
        attrs = msg.attributes
        existing = self.allocations.get(ft)
        if existing is not None:
            # RFC 8656 §7.2 step 2: a retransmission gets the same answer; anything else 437.
            if existing.transaction_id == msg.transaction_id and existing.response:
                return existing.response
            raise TurnError(437, key=key)
        transport = attrs.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            raise TurnError(400, key=key)
        if transport != UDP:
            raise TurnError(442, key=key)
        if Attr.DONT_FRAGMENT in attrs:
            # RFC 8656 §7.2: a server that cannot set the DF bit on relayed datagrams treats
            # DONT-FRAGMENT as an unknown comprehension-required attribute (clients retry
            # without it).
            raise TurnError(420, key=key, extra={Attr.UNKNOWN_ATTRIBUTES: (Attr.DONT_FRAGMENT,)})
        token = attrs.get(Attr.RESERVATION_TOKEN)
        even = attrs.get(Attr.EVEN_PORT)
        family_attr = attrs.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if token is not None and (even is not None or family_attr is not None):
            raise TurnError(400, key=key)  # §7.2 steps 4 and 5
        family = 4
        if family_attr is not None:
            if family_attr not in (FAMILY_IPV4, FAMILY_IPV6):
                raise TurnError(440, key=key)
            family = 4 if family_attr == FAMILY_IPV4 else 6
        ports = self.allocations.ports
        if not ports.supports(family):
            raise TurnError(440, key=key)
        limits = self.limits
        if (
            limits.user_quota and self.allocations.per_user.get(username, 0) >= limits.user_quota
        ) or (limits.total_quota and len(self.allocations) >= limits.total_quota):
            raise TurnError(486, key=key)

        extra: dict[int, Any] = {}
        relay: Relay | None
        if token is not None:
            reservation = self.allocations.reservations.pop(token, None)
            if reservation is None:
                raise TurnError(508, key=key)
            relay = reservation.relay
        elif even is not None:
            relay = ports.open(family, even=True, local=ft.server[0])
            if relay is None:
                raise TurnError(508, key=key)
            if even:
                # R bit: keep the next port too, for the RTCP allocation (§7.2, §14.6).
                nxt = ports.open(family, port=relay.address[1] + 1, local=ft.server[0])
                if nxt is None:
                    ports.close(relay)
                    raise TurnError(508, key=key)
                reservation_token = secrets.token_bytes(8)
                self.allocations.reservations[reservation_token] = Reservation(
                    nxt, now + RESERVATION_LIFETIME
                )
                extra[Attr.RESERVATION_TOKEN] = reservation_token
        else:
            relay = ports.open(family, local=ft.server[0])
            if relay is None:
                raise TurnError(508, key=key)
        assert relay is not None
        additional = attrs.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        if additional is not None:
            # Dual allocation (RFC 8656 §7.2) is not offered: say so for the second family.
            extra[Attr.ADDRESS_ERROR_CODE] = (additional, 440, REASONS[440])

        lifetime = self._lifetime(msg)
        allocation = Allocation(
            five_tuple=ft,
            username=username,
            key=key,
            relay=relay,
            expires=now + lifetime,
            transaction_id=msg.transaction_id,
        )
        self.allocations.add(allocation)
        log.debug("allocation %s for %s via %s", relay.public, username, ft.client)
        return {
            Attr.XOR_RELAYED_ADDRESS: relay.public,
            **extra,
            Attr.LIFETIME: lifetime,
            Attr.XOR_MAPPED_ADDRESS: ft.client,
        }

    def _refresh(
        self, msg: Message, ft: FiveTuple, now: float, key: bytes, username: str
    ) -> dict[int, Any]:
        allocation = self._own(ft, key, username)
        family_attr = msg.attributes.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if (
            family_attr is not None
            and (4 if family_attr == FAMILY_IPV4 else 6) != allocation.family
        ):
            raise TurnError(443, key=key)
        requested = msg.attributes.get(Attr.LIFETIME)
        if requested == 0:
            # §8.2: a zero lifetime deletes the allocation at once.
            self.allocations.remove(allocation)
            return {Attr.LIFETIME: 0}
        lifetime = self._lifetime(msg)
        allocation.expires = now + lifetime
        return {Attr.LIFETIME: lifetime}

    def _peer(self, allocation: Allocation, peer: Any, key: bytes) -> Address:
        if not isinstance(peer, tuple):
            raise TurnError(400, key=key)
        if (6 if ":" in peer[0] else 4) != allocation.family:
            raise TurnError(443, key=key)
        if not self.policy.permits(peer[0], self.allocations.relay_addresses(), peer[1]):
            raise TurnError(403, key=key)
        return peer

    def _create_permission(
        self, msg: Message, ft: FiveTuple, now: float, key: bytes, username: str
    ) -> dict[int, Any]:
        allocation = self._own(ft, key, username)
        peers = msg.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            raise TurnError(400, key=key)
        # RFC 8656 §10.2: all or nothing.
        checked = [self._peer(allocation, peer, key) for peer in peers]
        new = {ip for ip, _ in checked if ip not in allocation.permissions}
        if len(allocation.permissions) + len(new) > self.limits.max_permissions:
            raise TurnError(508, key=key)
        for ip, _ in checked:
            allocation.permit(ip, now)
        return {}

    def _channel_bind(
        self, msg: Message, ft: FiveTuple, now: float, key: bytes, username: str
    ) -> dict[int, Any]:
        allocation = self._own(ft, key, username)
        channel = msg.attributes.get(Attr.CHANNEL_NUMBER)
        if not isinstance(channel, int) or not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            log.debug("%s %s: channel number %r out of range", ft.transport, ft.client, channel)
            raise TurnError(400, key=key)
        peer = self._peer(allocation, msg.attributes.get(Attr.XOR_PEER_ADDRESS), key)
        # §12.2: a channel is bound to one peer and a peer to one channel, for its lifetime.
        bound_peer = allocation.channel_to_peer.get(channel)
        bound_channel = allocation.peer_to_channel.get(peer)
        if (bound_peer is not None and bound_peer != peer) or (
            bound_channel is not None and bound_channel != channel
        ):
            raise TurnError(400, key=key)
        if bound_peer is None and len(allocation.channel_to_peer) >= self.limits.max_channels:
            raise TurnError(508, key=key)
        if peer[0] not in allocation.permissions and (
            len(allocation.permissions) >= self.limits.max_permissions
        ):
            raise TurnError(508, key=key)
        allocation.bind(channel, peer, now)
        return {}

    # -- indications and channel data --------------------------------------------------

    def _send_indication(self, msg: Message, ft: FiveTuple) -> list[Effect]:
        # RFC 8656 §11.2: silently dropped unless allocated, well formed and permitted.
        allocation = self.allocations.get(ft)
        peer = msg.attributes.get(Attr.XOR_PEER_ADDRESS)
        data = msg.attributes.get(Attr.DATA)
        if allocation is None or not isinstance(peer, tuple) or not isinstance(data, bytes):
            return []
        if peer[0] not in allocation.permissions:
            return []
        return [ToPeer(allocation, peer, data)]

    def _channel_data(self, data: bytes, ft: FiveTuple) -> list[Effect]:
        # The slow path for ChannelData (the shell normally forwards it itself).
        allocation = self.allocations.get(ft)
        if allocation is None:
            return []
        try:
            channel, payload = decode_channel_data(data)
        except StunError:
            return []
        peer = allocation.channel_to_peer.get(channel)
        if peer is None or peer[0] not in allocation.permissions:
            return []
        return [ToPeer(allocation, peer, payload)]
