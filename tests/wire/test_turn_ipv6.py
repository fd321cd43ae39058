"""IPv6 end to end on ::1 (RFC 6156, RFC 8656 §7.2): TURN and HTTP listen on :: (one
dual-stack socket); a client over IPv6 or IPv4 gets relays of either family or both (a dual
allocation) and relays to peers of each family; /api/turn names only families TURN listens
on. Real clients: coturn's turnutils_uclient (-x IPv6 relay, -Z dual) and aioice."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from flaskrtc.turn.client import TurnClient
from flaskrtc.turn.stun import Attr, Class, Message, Method, serialize
from tests.conftest import require_module
from tests.wire.test_turn_wire import RawTurn, TurnProcess, assert_no_loss, uclient

V4, V6 = "127.0.0.1", "::1"
FAMILY = {4: 0x01, 6: 0x02}


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind((V6, 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not ipv6_loopback(), reason="this host has no ::1")


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    """flaskrtc as shipped: HTTP and TURN on :: and no public_ip (relays on the address each
    client reached); loopback peers of both families allowed (the test's peers live there)."""
    proc = TurnProcess(
        tmp_path_factory.mktemp("dual"),
        general={"bind": "::"},
        bind="::",
        public_ip="",
        allowed_peer_ip="127.0.0.1, ::1",
        # Every test's clients come from ::1 or 127.0.0.1: quotas are not what is tested here.
        user_quota="0",
        ip_quota="0",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def v4_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    """HTTP on :: but TURN on IPv4 only."""
    proc = TurnProcess(
        tmp_path_factory.mktemp("v4only"), general={"bind": "::"}, bind="0.0.0.0", public_ip=""
    )
    yield proc
    proc.stop()


class Peer:
    """A UDP peer on loopback of one family."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.bind((host, 0))
        self.sock.settimeout(5)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]

    def close(self) -> None:
        self.sock.close()


def client_over(proc: TurnProcess, host: str, transport: str = "udp", user: str = "v6") -> RawTurn:
    creds = proc.credentials(user)
    if transport == "tls":
        client = RawTurn(
            proc.turn_tls_port, creds["username"], creds["password"], host=host, tcp=True
        )
        context = ssl.create_default_context(cafile=str(proc.cert))
        context.check_hostname = False
        client.sock = context.wrap_socket(client.sock)
        return client
    return RawTurn(
        proc.turn_port, creds["username"], creds["password"], host=host, tcp=transport != "udp"
    )


def relay_both_ways(client: RawTurn, relay: tuple[str, int], peer: Peer, tag: bytes) -> None:
    """Permission for ``peer``, a Send indication out, a datagram back as a Data indication."""
    reply = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: peer.address})
    assert reply.cls == Class.SUCCESS, reply
    client._send(TurnClient.send_indication(peer.address, b"out " + tag))
    data, source = peer.sock.recvfrom(2048)
    assert data == b"out " + tag
    assert source[:2] == relay, (source, relay)  # it left from the relay of peer's family
    peer.sock.sendto(b"back " + tag, relay)
    indication = client.recv_message()
    assert indication.method == Method.DATA, indication
    assert indication.attributes[Attr.DATA] == b"back " + tag
    assert indication.attributes[Attr.XOR_PEER_ADDRESS] == peer.address


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
@pytest.mark.parametrize("over", [V6, V4])
@pytest.mark.parametrize("relay_family", [4, 6])
def test_client_of_either_family_relays_to_a_peer_of_either_family(
    dual: TurnProcess, over: str, relay_family: int, transport: str
) -> None:
    client = client_over(dual, over, transport)
    peer = Peer(V6 if relay_family == 6 else V4)
    try:
        attrs: dict[int, Any] = {Attr.REQUESTED_TRANSPORT: 17}
        if relay_family == 6:
            attrs[Attr.REQUESTED_ADDRESS_FAMILY] = FAMILY[6]
        reply = client.request(Method.ALLOCATE, attrs)
        assert reply.cls == Class.SUCCESS, reply
        # The client's own address, unmapped: an IPv4 client of the dual-stack socket is
        # 127.0.0.1, not ::ffff:127.0.0.1.
        assert reply.attributes[Attr.XOR_MAPPED_ADDRESS][0] == over
        relays = reply.get_all(Attr.XOR_RELAYED_ADDRESS)
        assert [r[0] for r in relays] == [peer.address[0]], relays
        relay_both_ways(client, relays[0], peer, transport.encode())
        if transport == "udp":
            # A reply leaves from the address the client sent to.
            assert client.last_source is not None and client.last_source[0] == over
    finally:
        client.close()
        peer.close()


@pytest.mark.parametrize("over", [V6, V4])
def test_dual_allocation_relays_to_both_families(dual: TurnProcess, over: str) -> None:
    client = client_over(dual, over)
    v4, v6 = Peer(V4), Peer(V6)
    try:
        reply = client.request(
            Method.ALLOCATE,
            {Attr.REQUESTED_TRANSPORT: 17, Attr.ADDITIONAL_ADDRESS_FAMILY: FAMILY[6]},
        )
        assert reply.cls == Class.SUCCESS, reply
        assert Attr.ADDRESS_ERROR_CODE not in reply.attributes
        relay4, relay6 = reply.get_all(Attr.XOR_RELAYED_ADDRESS)
        assert (relay4[0], relay6[0]) == (V4, V6)
        relay_both_ways(client, relay4, v4, b"v4")
        relay_both_ways(client, relay6, v6, b"v6")
        # Refresh to 0 for IPv4 alone: the IPv6 relay goes on, the IPv4 one is gone.
        zero: dict[int, Any] = {Attr.LIFETIME: 0, Attr.REQUESTED_ADDRESS_FAMILY: FAMILY[4]}
        assert client.request(Method.REFRESH, zero).cls == Class.SUCCESS
        relay_both_ways(client, relay6, v6, b"v6 again")
        refused = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: v4.address})
        assert refused.attributes[Attr.ERROR_CODE][0] == 443
    finally:
        client.close()
        v4.close()
        v6.close()


def test_an_ipv4_client_is_answered_from_the_address_it_sent_to(dual: TurnProcess) -> None:
    """The dual-stack socket replies to an IPv4 client from the IPv4 address the client used
    (IPV6_PKTINFO with the mapped address): here 127.0.0.2, where the kernel's own choice of
    source for 127.0.0.1 would be 127.0.0.1, and a client drops a reply from elsewhere."""
    client = client_over(dual, "127.0.0.2")
    try:
        reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert reply.cls == Class.SUCCESS, reply
        assert client.last_source == ("127.0.0.2", dual.turn_port)
        # The relay lives on the address the client reached, too.
        assert reply.attributes[Attr.XOR_RELAYED_ADDRESS][0] == "127.0.0.2"
    finally:
        client.close()


@pytest.mark.parametrize(
    "peer",
    [
        "::ffff:169.254.169.254",  # IPv4-mapped cloud metadata
        "64:ff9b::a9fe:a9fe",  # its NAT64 form
        "2002:a9fe:a9fe::1",  # its 6to4 form
        "::169.254.169.254",  # IPv4-compatible
        "fe80::1",  # link-local
        "ff02::1",  # multicast
        "::",  # unspecified
        "::ffff:127.0.0.2",  # mapped loopback outside allowed_peer_ip
    ],
)
def test_ipv6_relay_refuses_every_form_of_a_denied_peer(dual: TurnProcess, peer: str) -> None:
    """The peer rules hold for an IPv6 relay as for an IPv4 one (403, RFC 8656 §9.1)."""
    client = client_over(dual, V6)
    try:
        attrs: dict[int, Any] = {
            Attr.REQUESTED_TRANSPORT: 17,
            Attr.REQUESTED_ADDRESS_FAMILY: FAMILY[6],
        }
        assert client.request(Method.ALLOCATE, attrs).cls == Class.SUCCESS
        refused = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: (peer, 5000)})
        assert refused.attributes[Attr.ERROR_CODE][0] == 403, refused
    finally:
        client.close()


def test_api_turn_names_the_family_the_client_used(dual: TurnProcess) -> None:
    over_v6 = dual.credentials("a", host=V6)["uris"]
    over_v4 = dual.credentials("b", host=V4)["uris"]
    assert over_v6[0] == f"turn:[::1]:{dual.turn_port}?transport=udp"
    assert all("[::1]" in uri for uri in over_v6), over_v6
    assert over_v4[0] == f"turn:127.0.0.1:{dual.turn_port}?transport=udp"
    assert all("127.0.0.1" in uri for uri in over_v4), over_v4
    assert any(uri.startswith("turns:") for uri in over_v6)


def test_api_turn_never_names_a_family_turn_does_not_listen_on(v4_only: TurnProcess) -> None:
    # HTTP answers over ::1, but TURN listens on IPv4 only: the URIs are IPv4 loopback.
    uris = v4_only.credentials("c", host=V6)["uris"]
    assert uris and all("127.0.0.1" in uri for uri in uris), uris
    with pytest.raises(OSError):
        with socket.create_connection((V6, v4_only.turn_port), timeout=2):
            pass


def test_default_config_listens_on_both_families(dual: TurnProcess) -> None:
    assert any("IPv6 and IPv4" in line for line in dual.lines), dual.lines[-20:]
    for host in (V4, V6):
        with socket.create_connection((host, dual.turn_port), timeout=5):
            pass
        with socket.create_connection((host, dual.port), timeout=5):
            pass


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("udp-ipv6-relay", ["-x"]),
        ("tcp-ipv6-relay", ["-t", "-x"]),
        ("udp-client-to-client-ipv6", ["-x", "-y"]),
    ],
)
def test_uclient_over_ipv6_with_ipv6_relays(
    dual: TurnProcess, udp_peer6: int, name: str, flags: list[str]
) -> None:
    peer = [] if "-y" in flags else ["-e", V6, "-r", str(udp_peer6)]
    assert_no_loss(uclient(dual, *flags, *peer, host=V6))


@pytest.mark.parametrize("peer_family", [4, 6])
def test_uclient_dual_allocation(
    dual: TurnProcess, udp_peer: int, udp_peer6: int, peer_family: int
) -> None:
    # -Z: a dual allocation (coturn sends the draft's ADDITIONAL-ADDRESS-FAMILY number), made
    # over IPv6; the peer of each family is reached from the relay of its family.
    peer = ["-e", V4, "-r", str(udp_peer)] if peer_family == 4 else ["-e", V6, "-r", str(udp_peer6)]
    assert_no_loss(uclient(dual, "-Z", *peer, host=V6))


def test_aioice_over_ipv6_reaches_an_ipv4_peer(dual: TurnProcess) -> None:
    """RFC 6156's case: a client with IPv6 (a phone on an IPv6-only carrier) relays to an
    IPv4 peer through the default IPv4 relay of an allocation it made over IPv6."""
    aioice_turn = require_module("aioice.turn", package="aioice")
    creds = dual.credentials("aioice6", host=V6)
    echo = Peer(V4)

    async def scenario() -> list[bytes]:
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received.put_nowait(data)

        transport, _protocol = await aioice_turn.create_turn_endpoint(
            Proto,
            server_addr=(V6, dual.turn_port),
            username=creds["username"],
            password=creds["password"],
            channel_refresh_time=60,
            lifetime=600,
        )
        loop = asyncio.get_running_loop()
        got = []
        try:
            relayed = transport.get_extra_info("sockname")
            assert relayed[0] == V4, relayed
            for i in range(5):
                transport.sendto(b"ping %d" % i, echo.address)
                data, addr = await loop.run_in_executor(None, echo.sock.recvfrom, 2048)
                echo.sock.sendto(b"echo:" + data, addr)
                got.append(await asyncio.wait_for(received.get(), 10))
        finally:
            transport.close()
        return got

    try:
        got = asyncio.run(scenario())
    finally:
        echo.close()
    assert got == [b"echo:ping %d" % i for i in range(5)]


@pytest.mark.parametrize("dual_stack", [True, False])
def test_listens_on_both_families_with_or_without_dual_stack_sockets(
    monkeypatch: pytest.MonkeyPatch, dual_stack: bool
) -> None:
    """Where the OS cannot make a dual-stack socket, :: is one socket per family on the same
    port; either way a client of each family is answered, with its own address."""
    import gevent.socket

    import flaskrtc.turn.server as turn_server
    from flaskrtc.turn.stun import parse
    from tests.unit.test_turn_core import make_core

    monkeypatch.setattr(turn_server, "dual_stack_supported", lambda: dual_stack)
    core, _ = make_core()
    server = turn_server.TurnServer(core)
    server.start(bind="::", port=0, tls_port=0, ssl_context=None)
    try:
        assert server.families == {4, 6}
        assert len(server.servers) == (2 if dual_stack else 4)  # UDP + TCP per socket
        assert server.udp_address is not None
        port = server.udp_address[1]
        for host in (V4, V6):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with gevent.socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(serialize(Message(Method.BINDING, Class.REQUEST)), (host, port))
                data, source = sock.recvfrom(2048)
            assert source[0] == host
            mapped = parse(data).attributes[Attr.XOR_MAPPED_ADDRESS]
            assert mapped[0] == host  # 127.0.0.1 itself, not ::ffff:127.0.0.1
            with gevent.socket.create_connection((host, port), timeout=5):
                pass
    finally:
        server.stop()
