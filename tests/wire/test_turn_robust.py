"""Nothing a client sends crashes the TURN server, stalls a listener or leaks sockets.

100k datagrams go to a real server: garbage, mutations, and requests signed with valid
credentials and the live nonce, with random attributes, so that every handler (Allocate,
Refresh, CreatePermission, ChannelBind, Send, ChannelData) runs, not just the 401/438 path;
the test counts the replies by method and class and checks each handler answered both
success and errors. A few hundred garbage TCP streams follow. The server must still answer,
log no traceback, and give back every socket once the allocations are deleted or their TCP
connections closed.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flaskrtc.turn.stun import (
    Attr,
    Class,
    Message,
    Method,
    StunError,
    encode_channel_data,
    long_term_key,
    next_frame_length,
    parse,
    serialize,
)
from tests.wire.test_turn_wire import RawTurn, TurnProcess


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    # Every datagram comes from 127.0.0.1: no quota or unauthenticated reply limit in the way.
    proc = TurnProcess(
        tmp_path_factory.mktemp("robust"),
        allowed_peer_ip="127.0.0.1",
        user_quota="0",
        ip_quota="0",
        unauth_rate="0",
    )
    yield proc
    proc.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def poll(condition: Callable[[], bool], timeout: float = 20) -> bool:
    """Re-check ``condition`` until it holds or ``timeout`` passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def binding_answered(port: int, transport: int = socket.SOCK_DGRAM) -> bool:
    request = Message(Method.BINDING, Class.REQUEST)
    try:
        if transport == socket.SOCK_DGRAM:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                # The fuzzed Send indications name random peer ports on 127.0.0.1 (permissions
                # are per IP), so a relayed datagram can land on this ephemeral port: only the
                # answer from the TURN port itself, with our transaction id, counts.
                sock.settimeout(1)
                server = ("127.0.0.1", port)
                sock.sendto(serialize(request), server)
                while True:
                    data, source = sock.recvfrom(65535)
                    if source != server or data[:1] >= b"\x40":  # relayed data, ChannelData
                        continue
                    reply = parse(data)
                    if reply.transaction_id == request.transaction_id:
                        break
        else:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(serialize(request))
                reply = parse(read_frame(sock))
    except OSError:
        return False
    return reply.cls == Class.SUCCESS and reply.transaction_id == request.transaction_id


def read_frame(sock: socket.socket) -> bytes:
    buf = b""
    while True:
        size = next_frame_length(buf)
        if size is not None and len(buf) >= size:
            return buf[:size]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def mutations(rng: random.Random, seeds: list[bytes], count: int) -> Iterator[bytes]:
    """Random bytes, truncations, bit flips, splices and ChannelData with random channels."""
    for _ in range(count):
        kind = rng.randrange(6)
        seed = rng.choice(seeds)
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 200))
        elif kind == 1:
            yield seed[: rng.randrange(len(seed))]
        elif kind == 2:
            data = bytearray(seed)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield bytes(data)
        elif kind == 3:
            yield seed[:20] + rng.randbytes(rng.randrange(0, 100))
        elif kind == 4:
            yield encode_channel_data(
                rng.randrange(0x4000, 0x8000), rng.randbytes(rng.randrange(64))
            )
        else:
            data = bytearray(seed)
            cut = rng.randrange(len(data))
            yield bytes(data[:cut] + rng.randbytes(4) + data[cut:])


class Signer:
    """Signs requests with valid credentials and the nonce the server handed out (live for
    10 minutes, and bound to 127.0.0.1, where every sender is)."""

    def __init__(self, turn: TurnProcess) -> None:
        creds = turn.credentials("fuzz")
        self.username = creds["username"]
        self.key = long_term_key(self.username, "flutter-webrtc", creds["password"])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            request = Message(Method.ALLOCATE, Class.REQUEST)
            sock.sendto(serialize(request), ("127.0.0.1", turn.turn_port))
            challenge = parse(sock.recvfrom(65535)[0])
        assert challenge.attributes[Attr.ERROR_CODE][0] == 401
        self.nonce: str = challenge.attributes[Attr.NONCE]

    def sign(self, method: int, attrs: dict[int, Any], fingerprint: bool = False) -> bytes:
        attributes = {
            **attrs,
            Attr.USERNAME: self.username,
            Attr.REALM: "flutter-webrtc",
            Attr.NONCE: self.nonce,
        }
        msg = Message(method, Class.REQUEST, attributes=attributes)
        return serialize(msg, integrity_key=self.key, fingerprint=fingerprint)


