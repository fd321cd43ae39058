"""The TURN server's request handling (RFC 8656 on RFC 8489), sans-I/O.

:meth:`TurnCore.handle` takes one STUN message or ChannelData from a client, its
five-tuple and the time, and returns what to send: replies to the client and datagrams for
peers. Relay sockets are opened through the injected :class:`RelayPorts`, so the core is
tested with a fake and no sockets. The relay's hot path has one implementation each way,
here, which the shell calls per packet: :meth:`TurnCore.channel_data` (client to peer) and
:meth:`TurnCore.from_peer` (peer to client); both check the permission the same way.

Replies that are not signed (Binding, 401/438 challenges, 400 to malformed requests) go to
whoever the source address claims to be, so over UDP they are rate limited per source IP
(``Limits.unauth_rate``): the server cannot be used to reflect traffic at a spoofed address.
"""

from __future__ import annotations

import logging
import secrets
import struct
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from flaskrtc.turn.addressing import canonical_ip, is_wildcard
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
from flaskrtc.turn.policy import Access, PeerPolicy
from flaskrtc.turn.ratelimit import TokenBuckets
from flaskrtc.turn.stats import TurnStats
from flaskrtc.turn.stun import (
    ERROR_REASONS,
    Attr,
    Class,
    Message,
    Method,
    StunError,
    check_integrity,
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

_CHANNEL_HEADER = struct.Struct("!HH")  # RFC 8656 §12.4: channel number, length

# Authentication failures are logged one line each (for fail2ban), but a source guessing
# passwords as fast as it can must not flood the log: per client IP a burst of 10, then one
# line every 10 s; in all a burst of 100, then 20 lines a second.
AUTH_LOG_BURST, AUTH_LOG_RATE = 10, 0.1
AUTH_LOG_TOTAL_BURST, AUTH_LOG_TOTAL_RATE = 100, 20.0
MAX_LOGGED_USER = 64  # characters of the username a failure line shows


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

    def __init__(
        self,
        code: int,
        *,
        key: bytes | None = None,
        extra: dict[int, Any] | None = None,
        challenge: bool = False,
    ):
        super().__init__(f"{code} {REASONS.get(code, '')}")
        self.code = code
        self.key = key
        self.extra = extra or {}
        self.challenge = challenge  # the 401 to a request without credentials: no refusal


@dataclass(frozen=True)
class Limits:
    """Quotas, lifetimes (RFC 8656 §7.2 defaults) and the unauthenticated reply limit."""

    default_lifetime: int = 600
    max_lifetime: int = 3600
    # Allocations plus EVEN-PORT reservations; 0 = unlimited.
    user_quota: int = 10  # per user (the user part of a REST username)
    ip_quota: int = 20  # per client IP address
    total_quota: int = 1000
    max_permissions: int = 64
    max_channels: int = 64
    # Unsigned replies over UDP per source IP: a burst, then this many a second (0 = off).
    unauth_rate: float = 10.0
    unauth_burst: int = 20


def log_text(text: str, limit: int = MAX_LOGGED_USER) -> str:
    """``text`` for a double-quoted log field: at most ``limit`` characters, with
    backslashes, quotes, control and non-ASCII characters escaped, so that a client-chosen
    username can neither end the line nor fake another field."""
    escaped = text[:limit].encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return escaped + ("..." if len(text) > limit else "")


def _address_text(address: Any) -> str:
    """``ip:port`` (``[ip]:port`` for IPv6) of an address tuple, for a log field."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def allocation_fields(allocation: Allocation) -> dict[str, Any]:
    """The structured log fields of ``allocation`` (for the shell's expiry line)."""
    return _fields(
        allocation.five_tuple, allocation.username, relay=_address_text(allocation.relay.public)
    )


def _fields(ft: FiveTuple, username: str, **more: Any) -> dict[str, Any]:
    """The structured log fields (JSON format) of a request on ``ft`` by ``username``."""
    return {
        "client": ft.client[0],
        "port": ft.client[1],
        "transport": ft.transport,
        "user": username[:MAX_LOGGED_USER],
        **more,
    }


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
        host_addresses: Iterable[str] = (),
        sibling_relays: Container[Address] | None = None,
    ) -> None:
        """``host_addresses``: the host's own addresses known at start-up (the TURN listen
        address, ``[turn] public_ip``); every address a relay is bound on or advertised
        with is added as it is seen. Peers there are denied, except live relays: this
        core's own, and ``sibling_relays`` (the other workers' of the same server)."""
        self.allocations = Allocations(ports, sibling_relays)
        self.credentials = credentials
        self.nonces = nonces
        self.policy = policy
        self.limits = limits
        self.host_addresses: set[str] = set()
        for ip in host_addresses:
            self._learn_host_address(ip)
        self._live = self.allocations.live
        self.stats = TurnStats()
        self._unauth = TokenBuckets(limits.unauth_rate, max(1, limits.unauth_burst))
        self._auth_log = TokenBuckets(AUTH_LOG_RATE, AUTH_LOG_BURST)
        self._auth_log_total = TokenBuckets(AUTH_LOG_TOTAL_RATE, AUTH_LOG_TOTAL_BURST, 1)
        self._handlers: dict[int, Any] = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }

    def configure(
        self,
        *,
        limits: Limits | None = None,
        policy: PeerPolicy | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """Take new settings objects (a reload): later requests obey them. Nothing live is
        touched: allocations over a lowered quota stay, and so do permissions a new peer
        rule would refuse, until they expire or are refreshed (a refresh is checked anew)."""
        if limits is not None:
            old = self.limits
            if (limits.unauth_rate, limits.unauth_burst) != (old.unauth_rate, old.unauth_burst):
                # Fresh buckets: a client's saved-up burst under the old rate means nothing.
                self._unauth = TokenBuckets(limits.unauth_rate, max(1, limits.unauth_burst))
            self.limits = limits
        if policy is not None:
            self.policy = policy
        if credentials is not None:
            self.credentials = credentials

    # -- entry points ------------------------------------------------------------------

    def handle(self, data: bytes, five_tuple: FiveTuple, now: float) -> list[Effect]:
        """Handle one datagram (UDP) or one framed message (TCP/TLS) from a client."""
        if is_channel_data(data):
            allocation = self.allocations.get(five_tuple)
            target = self.channel_data(allocation, data) if allocation is not None else None
            if allocation is None or target is None:
                return []
            return [ToPeer(allocation, target[0], target[1])]
        try:
            msg = parse(data)
        except StunError as err:
            # A request with a sound header but bad attributes gets 400; anything else is
            # silently discarded (RFC 8489 §6.3).
            reply = err.error_response()
            if reply is None or not self._may_answer(five_tuple, now):
                return []
            return [ToClient(serialize(reply))]
        if msg.cls == Class.REQUEST:
            answer = self._request(msg, five_tuple, now)
            return [ToClient(answer)] if answer is not None else []
        if msg.cls == Class.INDICATION and msg.method == Method.SEND:
            return self._send_indication(msg, five_tuple)
        return []  # responses and other indications are not for a server

    def permitted(self, allocation: Allocation, peer: Address) -> bool:
        """Whether ``allocation`` may exchange datagrams with ``peer`` (RFC 8656 §9): an IP
        permission, or a relays-only one and ``peer`` is a live relay of this server."""
        ip = peer[0]
        return ip in allocation.permissions or (
            ip in allocation.relay_permissions and peer in self._live
        )

    def channel_data(self, allocation: Allocation, data: bytes) -> tuple[Address, bytes] | None:
        """``(peer, payload)`` for a ChannelData message from ``allocation``'s client (RFC
        8656 §12.4; padding after the length is ignored, §12.5), or None to drop it: no
        such channel, a length beyond the data, or no permission. The relay's hot path."""
        if len(data) < 4:
            return None
        channel, length = _CHANNEL_HEADER.unpack_from(data)
        peer = allocation.channel_to_peer.get(channel)
        if peer is None or length > len(data) - 4:
            return None
        ip = peer[0]
        if ip not in allocation.permissions and (
            ip not in allocation.relay_permissions or peer not in self._live
        ):
            return None
        return peer, data[4 : 4 + length]

    def from_peer(
        self, allocation: Allocation, peer: Address, data: bytes, pad: bool
    ) -> bytes | None:
        """What to send ``allocation``'s client for a datagram from ``peer``: ChannelData
        when a channel is bound to ``peer`` (padded to 4 bytes when ``pad``: TCP/TLS,
        §12.5), else a Data indication (§11.3); None when no permission lets it through.
        The relay's hot path, peer to client."""
        ip = peer[0]
        if ip not in allocation.permissions and (
            ip not in allocation.relay_permissions or peer not in self._live
        ):
            return None
        channel = allocation.peer_to_channel.get(peer)
        if channel is None:
            return self._data_indication(peer, data)
        size = len(data)
        if pad and size & 3:
            return _CHANNEL_HEADER.pack(channel, size) + data + b"\0" * (4 - (size & 3))
        return _CHANNEL_HEADER.pack(channel, size) + data

    def data_indication(self, allocation: Allocation, peer: Address, data: bytes) -> bytes | None:
        """A Data indication for a peer datagram that has no channel (RFC 8656 §11.3),
        or None when no permission lets it through."""
        if not self.permitted(allocation, peer):
            return None
        return self._data_indication(peer, data)

    @staticmethod
    def _data_indication(peer: Address, data: bytes) -> bytes:
        msg = Message(
            Method.DATA,
            Class.INDICATION,
            secrets.token_bytes(12),
            {Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: data},
        )
        return serialize(msg)

    def expire(self, now: float) -> list[Allocation]:
        """Expire allocations, permissions, channels and reservations (call every second)."""
        gone = self.allocations.expire(now)
        self.stats.allocations_expired += len(gone)
        return gone

    # -- requests ----------------------------------------------------------------------

    def _may_answer(self, ft: FiveTuple, now: float) -> bool:
        # An unsigned reply over UDP may go to a spoofed source: rate limited per IP. A
        # stream's peer has completed a TCP handshake, so it is who it says it is.
        return ft.transport != "udp" or self._unauth.allow(ft.client[0], now)

    def _request(self, msg: Message, ft: FiveTuple, now: float) -> bytes | None:
        fingerprint = Attr.FINGERPRINT in msg.attributes
        try:
            if msg.method == Method.BINDING:
                # RFC 8489 §6.3.1: no authentication, the reflexive address back.
                if msg.unknown_required:
                    raise TurnError(420, extra={Attr.UNKNOWN_ATTRIBUTES: msg.unknown_required})
                if not self._may_answer(ft, now):
                    return None
                reply = msg.response(Class.SUCCESS, {Attr.XOR_MAPPED_ADDRESS: ft.client})
                return serialize(reply, fingerprint=fingerprint)
            key, username = self._authenticate(msg, ft, now)
            if msg.unknown_required:
                raise TurnError(420, key=key, extra={Attr.UNKNOWN_ATTRIBUTES: msg.unknown_required})
            handler = self._handlers.get(msg.method)
            if handler is None:
                raise TurnError(400, key=key)
            result = handler(msg, ft, now, key, username)
            if isinstance(result, bytes):
                return result  # a retransmitted Allocate: the same response again
            # A handler returns attributes, or attributes and repeated ones (a dual
            # allocation's second XOR-RELAYED-ADDRESS).
            attributes, repeated = result if isinstance(result, tuple) else (result, [])
            reply = msg.response(Class.SUCCESS, attributes)
            reply.repeated = repeated
            data = serialize(reply, integrity_key=key, fingerprint=fingerprint)
            if msg.method == Method.ALLOCATE:
                allocation = self.allocations.get(ft)
                if allocation is not None:
                    allocation.response = data
            return data
        except TurnError as err:
            if msg.method == Method.ALLOCATE and not err.challenge:
                refused = self.stats.refused
                refused[err.code] = refused.get(err.code, 0) + 1
            if err.key is None and not self._may_answer(ft, now):
                return None
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

    def _challenge(
        self, code: int, ft: FiveTuple, now: float, *, challenge: bool = False
    ) -> TurnError:
        # 401/438 carry REALM and a fresh NONCE and nothing else (RFC 8489 §9.2.4).
        nonce = self.nonces.issue(ft.client[0], now)
        return TurnError(
            code,
            extra={Attr.REALM: self.credentials.realm, Attr.NONCE: nonce},
            challenge=challenge,
        )

    def _authenticate(self, msg: Message, ft: FiveTuple, now: float) -> tuple[bytes, str]:
        """Long-term credential check, RFC 8489 §9.2.4; returns (key, username)."""
        if Attr.MESSAGE_INTEGRITY not in msg.attributes:
            raise self._challenge(401, ft, now, challenge=True)
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
            reason = "wrong-password" if key is not None else None
            self._log_auth_failure(ft, username, realm, reason, now)
            # Unknown user, expired REST credential, wrong realm or password: 401 (pion's 400
            # is wrong; RFC 8489 §9.2.4 says 401).
            raise self._challenge(401, ft, now)
        return key, username

    def _log_auth_failure(
        self, ft: FiveTuple, username: str, realm: str, reason: str | None, now: float
    ) -> None:
        # One WARNING line per failure, in a fixed format for fail2ban (see README), within
        # the per-IP and total log budgets. The 401 challenge to a first request without
        # credentials is not a failure and never gets here.
        ip = ft.client[0]
        if not (self._auth_log.allow(ip, now) and self._auth_log_total.allow("", now)):
            return
        why = reason or self.credentials.failure(username, realm, now)
        log.warning(
            'turn auth failure: client=%s port=%d transport=%s user="%s" reason=%s',
            ip,
            ft.client[1],
            ft.transport,
            log_text(username),
            why,
            # The JSON format escapes the user itself; only its length is bounded here.
            extra=_fields(ft, username, reason=why),
        )

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
    ) -> dict[int, Any] | tuple[dict[int, Any], list[tuple[int, Any]]] | bytes:
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
        additional = attrs.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
        error_attr = Attr.ADDRESS_ERROR_CODE
        if additional is None and Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT in attrs:
            # coturn's clients use the draft's number: answer in kind.
            additional = attrs[Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT]
            error_attr = Attr.ADDRESS_ERROR_CODE_DRAFT
        if token is not None and (
            even is not None or family_attr is not None or additional is not None
        ):
            raise TurnError(400, key=key)  # §7.2 steps 4 and 5: a token names its relay
        if family_attr is not None and additional is not None:
            raise TurnError(400, key=key)  # §7.2: one or the other
        if additional is not None and additional != FAMILY_IPV6:
            raise TurnError(400, key=key)  # §7.2: IPv6 is the only additional family
        family = 4
        if family_attr is not None:
            if family_attr not in (FAMILY_IPV4, FAMILY_IPV6):
                raise TurnError(440, key=key)
            family = 4 if family_attr == FAMILY_IPV4 else 6
        ports = self.allocations.ports
        local = ft.server[0]
        if not ports.supports(family, local):
            raise TurnError(440, key=key)
        # A dual allocation (ADDITIONAL-ADDRESS-FAMILY, §7.2) that cannot have its IPv6 relay
        # is still an IPv4 allocation: the success response says why in ADDRESS-ERROR-CODE.
        dual = additional is not None
        dual_error = 0
        if dual and not ports.supports(6, local):
            dual, dual_error = False, 440
        user = self.credentials.user_of(username)
        reservation: Reservation | None = None
        if token is not None:
            reservation = self.allocations.reservations.get(token)
            if reservation is None:
                raise TurnError(508, key=key)
        # The R bit keeps a second port, a dual allocation holds two: each port counts in
        # the quotas as much as an allocation.
        need = 2 if even is True else 1
        if dual:
            try:
                self._check_quotas(user, ft.client[0], need + 1, reservation, key)
            except TurnError:
                dual, dual_error = False, 486
        self._check_quotas(user, ft.client[0], need, reservation, key)

        extra: dict[int, Any] = {}
        relay: Relay | None
        kept: Relay | None = None
        if reservation is not None and token is not None:
            self.allocations.take_reservation(token)
            relay = reservation.relay
        elif even is not None:
            # In a dual allocation EVEN-PORT applies to the first (IPv4) relay.
            relay = ports.open(family, even=True, local=local)
            if relay is None:
                raise TurnError(508, key=key)
            if even:
                # R bit: keep the next port too, for the RTCP allocation (§7.2, §14.6).
                kept = ports.open(family, port=relay.address[1] + 1, local=local)
                if kept is None:
                    ports.close(relay)
                    raise TurnError(508, key=key)
        else:
            relay = ports.open(family, local=local)
            if relay is None:
                raise TurnError(508, key=key)
        assert relay is not None
        second = ports.open(6, local=local) if dual else None
        if dual and second is None:
            dual_error = 508

        lifetime = self._lifetime(msg)
        allocation = Allocation(
            five_tuple=ft,
            username=username,
            key=key,
            relay=relay,
            expires=now + lifetime,
            transaction_id=msg.transaction_id,
            user=user,
            second=second,
        )
        self.allocations.add(allocation)
        self.stats.allocations_created += 1
        for opened in (relay, kept, second):
            if opened is not None:
                self._learn_host_address(opened.address[0])
                self._learn_host_address(opened.public[0])
        if kept is not None:
            reservation_token = secrets.token_bytes(8)
            self.allocations.reserve(
                reservation_token, kept, now + RESERVATION_LIFETIME, allocation
            )
            extra[Attr.RESERVATION_TOKEN] = reservation_token
        if dual_error:
            extra[error_attr] = (FAMILY_IPV6, dual_error, REASONS[dual_error])
        log.debug(
            "allocation %s for %s via %s",
            relay.public,
            username,
            ft.client,
            extra=_fields(ft, username, relay=_address_text(relay.public)),
        )
        attributes = {
            Attr.XOR_RELAYED_ADDRESS: relay.public,
            **extra,
            Attr.LIFETIME: lifetime,
            Attr.XOR_MAPPED_ADDRESS: ft.client,
        }
        if second is None:
            return attributes
        # §7.3: a dual allocation's response carries one XOR-RELAYED-ADDRESS per family.
        return attributes, [(Attr.XOR_RELAYED_ADDRESS, second.public)]

    def _check_quotas(
        self, user: str, ip: str, need: int, reservation: Reservation | None, key: bytes
    ) -> None:
        """486 unless ``need`` more relay ports fit ``user``'s, ``ip``'s and the total
        quota (RFC 8656 §7.2); a reservation being taken over is already counted."""
        limits, allocations = self.limits, self.allocations
        taken_user = taken_ip = taken = 0
        if reservation is not None:
            owner = reservation.owner
            taken = 1
            taken_user = int(owner.user == user)
            taken_ip = int(owner.five_tuple.client[0] == ip)
        if (
            (
                limits.user_quota
                and allocations.per_user.get(user, 0) - taken_user + need > limits.user_quota
            )
            or (
                limits.ip_quota
                and allocations.per_ip.get(ip, 0) - taken_ip + need > limits.ip_quota
            )
            or (limits.total_quota and allocations.total - taken + need > limits.total_quota)
        ):
            raise TurnError(486, key=key)

    def _learn_host_address(self, ip: str) -> None:
        """Add ``ip`` to the host's own addresses (denied as peers, except live relays)."""
        if is_wildcard(ip):
            return
        try:
            ip = canonical_ip(ip)
        except ValueError:
            return
        if ip in self.host_addresses:
            return
        self.host_addresses.add(ip)
        if self.policy.classify(ip, own=self.host_addresses) is Access.OPEN:
            return  # [turn] allowed_peer_ip lists it
        # A permission given before this address was known to be the host's may no longer
        # reach any port there: from now on only the relays.
        for allocation in self.allocations:
            expires = allocation.permissions.pop(ip, None)
            if expires is not None:
                allocation.relay_permissions[ip] = expires

    def _refresh(
        self, msg: Message, ft: FiveTuple, now: float, key: bytes, username: str
    ) -> dict[int, Any]:
        allocation = self._own(ft, key, username)
        family_attr = msg.attributes.get(Attr.REQUESTED_ADDRESS_FAMILY)
        family: int | None = None
        if family_attr is not None:
            family = {FAMILY_IPV4: 4, FAMILY_IPV6: 6}.get(family_attr, 0)
            if family not in allocation.families:
                raise TurnError(443, key=key)  # §8.2: not a family of this allocation
        requested = msg.attributes.get(Attr.LIFETIME)
        if requested == 0:
            # §8.2: a zero lifetime deletes the allocation at once; with
            # REQUESTED-ADDRESS-FAMILY, only that family's relay of a dual allocation.
            if family is not None:
                self.allocations.remove_family(allocation, family)
            else:
                self.allocations.remove(allocation)
            log.debug(
                "allocation %s deleted by %s%s",
                allocation.relay.public,
                ft.client,
                f" (IPv{family} relay only)" if family is not None else "",
                extra=_fields(ft, username, relay=_address_text(allocation.relay.public)),
            )
            return {Attr.LIFETIME: 0}
        lifetime = self._lifetime(msg)
        allocation.expires = now + lifetime
        return {Attr.LIFETIME: lifetime}

    def _peer(self, allocation: Allocation, peer: Any, key: bytes) -> tuple[Address, bool]:
        """``(peer, relays_only)`` for a requested peer address, or 400/443/403."""
        if not isinstance(peer, tuple):
            raise TurnError(400, key=key)
        if (6 if ":" in peer[0] else 4) not in allocation.families:
            raise TurnError(443, key=key)  # §9.2, §12.2: no relay of the peer's family
        access = self.policy.classify(peer[0], peer[1], self._live, self.host_addresses)
        if access is Access.DENIED:
            raise TurnError(403, key=key)
        return peer, access is Access.RELAYS_ONLY

    def _create_permission(
        self, msg: Message, ft: FiveTuple, now: float, key: bytes, username: str
    ) -> dict[int, Any]:
        allocation = self._own(ft, key, username)
        peers = msg.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            raise TurnError(400, key=key)
        # RFC 8656 §10.2: all or nothing.
        checked = [self._peer(allocation, peer, key) for peer in peers]
        new = {peer[0] for peer, _ in checked if not allocation.has_permission(peer[0])}
        if allocation.permitted_ips() + len(new) > self.limits.max_permissions:
            raise TurnError(508, key=key)
        for peer, relays_only in checked:
            allocation.permit(peer[0], now, relays_only=relays_only)
        return {}

    def _channel_bind(
        self, msg: Message, ft: FiveTuple, now: float, key: bytes, username: str
    ) -> dict[int, Any]:
        allocation = self._own(ft, key, username)
        channel = msg.attributes.get(Attr.CHANNEL_NUMBER)
        if not isinstance(channel, int) or not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            log.debug("%s %s: channel number %r out of range", ft.transport, ft.client, channel)
            raise TurnError(400, key=key)
        peer, relays_only = self._peer(allocation, msg.attributes.get(Attr.XOR_PEER_ADDRESS), key)
        # §12.2: a channel is bound to one peer and a peer to one channel, for its lifetime.
        bound_peer = allocation.channel_to_peer.get(channel)
        bound_channel = allocation.peer_to_channel.get(peer)
        if (bound_peer is not None and bound_peer != peer) or (
            bound_channel is not None and bound_channel != channel
        ):
            raise TurnError(400, key=key)
        if bound_peer is None and len(allocation.channel_to_peer) >= self.limits.max_channels:
            raise TurnError(508, key=key)
        if not allocation.has_permission(peer[0]) and (
            allocation.permitted_ips() >= self.limits.max_permissions
        ):
            raise TurnError(508, key=key)
        allocation.bind(channel, peer, now, relays_only=relays_only)
        return {}

    # -- indications and channel data --------------------------------------------------

    def _send_indication(self, msg: Message, ft: FiveTuple) -> list[Effect]:
        # RFC 8656 §11.2: silently dropped unless allocated, well formed and permitted.
        allocation = self.allocations.get(ft)
        peer = msg.attributes.get(Attr.XOR_PEER_ADDRESS)
        data = msg.attributes.get(Attr.DATA)
        if allocation is None or not isinstance(peer, tuple) or not isinstance(data, bytes):
            return []
        if not self.permitted(allocation, peer):
            return []
        return [ToPeer(allocation, peer, data)]
