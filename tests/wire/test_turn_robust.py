"""Nothing a client sends crashes the TURN server, stalls a listener or leaks sockets.

100k garbage and mutated datagrams and a few hundred garbage TCP streams go to a real
server; it must still answer, log no traceback, and give back every socket once the
allocations are deleted or their TCP connections closed.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flaskrtc.turn.stun import (
    Attr,
    Class,
    Message,
    Method,
    encode_channel_data,
    long_term_key,
    next_frame_length,
    parse,
    serialize,
)
from tests.wire.test_turn_wire import RawTurn, TurnProcess


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    proc = TurnProcess(
        tmp_path_factory.mktemp("robust"), allowed_peer_ip="127.0.0.1", user_quota="0"
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
                sock.settimeout(1)
                sock.sendto(serialize(request), ("127.0.0.1", port))
                reply = parse(sock.recvfrom(65535)[0])
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


def valid_requests(turn: TurnProcess) -> list[bytes]:
    creds = turn.credentials("fuzz")
    key = long_term_key(creds["username"], "flutter-webrtc", creds["password"])
    base: dict[int, Any] = {
        Attr.USERNAME: creds["username"],
        Attr.REALM: "flutter-webrtc",
        Attr.NONCE: "00" * 16,
    }
    messages: list[tuple[int, dict[int, Any]]] = [
        (Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17, Attr.EVEN_PORT: True, **base}),
        (Method.REFRESH, {Attr.LIFETIME: 600, **base}),
        (Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: ("127.0.0.1", 9), **base}),
        (
            Method.CHANNEL_BIND,
            {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: ("::1", 9), **base},
        ),
        (Method.BINDING, {}),
    ]
    seeds = [
        serialize(
            Message(method, Class.REQUEST, attributes=attrs), integrity_key=key, fingerprint=True
        )
        for method, attrs in messages
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


def test_100k_garbage_datagrams_do_not_stop_the_udp_listener(turn: TurnProcess) -> None:
    rng = random.Random(20261128)
    seeds = valid_requests(turn)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    target = ("127.0.0.1", turn.turn_port)
    sent = 0
    for i, data in enumerate(mutations(rng, seeds, 100_000)):
        senders[i % len(senders)].sendto(data, target)
        sent += 1
        if i % 200 == 199:
            # Let the server catch up (a Binding answered comes after everything sent before
            # it), so the kernel's receive buffer never overflows and every datagram is read.
            assert poll(lambda: binding_answered(turn.turn_port)), f"no answer after {sent}"
    for sock in senders:
        sock.close()
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