class Requests:
    """Well-formed, validly signed requests with random attributes; peers are on loopback only
    (the sinks, the relays seen so far, denied loopback addresses), so nothing leaves."""

    def __init__(self, rng: random.Random, signer: Signer, sinks: list[tuple[str, int]]) -> None:
        self.rng = rng
        self.signer = signer
        self.sinks = sinks
        self.relays: list[tuple[str, int]] = []
        self.tokens: list[bytes] = [b"\0" * 8]

    def peer(self) -> tuple[str, int]:
        rng = self.rng
        pick = rng.randrange(10)
        if pick < 5:
            return rng.choice(self.sinks)
        if pick < 8 and self.relays:
            return rng.choice(self.relays)
        return rng.choice([("127.0.0.2", 9), ("::1", 9), ("0.0.0.0", 9), ("127.0.0.1", 9)])

    def next(self) -> bytes:
        rng, sign = self.rng, self.signer.sign
        kind = rng.randrange(16)
        fingerprint = rng.random() < 0.3
        if kind < 3:
            attrs: dict[int, Any] = {}
            transport = rng.choice([17, 17, 17, 17, 6, None])
            if transport is not None:
                attrs[Attr.REQUESTED_TRANSPORT] = transport
            if rng.random() < 0.3:
                attrs[Attr.EVEN_PORT] = rng.random() < 0.5
            if rng.random() < 0.1:
                attrs[Attr.RESERVATION_TOKEN] = rng.choice(self.tokens)
            if rng.random() < 0.1:
                attrs[Attr.REQUESTED_ADDRESS_FAMILY] = rng.choice([1, 2, 3])
            if rng.random() < 0.05:
                attrs[Attr.DONT_FRAGMENT] = True
            if rng.random() < 0.2:
                attrs[Attr.LIFETIME] = rng.choice([0, 1, 600, 3600, 100000])
            return sign(Method.ALLOCATE, attrs, fingerprint)
        if kind < 5:
            attrs = {}
            if rng.random() < 0.7:
                attrs[Attr.LIFETIME] = rng.choice([0, 0, 300, 600, 5000])
            if rng.random() < 0.1:
                attrs[Attr.REQUESTED_ADDRESS_FAMILY] = rng.choice([1, 2])
            return sign(Method.REFRESH, attrs, fingerprint)
        if kind < 8:
            peers = [self.peer() for _ in range(rng.choice([1, 1, 2, 3]))]
            msg = Message(Method.CREATE_PERMISSION, Class.REQUEST)
            msg.attributes[Attr.XOR_PEER_ADDRESS] = peers[0]
            msg.repeated = [(Attr.XOR_PEER_ADDRESS, p) for p in peers[1:]]
            msg.attributes.update(
                {
                    Attr.USERNAME: self.signer.username,
                    Attr.REALM: "flutter-webrtc",
                    Attr.NONCE: self.signer.nonce,
                }
            )
            return serialize(msg, integrity_key=self.signer.key, fingerprint=fingerprint)
        if kind < 11:
            number = rng.choice([0x3FFF, 0x4000, 0x4001, 0x4002, 0x4003, 0x7FFF, 0x8000])
            attrs = {Attr.CHANNEL_NUMBER: number, Attr.XOR_PEER_ADDRESS: self.peer()}
            if rng.random() < 0.05:
                del attrs[Attr.XOR_PEER_ADDRESS]
            return sign(Method.CHANNEL_BIND, attrs, fingerprint)
        if kind < 12:
            return sign(rng.choice([Method.CONNECT, 0x0FF, Method.DATA]), {}, fingerprint)
        if kind < 13:
            return serialize(Message(Method.BINDING, Class.REQUEST), fingerprint=fingerprint)
        if kind < 15:
            attrs = {Attr.XOR_PEER_ADDRESS: self.peer(), Attr.DATA: rng.randbytes(20)}
            return serialize(Message(Method.SEND, Class.INDICATION, attributes=attrs))
        return encode_channel_data(rng.choice([0x4000, 0x4001, 0x4002]), rng.randbytes(20))

    def learn(self, reply: Message) -> None:
        """Remember relays and tokens the server handed out, to use them as peers."""
        relayed = reply.attributes.get(Attr.XOR_RELAYED_ADDRESS)
        if relayed is not None and relayed not in self.relays:
            self.relays = [*self.relays[-15:], relayed]
        token = reply.attributes.get(Attr.RESERVATION_TOKEN)
        if token is not None:
            self.tokens = [*self.tokens[-7:], token]


