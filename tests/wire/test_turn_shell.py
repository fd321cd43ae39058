"""The TURN shell in this process, on real sockets on 127.0.0.1, with short timeouts and a
clock the test moves: TCP/TLS allocations live as long as their lifetime, not an idle timer;
ICMP errors for earlier sends do not end a relay's reader or the UDP listener."""

from __future__ import annotations

import errno
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket
import pytest

import flaskrtc.turn.server as turn_server
from flaskrtc.turn.addressing import RelayAddressing
from flaskrtc.turn.allocation import Allocation
from flaskrtc.turn.auth import Credentials, Nonces
from flaskrtc.turn.client import TurnClient
from flaskrtc.turn.core import Limits, TurnCore
from flaskrtc.turn.credentials import make_credential
from flaskrtc.turn.policy import PeerPolicy
from flaskrtc.turn.stun import Attr, Class, Message, Method, next_frame_length, parse, serialize
from tests.wire.test_turn_wire import RawTurn

REALM = "flutter-webrtc"
SECRET = "shell-secret"


class GeventTurn(RawTurn):
    """RawTurn on a gevent socket: the server runs in this process, on the same hub."""

    def __init__(self, port: int, *, tcp: bool = False) -> None:
        cred = make_credential(SECRET, "shell", now=time.time(), ttl=3600)
        super().__init__(port, cred.username, cred.password)
        self.sock.close()
        if tcp:
            self.tcp = True
            self.sock = gevent.socket.create_connection(self.server, timeout=5)
        else:
            self.sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.settimeout(5)

    def _recv(self) -> bytes:
        if not self.tcp:
            return super()._recv()
        buf = b""
        while True:
            size = next_frame_length(buf)
            if size is not None and len(buf) >= size:
                return buf[:size]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk


@dataclass
class Shell:
    server: turn_server.TurnServer
    core: TurnCore
    offset: list[float]  # seconds added to the real clock

    @property
    def port(self) -> int:
        assert self.server.udp_address is not None
        return self.server.udp_address[1]


@pytest.fixture
def shell() -> Iterator[Shell]:
    offset = [0.0]
    addressing = RelayAddressing(bind_v4="127.0.0.1", fallback_v4="127.0.0.1")
    ports = turn_server.UdpRelayPorts(addressing=addressing, min_port=40000, max_port=60000)
    core = TurnCore(
        ports=ports,
        credentials=Credentials(REALM, SECRET),
        nonces=Nonces(b"k" * 32),
        policy=PeerPolicy(allowed=["127.0.0.1"]),  # the test's peers live on loopback
        limits=Limits(unauth_rate=0),
    )
    server = turn_server.TurnServer(
        core,
        clock=lambda: time.time() + offset[0],
        stream_idle_timeout=0.3,
        sweep_interval=0.02,
    )
    ports.on_open = server.start_relay
    server.start(bind="127.0.0.1", port=0, tls_port=0, ssl_context=None)
    try:
        yield Shell(server, core, offset)
    finally:
        server.stop()


def poll(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Re-check ``condition`` (letting the server's greenlets run) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        gevent.sleep(0.01)
    return condition()


def closed(sock: Any) -> bool:
    """Whether the server has ended this stream (without waiting when it has not)."""
    try:
        with gevent.Timeout(0.01, False):
            return bool(sock.recv(1) == b"")
    except OSError:
        return True
    return False


def test_stream_allocation_outlives_the_idle_timeout_and_ends_with_its_lifetime(
    shell: Shell,
) -> None:
    a = GeventTurn(shell.port, tcp=True)
    reply = a.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    assert reply.cls == Class.SUCCESS and reply.attributes[Attr.LIFETIME] == 600
    # B sends its last bytes after A's and has no allocation: the idle limit (0.3 s) closes
    # it. Once it has, A has been quiet longer than that too.
    b = GeventTurn(shell.port, tcp=True)
    b._send(serialize(Message(Method.BINDING, Class.REQUEST)))
    assert parse(b._recv()).cls == Class.SUCCESS
    assert poll(lambda: closed(b.sock)), "a stream without allocation was not closed"
    assert not closed(a.sock)
    assert a.request(Method.REFRESH, {}).cls == Class.SUCCESS  # still served
    assert len(shell.core.allocations) == 1
    # The lifetime runs out (the clock jumps 601 s): the allocation and its stream end.
    shell.offset[0] += 601
    assert poll(lambda: len(shell.core.allocations) == 0)
    assert poll(lambda: closed(a.sock)), "the expired allocation's stream stayed open"
    a.close()
    b.close()


def test_stream_whose_allocation_was_deleted_is_idle_again(shell: Shell) -> None:
    a = GeventTurn(shell.port, tcp=True)
    assert a.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17}).cls == Class.SUCCESS
    assert a.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
    assert poll(lambda: closed(a.sock)), "a stream without allocation was kept open"
    a.close()


