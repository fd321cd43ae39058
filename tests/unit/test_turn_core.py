"""TURN request handling (RFC 8656) without sockets: a fake relay-port provider, time passed in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.auth import Credentials, Nonces
from flaskrtc.turn.client import TurnClient
from flaskrtc.turn.core import Limits, ToClient, ToPeer, TurnCore, log_text
from flaskrtc.turn.credentials import make_credential
from flaskrtc.turn.policy import PeerPolicy
from flaskrtc.turn.stun import (
    Attr,
    Class,
    Message,
    Method,
    encode_channel_data,
    long_term_key,
    parse,
    serialize,
)

REALM = "flutter-webrtc"
SECRET = "shared-secret"
NOW = 1_800_000_000.0
CLIENT = FiveTuple("udp", ("198.51.100.7", 40000), ("0.0.0.0", 3478))
PEER = ("203.0.113.9", 5000)


@dataclass(eq=False)
class FakeRelay:
    address: tuple[str, int]
    public: tuple[str, int]
    raw: Any = None


class FakePorts:
    """Hands out ports 50000, 50001, ... and remembers which are open."""

    def __init__(self, free: int = 100, v6: bool = False, public_v4: str = "192.0.2.1") -> None:
        self.next = 50000
        self.free = free
        self.open_ports: dict[int, FakeRelay] = {}
        self.v6 = v6
        self.public_v4 = public_v4  # where IPv4 relays are advertised (and bound, if not wildcard)
        self.locals: list[str | None] = []  # the arrival address of each open() call

    def supports(self, family: int, local: str | None = None) -> bool:
        return family == 4 or self.v6

    def open(
        self,
        family: int,
        *,
        port: int | None = None,
        even: bool = False,
        local: str | None = None,
    ) -> FakeRelay | None:
        self.locals.append(local)
        if len(self.open_ports) >= self.free:
            return None
        if port is None:
            port = self.next
            if even and port % 2:
                port += 1
            self.next = port + 1
        if port in self.open_ports:
            return None
        self.next = max(self.next, port + 1)
        ip, public = ("::", "2001:db8::1") if family == 6 else ("0.0.0.0", self.public_v4)
        if local is not None and local not in ("0.0.0.0", "::"):
            ip = public = local  # bound on and advertised as the address the client reached
        relay = FakeRelay((ip, port), (public, port))
        self.open_ports[port] = relay
        return relay

    def close(self, relay: Any) -> None:
        del self.open_ports[relay.address[1]]


class Client:
    """Builds signed requests the way a TURN client does (long-term credentials)."""

    def __init__(self, core: TurnCore, five_tuple: FiveTuple = CLIENT, user: str = "alice"):
        self.core = core
        self.ft = five_tuple
        cred = make_credential(SECRET, user, now=NOW, ttl=86400)
        self.username, self.password = cred.username, cred.password
        self.key = long_term_key(self.username, REALM, self.password)
        self.nonce = ""
        self.now = NOW

    def raw(self, data: bytes) -> list[Any]:
        return self.core.handle(data, self.ft, self.now)

    def send(self, msg: Message, *, sign: bool = True, key: bytes | None = None) -> Message:
        if sign:
            if not self.nonce:
                challenge = self.send(Message(Method.ALLOCATE, Class.REQUEST), sign=False)
                self.nonce = challenge.attributes[Attr.NONCE]
            msg.attributes[Attr.USERNAME] = self.username
            msg.attributes[Attr.REALM] = REALM
            msg.attributes[Attr.NONCE] = self.nonce
        effects = self.raw(serialize(msg, integrity_key=(key or self.key) if sign else None))
        assert len(effects) == 1 and isinstance(effects[0], ToClient), effects
        reply = parse(effects[0].data)
        assert reply.transaction_id == msg.transaction_id
        return reply

    def request(self, method: int, attrs: Mapping[Any, Any] | None = None, **kw: Any) -> Message:
        return self.send(Message(method, Class.REQUEST, attributes=dict(attrs or {})), **kw)

    def allocate(self, attrs: dict[int, Any] | None = None) -> Message:
        return self.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17, **(attrs or {})})


def error(msg: Message) -> int:
    assert msg.cls == Class.ERROR, msg
    return int(msg.attributes[Attr.ERROR_CODE][0])


def make_core(
    *,
    ports: FakePorts | None = None,
    policy: PeerPolicy | None = None,
    host_addresses: tuple[str, ...] = (),
    **limits: Any,
) -> tuple[TurnCore, FakePorts]:
    ports = ports or FakePorts()
    core = TurnCore(
        ports=ports,
        credentials=Credentials(REALM, SECRET, {"static": "pw"}),
        nonces=Nonces(b"n" * 32),
        policy=policy or PeerPolicy(),
        limits=Limits(**limits),
        host_addresses=host_addresses,
    )
    return core, ports


def test_binding_needs_no_auth_and_returns_reflexive_address() -> None:
    core, _ = make_core()
    reply = Client(core).request(Method.BINDING, sign=False)
    assert reply.cls == Class.SUCCESS
    assert reply.attributes[Attr.XOR_MAPPED_ADDRESS] == CLIENT.client


def test_unauthenticated_allocate_gets_small_401_with_realm_and_nonce() -> None:
    core, _ = make_core()
    client = Client(core)
    request = Message(Method.ALLOCATE, Class.REQUEST, attributes={Attr.REQUESTED_TRANSPORT: 17})
    data = serialize(request)
    reply = parse(client.raw(data)[0].data)
    assert error(reply) == 401
    assert reply.attributes[Attr.REALM] == REALM and reply.attributes[Attr.NONCE]
    assert Attr.SOFTWARE not in reply.attributes
    assert set(reply.attributes) == {Attr.ERROR_CODE, Attr.REALM, Attr.NONCE}
    assert len(client.raw(data)[0].data) < 100  # no amplification beyond what is needed


def test_allocate_success_with_rest_credentials() -> None:
    core, ports = make_core()
    client = Client(core)
    reply = client.allocate()
    assert reply.cls == Class.SUCCESS
    assert reply.attributes[Attr.XOR_RELAYED_ADDRESS] == ("192.0.2.1", 50000)
    assert reply.attributes[Attr.XOR_MAPPED_ADDRESS] == CLIENT.client
    assert reply.attributes[Attr.LIFETIME] == 600
    # The response is signed with the same key (RFC 8489 §9.2.4).
    from flaskrtc.turn.stun import check_integrity

    assert check_integrity(reply, client.key)
    assert len(core.allocations) == 1 and 50000 in ports.open_ports


def test_wrong_password_unknown_user_and_expired_credential_get_401() -> None:
    core, _ = make_core()
    client = Client(core)
    wrong = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17}, key=b"x" * 16)
    assert error(wrong) == 401
    stranger = Client(core)
    stranger.username = "nobody"
    assert error(stranger.allocate()) == 401
    late = Client(core)
    late.now = NOW + 86400 + 10  # the REST credential has expired
    late.nonce = ""
    assert error(late.allocate()) == 401


def test_static_user() -> None:
    core, _ = make_core()
    client = Client(core)
    client.username = "static"
    client.key = long_term_key("static", REALM, "pw")
    assert client.allocate().cls == Class.SUCCESS


def test_stale_nonce_gets_438_with_a_new_nonce() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    client.now += 601
    reply = client.request(Method.REFRESH)
    assert error(reply) == 438
    assert reply.attributes[Attr.NONCE] != client.nonce
    client.nonce = reply.attributes[Attr.NONCE]
    assert client.request(Method.REFRESH).cls == Class.SUCCESS


def test_nonce_from_another_client_address_is_refused() -> None:
    core, _ = make_core()
    a = Client(core)
    a.allocate()
    b = Client(core, FiveTuple("udp", ("198.51.100.8", 1), CLIENT.server))
    b.nonce = a.nonce
    assert error(b.allocate()) == 438


def test_requested_transport_rules() -> None:
    core, _ = make_core()
    client = Client(core)
    assert error(client.request(Method.ALLOCATE)) == 400
    assert error(client.allocate({Attr.REQUESTED_TRANSPORT: 6})) == 442


def test_second_allocate_is_437_but_retransmission_gets_same_answer() -> None:
    core, _ = make_core()
    client = Client(core)
    msg = Message(Method.ALLOCATE, Class.REQUEST, attributes={Attr.REQUESTED_TRANSPORT: 17})
    first = client.send(msg)
    again = client.send(
        Message(msg.method, msg.cls, msg.transaction_id, {Attr.REQUESTED_TRANSPORT: 17})
    )
    assert again == first
    assert error(client.allocate()) == 437


def test_refresh_lifetimes_and_delete() -> None:
    core, ports = make_core()
    client = Client(core)
    client.allocate({Attr.LIFETIME: 100000})
    assert client.request(Method.REFRESH, {Attr.LIFETIME: 100000}).attributes[Attr.LIFETIME] == 3600
    assert client.request(Method.REFRESH, {Attr.LIFETIME: 30}).attributes[Attr.LIFETIME] == 600
    assert client.request(Method.REFRESH).attributes[Attr.LIFETIME] == 600
    assert client.request(Method.REFRESH, {Attr.LIFETIME: 0}).attributes[Attr.LIFETIME] == 0
    assert len(core.allocations) == 0 and not ports.open_ports
    assert error(client.request(Method.REFRESH)) == 437


def test_allocation_expires_and_releases_its_port() -> None:
    core, ports = make_core()
    client = Client(core)
    client.allocate()
    assert core.expire(NOW + 599) == []
    gone = core.expire(NOW + 600)
    assert len(gone) == 1 and not ports.open_ports and len(core.allocations) == 0


def test_other_user_on_same_five_tuple_gets_441() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    other = Client(core, user="mallory")
    other.nonce = client.nonce
    assert error(other.request(Method.REFRESH)) == 441


def test_create_permission_and_send_indication() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    send = serialize(
        Message(
            Method.SEND,
            Class.INDICATION,
            attributes={Attr.XOR_PEER_ADDRESS: PEER, Attr.DATA: b"hi"},
        )
    )
    assert client.raw(send) == []  # no permission yet: dropped silently
    reply = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER})
    assert reply.cls == Class.SUCCESS
    effects = client.raw(send)
    assert len(effects) == 1 and isinstance(effects[0], ToPeer)
    assert effects[0].peer == PEER and effects[0].data == b"hi"
    # Permissions are per IP: another port of the same host is allowed too.
    other_port = serialize(
        Message(
            Method.SEND,
            Class.INDICATION,
            attributes={Attr.XOR_PEER_ADDRESS: (PEER[0], 9), Attr.DATA: b"x"},
        )
    )
    assert len(client.raw(other_port)) == 1
    core.expire(NOW + 301)
    assert client.raw(send) == []  # the permission lasted 300 s


def test_loopback_and_metadata_peers_are_forbidden() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    for peer in (("127.0.0.1", 9), ("169.254.169.254", 80), ("0.0.0.0", 9)):
        assert error(client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: peer})) == 403
        assert (
            error(
                client.request(
                    Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: peer}
                )
            )
            == 403
        )


def test_peer_family_must_match_relay() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    reply = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: ("2001:db8::9", 9)})
    assert error(reply) == 443


def test_channel_bind_rules_and_channel_data() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate({Attr.LIFETIME: 3600})
    bind: dict[int, Any] = {Attr.CHANNEL_NUMBER: 0x4001, Attr.XOR_PEER_ADDRESS: PEER}
    assert client.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS
    assert client.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS  # refresh
    for number in (0x3FFF, 0x8000, 0xFFFF):
        assert (
            error(client.request(Method.CHANNEL_BIND, {**bind, Attr.CHANNEL_NUMBER: number})) == 400
        )
    # The channel is bound to PEER; the peer to 0x4001.
    other = (PEER[0], PEER[1] + 1)
    assert error(client.request(Method.CHANNEL_BIND, {**bind, Attr.XOR_PEER_ADDRESS: other})) == 400
    assert error(client.request(Method.CHANNEL_BIND, {**bind, Attr.CHANNEL_NUMBER: 0x4002})) == 400
    assert error(client.request(Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: 0x4003})) == 400
    # ChannelData is relayed (slow path through the core; the shell has its own fast path).
    effects = client.raw(encode_channel_data(0x4001, b"payload"))
    assert [(e.peer, e.data) for e in effects if isinstance(e, ToPeer)] == [(PEER, b"payload")]
    assert client.raw(encode_channel_data(0x4002, b"payload")) == []
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and allocation.peer_to_channel[PEER] == 0x4001
    # The RFC 5766 range coturn's client uses (0x5000-0x7FFF) is accepted too.
    high: dict[int, Any] = {Attr.CHANNEL_NUMBER: 0x6895, Attr.XOR_PEER_ADDRESS: (PEER[0], 7000)}
    assert client.request(Method.CHANNEL_BIND, high).cls == Class.SUCCESS
    core.expire(NOW + 601)
    assert allocation.channel_to_peer == {} and allocation.peer_to_channel == {}


def test_data_indication_only_with_permission() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None
    assert core.data_indication(allocation, PEER, b"x") is None
    client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER})
    data = core.data_indication(allocation, PEER, b"from peer")
    assert data is not None
    msg = parse(data)
    assert (msg.method, msg.cls) == (Method.DATA, Class.INDICATION)
    assert (
        msg.attributes[Attr.XOR_PEER_ADDRESS] == PEER and msg.attributes[Attr.DATA] == b"from peer"
    )


def test_quotas() -> None:
    core, _ = make_core(user_quota=2, total_quota=3)
    for i in range(2):
        assert (
            Client(core, FiveTuple("udp", ("198.51.100.1", i), CLIENT.server)).allocate().cls
            == Class.SUCCESS
        )
    assert (
        error(Client(core, FiveTuple("udp", ("198.51.100.1", 9), CLIENT.server)).allocate()) == 486
    )
    bob = Client(core, FiveTuple("udp", ("198.51.100.2", 1), CLIENT.server), user="bob")
    assert bob.allocate().cls == Class.SUCCESS
    carol = Client(core, FiveTuple("udp", ("198.51.100.3", 1), CLIENT.server), user="carol")
    assert error(carol.allocate()) == 486


def test_no_free_port_is_508() -> None:
    core, ports = make_core()
    ports.free = 0
    assert error(Client(core).allocate()) == 508


def test_permission_cap_is_508() -> None:
    core, _ = make_core(max_permissions=2)
    client = Client(core)
    client.allocate()
    for i in range(2):
        assert (
            client.request(
                Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: (f"203.0.113.{i}", 1)}
            ).cls
            == Class.SUCCESS
        )
    assert (
        error(
            client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: ("203.0.113.99", 1)})
        )
        == 508
    )


def test_even_port_and_reservation_token() -> None:
    core, ports = make_core()
    first = Client(core)
    reply = first.allocate({Attr.EVEN_PORT: True})
    port = reply.attributes[Attr.XOR_RELAYED_ADDRESS][1]
    assert port % 2 == 0
    token = reply.attributes[Attr.RESERVATION_TOKEN]
    assert port + 1 in ports.open_ports  # kept for the RTCP allocation
    second = Client(core, FiveTuple("udp", ("198.51.100.7", 40001), CLIENT.server))
    reply = second.allocate({Attr.RESERVATION_TOKEN: token})
    assert reply.attributes[Attr.XOR_RELAYED_ADDRESS][1] == port + 1
    assert (
        error(
            Client(core, FiveTuple("udp", ("198.51.100.7", 40002), CLIENT.server)).allocate(
                {Attr.RESERVATION_TOKEN: token}
            )
        )
        == 508
    )
    # EVEN-PORT without the R bit, as coturn's uclient sends it.
    third = Client(core, FiveTuple("udp", ("198.51.100.7", 40003), CLIENT.server))
    reply = third.allocate({Attr.EVEN_PORT: False})
    assert reply.attributes[Attr.XOR_RELAYED_ADDRESS][1] % 2 == 0
    assert Attr.RESERVATION_TOKEN not in reply.attributes
    # Token and EVEN-PORT together are a bad request.
    fourth = Client(core, FiveTuple("udp", ("198.51.100.7", 40004), CLIENT.server))
    assert (
        error(fourth.allocate({Attr.EVEN_PORT: False, Attr.RESERVATION_TOKEN: b"12345678"})) == 400
    )


def test_unused_reservation_expires() -> None:
    core, ports = make_core()
    Client(core).allocate({Attr.EVEN_PORT: True})
    assert len(ports.open_ports) == 2
    core.expire(NOW + 31)
    assert len(ports.open_ports) == 1


def test_ipv6_family_unsupported_is_440() -> None:
    core, _ = make_core()
    assert error(Client(core).allocate({Attr.REQUESTED_ADDRESS_FAMILY: 0x02})) == 440


def test_dont_fragment_gets_420_as_the_rfc_says_when_df_is_not_set() -> None:
    core, _ = make_core()
    client = Client(core)
    reply = client.allocate({Attr.DONT_FRAGMENT: True})
    assert error(reply) == 420
    assert reply.attributes[Attr.UNKNOWN_ATTRIBUTES] == (Attr.DONT_FRAGMENT,)
    assert client.allocate().cls == Class.SUCCESS  # the retry without it works


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    reply = client.request(Method.REFRESH, {0x7777: b"????"})
    assert error(reply) == 420
    assert reply.attributes[Attr.UNKNOWN_ATTRIBUTES] == (0x7777,)


def test_garbage_gets_no_reply_and_malformed_request_gets_400() -> None:
    core, _ = make_core()
    client = Client(core)
    assert client.raw(b"\x00\x01\x00") == []
    assert client.raw(b"hello world, this is not stun") == []
    # A request whose header is sound but whose attribute is broken: 400.
    good = serialize(Message(Method.BINDING, Class.REQUEST, attributes={Attr.LIFETIME: 5}))
    broken = good[:2] + good[2:20] + b"\x00\x0d\x00\x03" + b"\x00" * 4  # LIFETIME of 3 bytes
    effects = client.raw(broken)
    assert len(effects) == 1 and isinstance(effects[0], ToClient)
    assert error(parse(effects[0].data)) == 400


@pytest.mark.parametrize("method", [Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND])
def test_requests_without_allocation_get_437(method: int) -> None:
    core, _ = make_core()
    attrs: dict[int, Any] = {Attr.XOR_PEER_ADDRESS: PEER, Attr.CHANNEL_NUMBER: 0x4000}
    assert error(Client(core).request(method, attrs)) == 437


def test_channel_cap_is_508() -> None:
    core, _ = make_core(max_channels=2)
    client = Client(core)
    client.allocate()
    for i in range(2):
        bind = {Attr.CHANNEL_NUMBER: 0x4000 + i, Attr.XOR_PEER_ADDRESS: (PEER[0], 6000 + i)}
        assert client.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS
    third = {Attr.CHANNEL_NUMBER: 0x4002, Attr.XOR_PEER_ADDRESS: (PEER[0], 6002)}
    assert error(client.request(Method.CHANNEL_BIND, third)) == 508
    # Refreshing an existing binding is not a new channel.
    again = {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: (PEER[0], 6000)}
    assert client.request(Method.CHANNEL_BIND, again).cls == Class.SUCCESS


def test_zero_quotas_mean_unlimited() -> None:
    # 30 first requests from one IP: their 401s are over the unauthenticated reply limit.
    core, _ = make_core(user_quota=0, ip_quota=0, total_quota=0, unauth_rate=0)
    for i in range(30):
        five_tuple = FiveTuple("udp", ("198.51.100.1", 1000 + i), CLIENT.server)
        assert Client(core, five_tuple).allocate().cls == Class.SUCCESS


# --- issue 10: the own-relay exception reaches relay sockets only ---------------------------


def sent(effects: list[Any]) -> list[tuple[tuple[str, int], bytes]]:
    return [(e.peer, e.data) for e in effects if isinstance(e, ToPeer)]


def loopback_pair() -> tuple[TurnCore, Client, Client, tuple[str, int], tuple[str, int]]:
    """Two allocations whose relays are on 127.0.0.1, under the default (loopback-denying)
    policy: the web demo's and the NAT lab's relay-to-relay case."""
    core, _ = make_core(ports=FakePorts(public_v4="127.0.0.1"))
    a = Client(core)
    b = Client(core, FiveTuple("udp", ("198.51.100.8", 40000), CLIENT.server))
    relay_a = a.allocate().attributes[Attr.XOR_RELAYED_ADDRESS]
    relay_b = b.allocate().attributes[Attr.XOR_RELAYED_ADDRESS]
    assert relay_a[0] == relay_b[0] == "127.0.0.1"
    return core, a, b, relay_a, relay_b


def test_permission_to_another_relay_does_not_open_the_rest_of_its_ip() -> None:
    core, a, _, _, relay_b = loopback_pair()
    victim = ("127.0.0.1", 22)  # any other port on loopback: a local service
    assert (
        a.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay_b}).cls == Class.SUCCESS
    )
    # Relay to relay works (Send indication) ...
    assert sent(a.raw(TurnClient.send_indication(relay_b, b"hi"))) == [(relay_b, b"hi")]
    # ... but the permission won by the exception does not cover other ports of that IP.
    assert a.raw(TurnClient.send_indication(victim, b"GET / HTTP/1.0\r\n\r\n")) == []
    assert a.raw(TurnClient.send_indication(("127.0.0.1", relay_b[1] + 7), b"x")) == []
    bind = {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: victim}
    assert error(a.request(Method.CHANNEL_BIND, bind)) == 403
    allocation = core.allocations.get(a.ft)
    assert allocation is not None
    assert "127.0.0.1" in allocation.relay_permissions
    assert "127.0.0.1" not in allocation.permissions
    # Peer to client: only the relay's datagrams come through, not the service's.
    assert core.from_peer(allocation, relay_b, b"pong", False) is not None
    assert core.from_peer(allocation, victim, b"pong", False) is None
    assert core.data_indication(allocation, victim, b"pong") is None
    assert core.data_indication(allocation, relay_b, b"pong") is not None


def test_channel_to_another_relay_works_and_dies_with_that_relay() -> None:
    core, a, b, _, relay_b = loopback_pair()
    bind = {Attr.CHANNEL_NUMBER: 0x4001, Attr.XOR_PEER_ADDRESS: relay_b}
    assert a.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS
    allocation = core.allocations.get(a.ft)
    assert allocation is not None
    frame = encode_channel_data(0x4001, b"media")
    assert sent(a.raw(frame)) == [(relay_b, b"media")]
    assert core.channel_data(allocation, frame) == (relay_b, b"media")
    reply = core.from_peer(allocation, relay_b, b"back", True)
    assert reply == encode_channel_data(0x4001, b"back", pad=True)
    # B leaves: its port is no longer this server's relay, so nothing goes there any more
    # (another program may bind it now), though A's channel and permission have not expired.
    assert b.request(Method.REFRESH, {Attr.LIFETIME: 0}).attributes[Attr.LIFETIME] == 0
    assert a.raw(frame) == []
    assert core.channel_data(allocation, frame) is None
    assert a.raw(TurnClient.send_indication(relay_b, b"x")) == []
    assert core.from_peer(allocation, relay_b, b"back", True) is None
    assert allocation.channel_to_peer == {0x4001: relay_b}


def test_relay_to_relay_both_ways_with_indications() -> None:
    core, a, b, relay_a, relay_b = loopback_pair()
    a.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay_b})
    b.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay_a})
    alloc_b = core.allocations.get(b.ft)
    assert alloc_b is not None
    (effect,) = a.raw(TurnClient.send_indication(relay_b, b"ping"))
    assert isinstance(effect, ToPeer)
    # The datagram arrives at B's relay from A's relay address: B gets it.
    data = core.from_peer(alloc_b, relay_a, effect.data, False)
    assert data is not None and parse(data).attributes[Attr.DATA] == b"ping"


def test_open_permission_keeps_every_port() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER})
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and PEER[0] in allocation.permissions
    assert core.from_peer(allocation, (PEER[0], 1), b"x", False) is not None
    assert sent(client.raw(TurnClient.send_indication((PEER[0], 1), b"x"))) == [
        ((PEER[0], 1), b"x")
    ]


def test_hosts_own_addresses_are_denied_except_its_live_relays() -> None:
    # Relays advertised at the host's public address 192.0.2.1 (not a denied range).
    core, _ = make_core(host_addresses=("198.51.100.200", "0.0.0.0", "not an ip"))
    a = Client(core)
    b = Client(core, FiveTuple("udp", ("198.51.100.8", 40000), CLIENT.server))
    a.allocate()
    relay_b = b.allocate().attributes[Attr.XOR_RELAYED_ADDRESS]
    assert core.host_addresses == {"198.51.100.200", "192.0.2.1"}
    for peer in (("192.0.2.1", 22), ("198.51.100.200", 80)):
        assert error(a.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: peer})) == 403
    assert (
        a.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay_b}).cls == Class.SUCCESS
    )
    assert a.raw(TurnClient.send_indication(("192.0.2.1", 22), b"x")) == []
    assert sent(a.raw(TurnClient.send_indication(relay_b, b"x"))) == [(relay_b, b"x")]


def test_allowed_peer_ip_exempts_the_hosts_own_address_too() -> None:
    core, _ = make_core(policy=PeerPolicy(allowed=["192.0.2.1"]))
    client = Client(core)
    client.allocate()
    reply = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: ("192.0.2.1", 22)})
    assert reply.cls == Class.SUCCESS
    assert sent(client.raw(TurnClient.send_indication(("192.0.2.1", 22), b"x"))) == [
        (("192.0.2.1", 22), b"x")
    ]


def test_permission_given_before_the_address_was_the_hosts_is_narrowed() -> None:
    core, _ = make_core()
    a = Client(core)
    a.allocate()
    target = ("203.0.113.50", 22)
    a.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: target})
    assert sent(a.raw(TurnClient.send_indication(target, b"x"))) == [(target, b"x")]
    # A client reaches the server at 203.0.113.50: a relay is bound there, so it is ours.
    b = Client(core, FiveTuple("udp", ("198.51.100.8", 1), ("203.0.113.50", 3478)))
    relay_b = b.allocate().attributes[Attr.XOR_RELAYED_ADDRESS]
    assert relay_b[0] == "203.0.113.50" and "203.0.113.50" in core.host_addresses
    assert a.raw(TurnClient.send_indication(target, b"x")) == []
    assert sent(a.raw(TurnClient.send_indication(relay_b, b"x"))) == [(relay_b, b"x")]
    allocation = core.allocations.get(a.ft)
    assert allocation is not None and "203.0.113.50" in allocation.relay_permissions


def test_permission_kinds_switch_and_expire_together() -> None:
    core, _ = make_core(ports=FakePorts(public_v4="127.0.0.1"), max_permissions=2)
    client = Client(core)
    client.allocate()
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None
    allocation.permit("127.0.0.1", NOW, relays_only=True)
    allocation.permit("127.0.0.1", NOW)  # the latest decision wins
    assert allocation.permissions.keys() == {"127.0.0.1"} and not allocation.relay_permissions
    allocation.permit("127.0.0.1", NOW, relays_only=True)
    assert allocation.relay_permissions.keys() == {"127.0.0.1"} and not allocation.permissions
    assert allocation.permitted_ips() == 1 and allocation.has_permission("127.0.0.1")
    # Both kinds count against max_permissions.
    assert client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER}).cls == (
        Class.SUCCESS
    )
    other = ("203.0.113.10", 1)
    assert error(client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: other})) == 508
    allocation.expire(NOW + 300)
    assert allocation.permitted_ips() == 0


# --- issue 10: EVEN-PORT reservations count in the quotas and die with their allocation ------


def test_even_port_reservations_are_freed_with_their_allocation() -> None:
    core, ports = make_core(user_quota=2)
    client = Client(core)
    for _ in range(20):
        reply = client.allocate({Attr.EVEN_PORT: True})
        assert reply.cls == Class.SUCCESS and Attr.RESERVATION_TOKEN in reply.attributes
        assert len(ports.open_ports) == 2
        assert client.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
        # Its reservation went with it: no port, no quota left behind.
        assert ports.open_ports == {} and core.allocations.reservations == {}
    assert core.allocations.per_user == {} and core.allocations.per_ip == {}
    assert core.allocations.total == 0


def test_reservations_count_in_every_quota() -> None:
    core, _ = make_core(user_quota=3)
    first = Client(core)
    assert first.allocate({Attr.EVEN_PORT: True}).cls == Class.SUCCESS  # 2 ports
    second = Client(core, FiveTuple("udp", ("198.51.100.7", 40001), CLIENT.server))
    assert second.allocate().cls == Class.SUCCESS  # 3
    third = Client(core, FiveTuple("udp", ("198.51.100.7", 40002), CLIENT.server))
    assert error(third.allocate()) == 486
    assert core.allocations.per_user == {"alice": 3}
    # Per IP and in total too.
    core, _ = make_core(ip_quota=2)
    assert Client(core).allocate({Attr.EVEN_PORT: True}).cls == Class.SUCCESS
    assert error(
        Client(core, FiveTuple("udp", (CLIENT.client[0], 2), CLIENT.server)).allocate()
    ) == (486)
    core, _ = make_core(total_quota=2)
    assert Client(core).allocate({Attr.EVEN_PORT: True}).cls == Class.SUCCESS
    bob = Client(core, FiveTuple("udp", ("198.51.100.9", 2), CLIENT.server), user="bob")
    assert error(bob.allocate()) == 486
    # The R bit needs room for two: one slot left is not enough.
    core, _ = make_core(user_quota=1)
    assert error(Client(core).allocate({Attr.EVEN_PORT: True})) == 486
    assert Client(core).allocate({Attr.EVEN_PORT: False}).cls == Class.SUCCESS


def test_taking_a_reservation_needs_no_extra_quota_and_moves_its_count() -> None:
    core, ports = make_core(user_quota=2)
    rtp = Client(core)
    token = rtp.allocate({Attr.EVEN_PORT: True}).attributes[Attr.RESERVATION_TOKEN]
    rtcp = Client(core, FiveTuple("udp", ("198.51.100.7", 40001), CLIENT.server))
    reply = rtcp.allocate({Attr.RESERVATION_TOKEN: token})
    assert reply.cls == Class.SUCCESS
    assert core.allocations.per_user == {"alice": 2} and core.allocations.total == 2
    assert core.allocations.reservations == {}
    owner = core.allocations.get(rtp.ft)
    assert owner is not None and owner.reservation is None
    # The RTP allocation leaving no longer takes the RTCP one's port.
    rtp.request(Method.REFRESH, {Attr.LIFETIME: 0})
    assert len(ports.open_ports) == 1 and len(core.allocations) == 1
    # Another user may take a reservation too; the count moves to that user.
    core, _ = make_core(user_quota=2)
    token = Client(core).allocate({Attr.EVEN_PORT: True}).attributes[Attr.RESERVATION_TOKEN]
    bob = Client(core, FiveTuple("udp", ("198.51.100.9", 1), CLIENT.server), user="bob")
    assert bob.allocate({Attr.RESERVATION_TOKEN: token}).cls == Class.SUCCESS
    assert core.allocations.per_user == {"alice": 1, "bob": 1}
    assert core.allocations.per_ip == {"198.51.100.7": 1, "198.51.100.9": 1}


def test_a_full_quota_keeps_the_reservation_for_a_later_try() -> None:
    core, _ = make_core(ip_quota=2)
    token = Client(core).allocate({Attr.EVEN_PORT: True}).attributes[Attr.RESERVATION_TOKEN]
    other_ip = Client(core, FiveTuple("udp", ("198.51.100.9", 1), CLIENT.server), user="bob")
    bob = Client(core, FiveTuple("udp", ("198.51.100.9", 2), CLIENT.server), user="bob")
    assert other_ip.allocate().cls == Class.SUCCESS
    assert other_ip.request(Method.REFRESH).cls == Class.SUCCESS
    # 198.51.100.9 has 1 of 2: the token is fine, and the count moves to it.
    assert bob.allocate({Attr.RESERVATION_TOKEN: token}).cls == Class.SUCCESS
    core, _ = make_core(ip_quota=1, user_quota=0)
    alice = Client(core)
    token = alice.allocate({Attr.EVEN_PORT: False}).attributes.get(Attr.RESERVATION_TOKEN)
    assert token is None


def test_expired_reservation_frees_its_quota() -> None:
    core, ports = make_core(user_quota=2)
    client = Client(core)
    client.allocate({Attr.EVEN_PORT: True})
    assert core.allocations.per_user == {"alice": 2}
    core.expire(NOW + 30)
    assert core.allocations.per_user == {"alice": 1} and len(ports.open_ports) == 1
    assert core.allocations.reservations == {}


# --- issue 10: quotas per user (not per credential) and per client IP ----------------------


def test_user_quota_is_per_rest_user_not_per_credential() -> None:
    core, _ = make_core(user_quota=2)
    for i in range(2):
        client = Client(core, FiveTuple("udp", ("198.51.100.1", i), CLIENT.server))
        # A fresh credential from /api/turn each time: "<expiry>:alice" differs.
        cred = make_credential(SECRET, "alice", now=NOW + i, ttl=86400)
        client.username, client.password = cred.username, cred.password
        client.key = long_term_key(cred.username, REALM, cred.password)
        assert client.allocate().cls == Class.SUCCESS
    third = Client(core, FiveTuple("udp", ("198.51.100.2", 1), CLIENT.server))
    cred = make_credential(SECRET, "alice", now=NOW + 5, ttl=3600)
    third.username, third.password = cred.username, cred.password
    third.key = long_term_key(cred.username, REALM, cred.password)
    assert error(third.allocate()) == 486
    assert core.allocations.per_user == {"alice": 2}
    bob = Client(core, FiveTuple("udp", ("198.51.100.2", 2), CLIENT.server), user="bob")
    assert bob.allocate().cls == Class.SUCCESS


def test_quota_keys() -> None:
    credentials = Credentials(REALM, SECRET, {"static": "pw", "1700000000:odd": "pw"})
    assert credentials.user_of("1800000000:alice") == "alice"
    assert credentials.user_of("1800000000:a:b") == "a:b"
    assert credentials.user_of("static") == "static"
    assert credentials.user_of("1700000000:odd") == "1700000000:odd"  # a static name wins
    assert credentials.user_of("1800000000") == "1800000000"  # bare timestamp: its own key
    assert credentials.user_of("x1:alice") == "x1:alice"  # not a REST username


def test_ip_quota_counts_every_user_of_one_address() -> None:
    core, _ = make_core(ip_quota=2, user_quota=0)
    for i, user in enumerate(("u1", "u2")):
        ft = FiveTuple("udp", ("198.51.100.1", i), CLIENT.server)
        assert Client(core, ft, user=user).allocate().cls == Class.SUCCESS
    late = Client(core, FiveTuple("udp", ("198.51.100.1", 9), CLIENT.server), user="u3")
    assert error(late.allocate()) == 486
    elsewhere = Client(core, FiveTuple("udp", ("198.51.100.2", 9), CLIENT.server), user="u3")
    assert elsewhere.allocate().cls == Class.SUCCESS
    assert core.allocations.per_ip == {"198.51.100.1": 2, "198.51.100.2": 1}


def test_the_last_allocation_leaving_removes_its_quota_keys() -> None:
    core, _ = make_core()
    a = Client(core)
    b = Client(core, FiveTuple("udp", ("198.51.100.7", 40001), CLIENT.server))
    a.allocate()
    b.allocate()
    assert core.allocations.per_user == {"alice": 2}
    assert core.allocations.per_ip == {"198.51.100.7": 2}
    a.request(Method.REFRESH, {Attr.LIFETIME: 0})
    assert core.allocations.per_user == {"alice": 1}
    assert core.allocations.per_ip == {"198.51.100.7": 1}
    b.request(Method.REFRESH, {Attr.LIFETIME: 0})
    assert core.allocations.per_user == {} and core.allocations.per_ip == {}
    # Removing twice is harmless and counts nothing twice.
    allocation = Client(core).allocate()
    assert allocation.cls == Class.SUCCESS
    live = next(iter(core.allocations))
    core.allocations.remove(live)
    core.allocations.remove(live)
    assert core.allocations.per_user == {} and core.allocations.total == 0


# --- issue 10: unauthenticated replies are rate limited per source IP (UDP) -----------------


def unauth_allocate() -> bytes:
    request = Message(Method.ALLOCATE, Class.REQUEST, attributes={Attr.REQUESTED_TRANSPORT: 17})
    return serialize(request)


def test_unauthenticated_replies_are_rate_limited_per_source_ip() -> None:
    core, _ = make_core(unauth_rate=10, unauth_burst=20)
    replies = [core.handle(unauth_allocate(), CLIENT, NOW) for _ in range(30)]
    assert [len(r) for r in replies] == [1] * 20 + [0] * 10  # over the burst: dropped
    # Another source IP has its own bucket; the first refills at 10 a second.
    other = FiveTuple("udp", ("198.51.100.99", 1), CLIENT.server)
    assert len(core.handle(unauth_allocate(), other, NOW)) == 1
    later = [core.handle(unauth_allocate(), CLIENT, NOW + 1.0) for _ in range(11)]
    assert [len(r) for r in later] == [1] * 10 + [0]


def test_unauthenticated_bucket_is_per_ip_whatever_the_source_port() -> None:
    # A spoofed flood varies the source port: the bucket is the address's, not the 5-tuple's.
    core, _ = make_core(unauth_rate=10, unauth_burst=5)
    ports = [FiveTuple("udp", (CLIENT.client[0], 1000 + n), CLIENT.server) for n in range(8)]
    replies = [core.handle(unauth_allocate(), ft, NOW) for ft in ports]
    assert [len(r) for r in replies] == [1] * 5 + [0] * 3


def test_permission_cap_counts_addresses_not_ports() -> None:
    # RFC 8656 §9: a permission is for an IP address, whatever the port; §10.2: one request
    # may name several peers, all or nothing. The cap counts the new addresses.
    core, _ = make_core(max_permissions=2)
    client = Client(core)
    client.allocate()

    def permit(*peers: tuple[str, int]) -> Message:
        msg = Message(Method.CREATE_PERMISSION, Class.REQUEST)
        msg.attributes[Attr.XOR_PEER_ADDRESS] = peers[0]
        msg.repeated.extend((Attr.XOR_PEER_ADDRESS, peer) for peer in peers[1:])
        return client.send(msg)

    # One address on three ports is one permission...
    assert permit(("203.0.113.5", 1), ("203.0.113.5", 2), ("203.0.113.5", 3)).cls == Class.SUCCESS
    # ... two new addresses on one port are two: over the cap, and nothing is installed.
    assert error(permit(("203.0.113.6", 7), ("203.0.113.8", 7))) == 508
    assert permit(("203.0.113.6", 7)).cls == Class.SUCCESS


def test_every_unsigned_reply_counts_binding_400_420_and_401() -> None:
    core, _ = make_core(unauth_rate=1, unauth_burst=4)
    binding = serialize(Message(Method.BINDING, Class.REQUEST))
    unknown = serialize(Message(Method.BINDING, Class.REQUEST, attributes={0x7777: b"x"}))
    good = serialize(Message(Method.BINDING, Class.REQUEST, attributes={Attr.LIFETIME: 5}))
    broken = good[:20] + b"\x00\x0d\x00\x03" + b"\x00" * 4  # a 400 from the parser
    for data in (binding, unknown, broken, unauth_allocate()):
        (reply,) = core.handle(data, CLIENT, NOW)
        assert isinstance(reply, ToClient)
    for data in (binding, unknown, broken, unauth_allocate()):
        assert core.handle(data, CLIENT, NOW) == []


def test_signed_replies_and_streams_are_not_limited() -> None:
    core, _ = make_core(unauth_rate=1, unauth_burst=1)
    client = Client(core)
    assert client.allocate().cls == Class.SUCCESS  # its challenge took the only token
    assert core.handle(unauth_allocate(), CLIENT, NOW) == []  # the bucket is empty...
    for _ in range(5):  # ... but signed requests are answered
        assert client.request(Method.REFRESH).cls == Class.SUCCESS
    tcp = FiveTuple("tcp", CLIENT.client, CLIENT.server)
    for _ in range(5):
        assert len(core.handle(unauth_allocate(), tcp, NOW)) == 1


def test_unauthenticated_limit_off() -> None:
    core, _ = make_core(unauth_rate=0)
    assert all(len(core.handle(unauth_allocate(), CLIENT, NOW)) == 1 for _ in range(100))


# --- issue 10: authentication failures logged for fail2ban, one line each, no flood --------

FAILURE_LINE = (
    'turn auth failure: client=198.51.100.7 port=40000 transport=udp user="{user}" reason={reason}'
)


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "turn auth failure" in r.getMessage()
    ]


def test_auth_failures_are_logged_with_the_client_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flaskrtc.turn")
    core, _ = make_core()
    client = Client(core)
    client.allocate()  # the 401 challenge to the first, unsigned request is no failure
    assert failures(caplog) == []
    assert error(client.request(Method.REFRESH, key=b"x" * 16)) == 401
    assert failures(caplog) == [FAILURE_LINE.format(user=client.username, reason="wrong-password")]
    caplog.clear()
    stranger = Client(core)
    stranger.nonce = client.nonce
    stranger.username = "nobody"
    stranger.allocate()
    expired = Client(core)
    expired.nonce = client.nonce
    expired.username = f"{int(NOW) - 10}:alice"
    expired.allocate()
    realm = Client(core)
    realm.nonce = client.nonce
    msg = Message(Method.REFRESH, Class.REQUEST, attributes={})
    msg.attributes.update(
        {Attr.USERNAME: realm.username, Attr.REALM: "other", Attr.NONCE: realm.nonce}
    )
    realm.raw(serialize(msg, integrity_key=realm.key))
    assert failures(caplog) == [
        FAILURE_LINE.format(user="nobody", reason="unknown-user"),
        FAILURE_LINE.format(user=f"{int(NOW) - 10}:alice", reason="expired"),
        FAILURE_LINE.format(user=realm.username, reason="wrong-realm"),
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if "failure" in r.getMessage())


def test_auth_failure_lines_cannot_be_forged_or_flood(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flaskrtc.turn")
    core, _ = make_core(unauth_rate=0)  # every 401 answered: only the log is limited here
    client = Client(core)
    client.allocate()
    client.username = 'x" reason=ok\nturn auth failure: client=10.0.0.1 ' + "é" * 80
    client.request(Method.REFRESH)
    (line,) = failures(caplog)
    assert "\n" not in line and line.replace('\\"', "").count('"') == 2
    assert line.startswith("turn auth failure: client=198.51.100.7 port=40000 transport=udp")
    assert line.endswith('..." reason=unknown-user') and '\\" reason=ok\\n' in line
    # A source guessing passwords as fast as it can: a burst of 10 lines (the one above was
    # the first), then 1 per 10 s.
    for _ in range(100):
        client.request(Method.REFRESH, key=b"y" * 16)
    assert len(failures(caplog)) == 10
    client.now += 10
    client.nonce = ""
    for _ in range(5):
        client.request(Method.REFRESH, key=b"y" * 16)
    assert len(failures(caplog)) == 11
    # Many sources: 100 lines in a burst in all.
    caplog.clear()
    core, _ = make_core(unauth_rate=0)
    for i in range(300):
        c = Client(core, FiveTuple("udp", (f"198.51.{i // 250}.{i % 250}", 1), CLIENT.server))
        c.request(Method.REFRESH, key=b"z" * 16)
    assert len(failures(caplog)) == 100


def test_log_text_escapes_and_truncates() -> None:
    assert log_text("alice") == "alice"
    assert log_text('a"b\\c\n\x00') == 'a\\"b\\\\c\\n\\x00'
    assert log_text("x" * 65) == "x" * 64 + "..."
    assert log_text("x" * 64) == "x" * 64


# --- issue 10: the audit's gaps -------------------------------------------------------------


def test_channel_numbers_out_of_range_get_400_for_a_fresh_peer() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    fresh = (PEER[0], 7777)  # bound to no channel: only the range rule can refuse it
    for number in (0x3FFF, 0x8000, 0xFFFF, 0x0000):
        bind = {Attr.CHANNEL_NUMBER: number, Attr.XOR_PEER_ADDRESS: fresh}
        assert error(client.request(Method.CHANNEL_BIND, bind)) == 400
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and allocation.channel_to_peer == {}
    for number, port in ((0x4000, 7777), (0x7FFF, 7778)):  # the range's ends are channels
        bind = {Attr.CHANNEL_NUMBER: number, Attr.XOR_PEER_ADDRESS: (PEER[0], port)}
        assert client.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS


def test_channel_bind_to_a_new_ip_over_the_permission_cap_is_508() -> None:
    core, _ = make_core(max_permissions=1)
    client = Client(core)
    client.allocate()
    assert client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER}).cls == (
        Class.SUCCESS
    )
    other = {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: ("203.0.113.10", 1)}
    assert error(client.request(Method.CHANNEL_BIND, other)) == 508
    # A channel to the IP already permitted needs no new permission.
    same = {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: (PEER[0], 1)}
    assert client.request(Method.CHANNEL_BIND, same).cls == Class.SUCCESS


def test_refresh_with_the_other_address_family_is_443() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    reply = client.request(Method.REFRESH, {Attr.REQUESTED_ADDRESS_FAMILY: 0x02})
    assert error(reply) == 443
    assert client.request(Method.REFRESH, {Attr.REQUESTED_ADDRESS_FAMILY: 0x01}).cls == (
        Class.SUCCESS
    )


def test_ipv6_allocation_and_its_refresh_family() -> None:
    core, _ = make_core(ports=FakePorts(v6=True))
    client = Client(core)
    reply = client.allocate({Attr.REQUESTED_ADDRESS_FAMILY: 0x02})
    assert reply.attributes[Attr.XOR_RELAYED_ADDRESS] == ("2001:db8::1", 50000)
    assert error(client.request(Method.REFRESH, {Attr.REQUESTED_ADDRESS_FAMILY: 0x01})) == 443
    assert client.request(Method.REFRESH, {Attr.REQUESTED_ADDRESS_FAMILY: 0x02}).cls == (
        Class.SUCCESS
    )
    other = Client(core, FiveTuple("udp", ("198.51.100.9", 1), CLIENT.server))
    assert error(other.allocate({Attr.REQUESTED_ADDRESS_FAMILY: 0x03})) == 440


def test_even_port_with_no_free_port_is_508_and_leaks_nothing() -> None:
    core, ports = make_core()
    ports.free = 0
    assert error(Client(core).allocate({Attr.EVEN_PORT: False})) == 508
    assert error(Client(core).allocate({Attr.EVEN_PORT: True})) == 508
    # The even port is free but the next one is not: 508, and the even one is closed again.
    ports.free = 100
    ports.open_ports[50001] = FakeRelay(("0.0.0.0", 50001), ("192.0.2.1", 50001))
    assert error(Client(core).allocate({Attr.EVEN_PORT: True})) == 508
    assert set(ports.open_ports) == {50001} and len(core.allocations) == 0
    assert core.allocations.total == 0


def test_unknown_authenticated_method_is_a_signed_400() -> None:
    from flaskrtc.turn.stun import check_integrity

    core, _ = make_core()
    client = Client(core)
    client.allocate()
    for method in (Method.CONNECT, 0x0FF):
        reply = client.request(method)
        assert error(reply) == 400 and check_integrity(reply, client.key)
    # Unsigned, the same method is challenged first, like any other request.
    unsigned = client.request(0x0FF, sign=False)
    assert error(unsigned) == 401 and not check_integrity(unsigned, client.key)


def test_indications_and_responses_other_than_send_are_ignored() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate()
    client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER})
    data: dict[int, Any] = {Attr.XOR_PEER_ADDRESS: PEER, Attr.DATA: b"x"}
    for cls, method in ((Class.INDICATION, Method.DATA), (Class.SUCCESS, Method.SEND)):
        assert client.raw(serialize(Message(method, cls, attributes=dict(data)))) == []
    # A Send indication without DATA, or with no peer, is dropped.
    no_data = Message(Method.SEND, Class.INDICATION, attributes={Attr.XOR_PEER_ADDRESS: PEER})
    assert client.raw(serialize(no_data)) == []
    no_peer = Message(Method.SEND, Class.INDICATION, attributes={Attr.DATA: b"x"})
    assert client.raw(serialize(no_peer)) == []
    # And from a five-tuple without allocation.
    stranger = FiveTuple("udp", ("198.51.100.50", 1), CLIENT.server)
    assert core.handle(TurnClient.send_indication(PEER, b"x"), stranger, NOW) == []
    assert core.handle(encode_channel_data(0x4000, b"x"), stranger, NOW) == []


def test_channel_data_checks_its_length_and_channel() -> None:
    core, _ = make_core()
    client = Client(core)
    client.allocate({Attr.LIFETIME: 3600})
    client.request(Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: PEER})
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None
    frame = encode_channel_data(0x4000, b"abcd")
    assert core.channel_data(allocation, frame) == (PEER, b"abcd")
    assert core.channel_data(allocation, frame + b"\0\0\0") == (PEER, b"abcd")  # padding
    assert core.channel_data(allocation, frame[:-1]) is None  # length beyond the data
    assert core.channel_data(allocation, frame[:3]) is None
    assert core.channel_data(allocation, encode_channel_data(0x4000, b"")) == (PEER, b"")
    assert core.channel_data(allocation, encode_channel_data(0x4001, b"abcd")) is None
    # Peer to client: a channel's data is ChannelData, padded on streams only.
    assert core.from_peer(allocation, PEER, b"abc", False) == encode_channel_data(0x4000, b"abc")
    assert core.from_peer(allocation, PEER, b"abc", True) == encode_channel_data(
        0x4000, b"abc", pad=True
    )
    assert core.from_peer(allocation, PEER, b"abcd", True) == encode_channel_data(0x4000, b"abcd")
    # Another port of a permitted IP: no channel, so a Data indication.
    other = core.from_peer(allocation, (PEER[0], 1), b"abc", False)
    assert other is not None and parse(other).attributes[Attr.XOR_PEER_ADDRESS] == (PEER[0], 1)
    core.expire(NOW + 601)
    assert core.channel_data(allocation, frame) is None


def test_lifetime_below_default_gets_default_and_above_max_gets_max() -> None:
    core, _ = make_core(default_lifetime=600, max_lifetime=3600)
    client = Client(core)
    assert client.allocate({Attr.LIFETIME: 599}).attributes[Attr.LIFETIME] == 600
    assert client.request(Method.REFRESH, {Attr.LIFETIME: 601}).attributes[Attr.LIFETIME] == 601
    assert client.request(Method.REFRESH, {Attr.LIFETIME: 3601}).attributes[Attr.LIFETIME] == 3600
    assert client.request(Method.REFRESH, {Attr.LIFETIME: 3600}).attributes[Attr.LIFETIME] == 3600
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and allocation.expires == NOW + 3600


def test_additional_address_family_without_ipv6_relays_is_an_ipv4_allocation() -> None:
    core, _ = make_core()
    reply = Client(core).allocate({Attr.ADDITIONAL_ADDRESS_FAMILY: 0x02})
    assert reply.cls == Class.SUCCESS
    assert reply.attributes[Attr.ADDRESS_ERROR_CODE] == (0x02, 440, "Address Family not Supported")
    assert reply.get_all(Attr.XOR_RELAYED_ADDRESS) == [("192.0.2.1", 50000)]
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and allocation.families == (4,)


def dual_client() -> tuple[TurnCore, FakePorts, Client, Message]:
    core, ports = make_core(ports=FakePorts(v6=True))
    client = Client(core)
    reply = client.allocate({Attr.ADDITIONAL_ADDRESS_FAMILY: 0x02})
    assert reply.cls == Class.SUCCESS, reply
    return core, ports, client, reply


def test_dual_allocation_has_one_relay_of_each_family() -> None:
    # RFC 8656 §7.2: ADDITIONAL-ADDRESS-FAMILY IPv6 asks for an IPv4 and an IPv6 relay; the
    # success response carries both XOR-RELAYED-ADDRESSes, IPv4 first, and no error.
    core, ports, _client, reply = dual_client()
    assert reply.get_all(Attr.XOR_RELAYED_ADDRESS) == [("192.0.2.1", 50000), ("2001:db8::1", 50001)]
    assert Attr.ADDRESS_ERROR_CODE not in reply.attributes
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and allocation.families == (4, 6)
    assert set(ports.open_ports) == {50000, 50001}
    assert ("2001:db8::1", 50001) in core.allocations.live
    assert core.allocations.by_relay[("::", 50001)] is allocation


def test_dual_allocation_relays_to_peers_of_both_families() -> None:
    core, _ports, client, _ = dual_client()
    v6_peer = ("2001:db8:5::9", 6000)
    reply = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER}, sign=True)
    assert reply.cls == Class.SUCCESS
    bound = client.request(
        Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: 0x4001, Attr.XOR_PEER_ADDRESS: v6_peer}
    )
    assert bound.cls == Class.SUCCESS
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None
    assert core.channel_data(allocation, encode_channel_data(0x4001, b"hi")) == (v6_peer, b"hi")
    # Each datagram leaves from the relay of its peer's family.
    assert allocation.relay_for(v6_peer[0]).address == ("::", 50001)
    assert allocation.relay_for(PEER[0]).address == ("0.0.0.0", 50000)
    assert core.from_peer(allocation, v6_peer, b"back", False) == encode_channel_data(
        0x4001, b"back"
    )


def test_single_family_allocation_refuses_a_peer_of_the_other_family() -> None:
    core, _ = make_core(ports=FakePorts(v6=True))
    client = Client(core)
    client.allocate()
    v6_peer = {Attr.XOR_PEER_ADDRESS: ("2001:db8:5::9", 6000)}
    assert error(client.request(Method.CREATE_PERMISSION, v6_peer)) == 443


def test_dual_allocation_counts_two_ports_in_the_quotas() -> None:
    core, _ports, _client, _ = dual_client()
    assert core.allocations.total == 2
    assert core.allocations.per_user["alice"] == 2
    assert core.allocations.per_ip[CLIENT.client[0]] == 2
    core.allocations.clear()
    assert core.allocations.total == 0 and not core.allocations.per_user


def test_dual_allocation_over_quota_for_two_gets_its_ipv4_relay_only() -> None:
    core, ports = make_core(ports=FakePorts(v6=True), user_quota=1)
    reply = Client(core).allocate({Attr.ADDITIONAL_ADDRESS_FAMILY: 0x02})
    assert reply.cls == Class.SUCCESS
    assert reply.attributes[Attr.ADDRESS_ERROR_CODE][:2] == (0x02, 486)
    assert reply.get_all(Attr.XOR_RELAYED_ADDRESS) == [("192.0.2.1", 50000)]
    assert set(ports.open_ports) == {50000}


def test_dual_allocation_without_a_free_ipv6_port_gets_508_for_it() -> None:
    core, ports = make_core(ports=FakePorts(free=1, v6=True))
    reply = Client(core).allocate({Attr.ADDITIONAL_ADDRESS_FAMILY: 0x02})
    assert reply.cls == Class.SUCCESS
    assert reply.attributes[Attr.ADDRESS_ERROR_CODE][:2] == (0x02, 508)
    assert core.allocations.total == 1 and set(ports.open_ports) == {50000}


def test_dual_allocation_with_the_drafts_attribute_number_as_coturn_sends_it() -> None:
    # turnutils_uclient -Z asks with 0x8032 (draft-ietf-tram-turnbis), not RFC 8656's 0x8000,
    # and reads ADDRESS-ERROR-CODE as 0x8033.
    core, _ = make_core(ports=FakePorts(v6=True))
    reply = Client(core).allocate({Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT: 0x02})
    assert len(reply.get_all(Attr.XOR_RELAYED_ADDRESS)) == 2
    no_v6, _ = make_core()
    refused = Client(no_v6).allocate({Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT: 0x02})
    assert refused.attributes[Attr.ADDRESS_ERROR_CODE_DRAFT][:2] == (0x02, 440)
    assert Attr.ADDRESS_ERROR_CODE not in refused.attributes


@pytest.mark.parametrize(
    "attrs",
    [
        # §7.2: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together.
        {Attr.REQUESTED_ADDRESS_FAMILY: 0x01, Attr.ADDITIONAL_ADDRESS_FAMILY: 0x02},
        # IPv4 is never the additional family.
        {Attr.ADDITIONAL_ADDRESS_FAMILY: 0x01},
        # A RESERVATION-TOKEN names one relay already made.
        {Attr.ADDITIONAL_ADDRESS_FAMILY: 0x02, Attr.RESERVATION_TOKEN: b"12345678"},
    ],
)
def test_bad_dual_allocation_requests_get_400(attrs: dict[int, Any]) -> None:
    core, ports = make_core(ports=FakePorts(v6=True))
    assert error(Client(core).allocate(attrs)) == 400
    assert not ports.open_ports


def test_dual_allocation_refresh_to_zero_with_a_family_deletes_that_relay_only() -> None:
    # RFC 8656 §8.2: a Refresh with LIFETIME 0 and REQUESTED-ADDRESS-FAMILY deletes that
    # family's relay of a dual allocation; the other relays on.
    core, ports, client, _ = dual_client()
    zero_v4 = {Attr.LIFETIME: 0, Attr.REQUESTED_ADDRESS_FAMILY: 0x01}
    assert client.request(Method.REFRESH, zero_v4).attributes[Attr.LIFETIME] == 0
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and allocation.families == (6,)
    assert set(ports.open_ports) == {50001} and core.allocations.total == 1
    assert ("192.0.2.1", 50000) not in core.allocations.live
    # Now a single IPv6 allocation: IPv4 is not one of its families.
    assert error(client.request(Method.REFRESH, {Attr.REQUESTED_ADDRESS_FAMILY: 0x01})) == 443
    assert error(client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: PEER})) == 443
    zero_v6 = {Attr.LIFETIME: 0, Attr.REQUESTED_ADDRESS_FAMILY: 0x02}
    assert client.request(Method.REFRESH, zero_v6).attributes[Attr.LIFETIME] == 0
    assert core.allocations.get(CLIENT) is None and not ports.open_ports


def test_dual_allocation_refresh_keeps_both_and_zero_deletes_both() -> None:
    core, ports, client, _ = dual_client()
    for family in (0x01, 0x02):
        ok = client.request(Method.REFRESH, {Attr.REQUESTED_ADDRESS_FAMILY: family})
        assert ok.cls == Class.SUCCESS
    assert client.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
    assert core.allocations.get(CLIENT) is None and not ports.open_ports
    assert core.allocations.total == 0


def test_dual_allocation_retransmission_gets_both_relays_again() -> None:
    core, _ports, client, _ = dual_client()
    request = Message(
        Method.ALLOCATE,
        Class.REQUEST,
        attributes={Attr.REQUESTED_TRANSPORT: 17, Attr.ADDITIONAL_ADDRESS_FAMILY: 0x02},
    )
    first = client.send(request)
    assert error(first) == 437  # another transaction on an allocated five-tuple
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None
    again = parse(allocation.response)
    assert len(again.get_all(Attr.XOR_RELAYED_ADDRESS)) == 2


# -- rules the mutation tests (tools/mutate.py) found unstated --------------------------------


def test_binding_with_unknown_comprehension_required_attribute_gets_420() -> None:
    # RFC 8489 §6.3.1.1: a request with unknown comprehension-required attributes is
    # answered 420 listing them, Binding included (it needs no authentication).
    core, _ = make_core()
    reply = Client(core).request(Method.BINDING, {0x7777: b"????"}, sign=False)
    assert error(reply) == 420
    assert reply.attributes[Attr.UNKNOWN_ATTRIBUTES] == (0x7777,)
    assert Attr.XOR_MAPPED_ADDRESS not in reply.attributes


def test_create_permission_without_a_peer_address_is_a_signed_400() -> None:
    # RFC 8656 §10.2: a CreatePermission needs at least one XOR-PEER-ADDRESS.
    from flaskrtc.turn.stun import check_integrity

    core, _ = make_core()
    client = Client(core)
    client.allocate()
    reply = client.request(Method.CREATE_PERMISSION, {})
    assert error(reply) == 400 and check_integrity(reply, client.key)
    allocation = core.allocations.get(CLIENT)
    assert allocation is not None and allocation.permitted_ips() == 0


def test_core_limits_default_to_the_config_defaults() -> None:
    # A TurnCore built without explicit limits (tests, embedders) gets what [turn] documents.
    from dataclasses import fields

    from flaskrtc.config import TurnConfig

    config = TurnConfig()
    for f in fields(Limits):
        assert getattr(Limits(), f.name) == getattr(config, f.name), f.name


def make_allocation() -> Any:
    from flaskrtc.turn.allocation import Allocation

    relay = FakeRelay(("0.0.0.0", 50000), ("192.0.2.1", 50000))
    return Allocation(CLIENT, "alice", b"k" * 16, relay, NOW + 600, b"t" * 12)


def test_a_permission_lasts_exactly_300_seconds() -> None:
    # RFC 8656 §9: a permission lives 300 s from its install or last refresh.
    allocation = make_allocation()
    allocation.permit(PEER[0], NOW)
    allocation.permit("203.0.113.10", NOW, relays_only=True)
    allocation.expire(NOW + 299.9)
    assert allocation.has_permission(PEER[0]) and allocation.has_permission("203.0.113.10")
    allocation.expire(NOW + 300)
    assert allocation.permitted_ips() == 0


def test_a_channel_lasts_exactly_600_seconds_and_refreshes_its_permission() -> None:
    # RFC 8656 §12: a channel binding lives 10 minutes; binding installs or refreshes the
    # permission of the peer's IP (an ordinary one unless the policy says relays only).
    allocation = make_allocation()
    allocation.bind(0x4000, PEER, NOW)
    assert PEER[0] in allocation.permissions and not allocation.relay_permissions
    allocation.expire(NOW + 599.9)
    assert allocation.channel_to_peer == {0x4000: PEER}
    allocation.permit(PEER[0], NOW + 500)  # the permission outlives the channel here
    allocation.expire(NOW + 600)
    assert allocation.channel_to_peer == {} and allocation.peer_to_channel == {}
    assert allocation.channel_expiry == {} and allocation.has_permission(PEER[0])