def valid_requests(turn: TurnProcess) -> list[bytes]:
    """One validly signed (live nonce) request per method, and a Send indication: seeds."""
    signer = Signer(turn)
    seeds = [
        signer.sign(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17, Attr.EVEN_PORT: True}, True),
        signer.sign(Method.REFRESH, {Attr.LIFETIME: 600}, True),
        signer.sign(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: ("127.0.0.1", 9)}, True),
        signer.sign(
            Method.CHANNEL_BIND,
            {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: ("::1", 9)},
            True,
        ),
        serialize(Message(Method.BINDING, Class.REQUEST), fingerprint=True),
    ]
    seeds.append(
        serialize(
            Message(
                Method.SEND,
                Class.INDICATION,
                attributes={Attr.XOR_PEER_ADDRESS: ("127.0.0.1", 9), Attr.DATA: b"x" * 40},
            )
        )
    )
    return seeds


def outcome(data: bytes) -> str:
    """``METHOD class`` (``error NNN``) of what the server sent a client."""
    if data and data[0] & 0xC0 == 0x40:
        return "ChannelData"
    try:
        msg = parse(data)
    except StunError:
        return "unparseable"
    try:
        name = Method(msg.method).name
    except ValueError:
        name = f"{msg.method:#05x}"
    if msg.cls == Class.ERROR:
        return f"{name} error {msg.attributes[Attr.ERROR_CODE][0]}"
    return f"{name} {Class(msg.cls).name.lower()}"