IP_RECVERR = getattr(socket, "IP_RECVERR", 11)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR is Linux's")
def test_relay_keeps_relaying_after_an_icmp_port_unreachable(shell: Shell) -> None:
    client = GeventTurn(shell.port)
    reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    relayed = reply.attributes[Attr.XOR_RELAYED_ADDRESS]
    allocation: Allocation = next(iter(shell.core.allocations))
    relay = allocation.relay
    assert isinstance(relay, turn_server.RelaySocket)
    # Windows reports ICMP port unreachable on any UDP socket (WSAECONNRESET, 10054); Linux
    # does so on an unconnected one with IP_RECVERR: the same error on the next recvfrom.
    relay.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    peer = gevent.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    gone = gevent.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    closed_port = gone.getsockname()[1]
    gone.close()
    assert (
        client.request(
            Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: ("127.0.0.1", closed_port)}
        ).cls
        == Class.SUCCESS
    )
    send = TurnClient.send_indication(("127.0.0.1", closed_port), b"to nobody")
    for _ in range(3):
        client._send(send)  # each comes back as an ICMP port unreachable
    # The server handled the sends before this answer: the errors are queued by now.
    assert client.request(Method.REFRESH, {}).cls == Class.SUCCESS
    peer.sendto(b"still relaying", relayed)
    indication = client.recv_message()
    assert indication.method == Method.DATA
    assert indication.attributes[Attr.DATA] == b"still relaying"
    assert relay.reader is not None and not relay.reader.dead
    peer.close()
    client.close()


class FailingSocket:
    """A listener socket whose reads fail as a Windows or Linux UDP socket's may."""

    def __init__(self, err: OSError) -> None:
        self.err = err
        self.family = socket.AF_INET

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        raise self.err

    def recvmsg(self, size: int, ancsize: int) -> Any:
        raise self.err


@pytest.mark.parametrize(
    "err",
    [
        OSError(errno.ECONNRESET, "Connection reset by peer"),
        OSError(10054, "An existing connection was forcibly closed by the remote host"),
        OSError(errno.ECONNREFUSED, "Connection refused"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
    ],
    ids=["ECONNRESET", "WSAECONNRESET", "ECONNREFUSED", "EHOSTUNREACH"],
)
def test_udp_listener_ignores_icmp_errors_for_earlier_sends(shell: Shell, err: OSError) -> None:
    listener = next(s for s in shell.server.servers if isinstance(s, turn_server._UdpListener))
    real = listener._socket
    listener._socket = FailingSocket(err)
    try:
        assert listener.do_read() is None  # nothing to handle; the loop reads on
    finally:
        listener._socket = real
    # And a real error still ends the read.
    listener._socket = FailingSocket(OSError(errno.EBADF, "Bad file descriptor"))
    try:
        with pytest.raises(OSError):
            listener.do_read()
    finally:
        listener._socket = real


def test_transient_errors() -> None:
    assert turn_server.transient(OSError(errno.ECONNREFUSED, "x"))
    assert turn_server.transient(OSError(10054, "x"))
    assert not turn_server.transient(OSError(errno.EBADF, "x"))
    windows = OSError(errno.EINVAL, "x")
    windows.winerror = 10054  # type: ignore[attr-defined]
    assert turn_server.transient(windows)


def udp_links(shell: Shell) -> int:
    [udp] = [s for s in shell.server.servers if isinstance(s, turn_server._UdpListener)]
    return len(udp._links)


def test_udp_links_live_only_as_long_as_an_allocation(shell: Shell) -> None:
    # The listener caches a link per client address for its allocation's sake. Probes and
    # ended allocations must not stay in it: a server that has seen many client ports (phones
    # on the move, or a spoofed flood) would hold one per address, forever.
    probes = [GeventTurn(shell.port) for _ in range(20)]
    for probe in probes:
        probe._send(serialize(Message(Method.BINDING, Class.REQUEST)))
        assert parse(probe._recv()).cls == Class.SUCCESS
        probe._send(serialize(Message(Method.ALLOCATE, Class.REQUEST)))  # no credentials: 401
        assert parse(probe._recv()).cls == Class.ERROR
    assert udp_links(shell) == 0
    a, b = GeventTurn(shell.port), GeventTurn(shell.port)
    for client in (a, b):
        ok = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert ok.cls == Class.SUCCESS
    assert udp_links(shell) == 2
    # Deleted by Refresh(0), and expired: both links go with their allocations.
    assert a.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
    assert poll(lambda: udp_links(shell) == 1), udp_links(shell)
    shell.offset[0] += 601
    assert poll(lambda: udp_links(shell) == 0), udp_links(shell)
    assert len(shell.core.allocations) == 0
    for client in (*probes, a, b):
        client.sock.close()
