"""TURN request handling (RFC 8656) without sockets: a fake relay-port provider, time passed in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.auth import Credentials, Nonces
from flaskrtc.turn.core import Limits, ToClient, ToPeer, TurnCore
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

    def __init__(self, free: int = 100, v6: bool = False) -> None:
        self.next = 50000
        self.free = free
        self.open_ports: dict[int, FakeRelay] = {}
        self.v6 = v6
        self.locals: list[str | None] = []  # the arrival address of each open() call

    def supports(self, family: int) -> bool:
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
        ip = "::" if family == 6 else "0.0.0.0"
        relay = FakeRelay((ip, port), ("192.0.2.1" if family == 4 else "2001:db8::1", port))
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


def make_core(**limits: Any) -> tuple[TurnCore, FakePorts]:
    ports = FakePorts()
    core = TurnCore(
        ports=ports,
        credentials=Credentials(REALM, SECRET, {"static": "pw"}),
        nonces=Nonces(b"n" * 32),
        policy=PeerPolicy(),
        limits=Limits(**limits),
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
    core, _ = make_core(user_quota=0, total_quota=0)
    for i in range(30):
        five_tuple = FiveTuple("udp", ("198.51.100.1", 1000 + i), CLIENT.server)
        assert Client(core, five_tuple).allocate().cls == Class.SUCCESS