def drain(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            yield sock.recv(65535)
        except BlockingIOError:
            return


def test_100k_datagrams_reach_every_handler_and_do_not_stop_the_udp_listener(
    turn: TurnProcess,
) -> None:
    rng = random.Random(20261128)
    seeds = valid_requests(turn)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
    requests = Requests(rng, Signer(turn), [sink.getsockname() for sink in sinks])
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for sender in senders:
        sender.setblocking(False)
    target = ("127.0.0.1", turn.turn_port)
    counts: Counter[str] = Counter()
    garbage = mutations(rng, seeds, 100_000)
    relayed = 0
    for i in range(100_000):
        pick = rng.randrange(3)
        if pick == 0:
            data = next(garbage)
        else:
            data = requests.next()
            if pick == 2 and rng.random() < 0.3:  # a valid request, mutated: mostly 401 or 400
                data = next(mutations(rng, [data], 1))
        senders[i % len(senders)].sendto(data, target)
        if i % 200 == 199:
            # Let the server catch up (a Binding answered comes after everything sent before
            # it), so the kernel's receive buffer never overflows and every datagram is read.
            assert poll(lambda: binding_answered(turn.turn_port)), f"no answer after {i + 1}"
            for sender in senders:
                for reply in drain(sender):
                    counts[outcome(reply)] += 1
                    try:
                        requests.learn(parse(reply))
                    except StunError:
                        pass
            for sink in sinks:
                relayed += sum(1 for _ in drain(sink))
    for sock in senders + sinks:
        sock.close()
    print(f"\nreplies by method and class ({sum(counts.values())} in all):")
    for name, count in sorted(counts.items()):
        print(f"  {name:40} {count:6}")
    print(f"  datagrams relayed to the loopback sinks: {relayed}")
    for method in ("ALLOCATE", "REFRESH", "CREATE_PERMISSION", "CHANNEL_BIND"):
        assert counts[f"{method} success"] > 0, (method, counts)
        assert any(k.startswith(f"{method} error") for k in counts), (method, counts)
    for expected in (
        "ALLOCATE error 437",  # a second Allocate on one five-tuple
        "ALLOCATE error 508",  # an unknown reservation token
        "CREATE_PERMISSION error 403",  # denied loopback peers
        "CHANNEL_BIND error 400",  # out-of-range numbers
        "CONNECT error 400",  # an unknown authenticated method
        "BINDING success",
    ):
        assert counts[expected] > 0, (expected, counts)
    assert relayed > 0  # Send indications and ChannelData reached their peers
    assert poll(lambda: binding_answered(turn.turn_port))
    assert not [line for line in turn.lines if "Traceback" in line or "ERROR" in line]


def test_garbage_tcp_streams_are_closed_and_tcp_keeps_working(turn: TurnProcess) -> None:
    rng = random.Random(7)
    seeds = valid_requests(turn)
    for data in mutations(rng, seeds, 300):
        with socket.create_connection(("127.0.0.1", turn.turn_port), timeout=5) as sock:
            try:
                sock.sendall(data * rng.randrange(1, 4))
            except OSError:
                pass  # the server may hang up on garbage mid-send
    # A stream whose length field promises more than ever arrives is fine too.
    staller = socket.create_connection(("127.0.0.1", turn.turn_port), timeout=5)
    staller.sendall(seeds[0][:30])
    assert poll(lambda: binding_answered(turn.turn_port, socket.SOCK_STREAM))
    staller.close()
    assert not [line for line in turn.lines if "Traceback" in line or "ERROR" in line]


@pytest.mark.parametrize(
    "opening",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
    ids=["http", "tls-client-hello"],
)
def test_stream_that_does_not_open_with_stun_is_closed_at_once(
    turn: TurnProcess, opening: bytes
) -> None:
    """Not the 60 s idle timeout: the first 8 bytes show it is not TURN."""
    with socket.create_connection(("127.0.0.1", turn.turn_port), timeout=5) as sock:
        sock.sendall(opening)
        # Closed by the server with nothing to say; before the fix this recv timed out.
        assert sock.recv(1) == b""


class TcpTurn(RawTurn):
    """RawTurn over a TCP connection (responses framed with next_frame_length)."""

    def __init__(self, port: int, username: str, password: str) -> None:
        super().__init__(port, username, password)
        self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        return read_frame(self.sock)


def test_sockets_return_to_baseline_after_deletes_and_closes(turn: TurnProcess) -> None:
    pid = turn.proc.pid
    assert poll(lambda: binding_answered(turn.turn_port))
    baseline = open_fds(pid)
    creds = turn.credentials("fds")
    udp = [RawTurn(turn.turn_port, creds["username"], creds["password"]) for _ in range(20)]
    for client in udp:
        reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert reply.cls == Class.SUCCESS
    tcp = [TcpTurn(turn.turn_port, creds["username"], creds["password"]) for _ in range(5)]
    for client in tcp:
        reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert reply.cls == Class.SUCCESS
    assert open_fds(pid) >= baseline + 20 + 5 * 2  # relays, plus TCP connection and relay
    for client in udp:
        assert client.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
        client.close()
    for client in tcp:
        client.sock.close()  # RFC 8656: closing the connection deletes its allocation
    assert poll(lambda: open_fds(pid) <= baseline), (open_fds(pid), baseline)
