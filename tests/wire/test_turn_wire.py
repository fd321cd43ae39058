"""The TURN server on real sockets, with clients nobody here wrote: coturn's turnutils_uclient
and turnutils_peer, and aioice's TURN client. Also: coturn accepts /api/turn's credentials.

Tests that need coturn's tools skip when they are missing, unless FLASKRTC_REQUIRE_INTEROP=1
(set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flaskrtc.turn.stun import Attr, Class, Message, Method, long_term_key, parse, serialize
from tests.conftest import ServerProcess, free_port, require_module, require_tool


class TurnProcess(ServerProcess):
    """flaskrtc with its TURN server on loopback; knows the TURN ports."""

    def __init__(
        self,
        workdir: Path,
        general: dict[str, str] | None = None,
        cluster: dict[str, str] | None = None,
        args: list[str] | None = None,
        metrics: dict[str, str] | None = None,
        **turn: str,
    ) -> None:
        extra = {
            "turn.bind": "127.0.0.1",
            "turn.port": "0",
            "turn.tls_port": str(free_port()),
            "turn.public_ip": "127.0.0.1",
            "turn.min_port": "40000",
            "turn.max_port": "60000",
        }
        extra.update({f"turn.{k}": v for k, v in turn.items()})
        extra.update({f"general.{k}": v for k, v in (general or {}).items()})
        extra.update({f"cluster.{k}": v for k, v in (cluster or {}).items()})
        extra.update({f"metrics.{k}": v for k, v in (metrics or {}).items()})
        extra["general.log_level"] = os.environ.get("FLASKRTC_TEST_LOG_LEVEL", "INFO")
        super().__init__(workdir, extra=extra, args=args)

    def credentials(self, user: str = "test", host: str = "127.0.0.1") -> dict[str, Any]:
        """/api/turn's answer, asked over ``host`` (an IP literal)."""
        base = self.base.replace("127.0.0.1", f"[{host}]" if ":" in host else host)
        url = f"{base}/api/turn?service=turn&username={user}"
        with urllib.request.urlopen(url, context=self.ssl_context(), timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    """A server whose policy lets loopback peers through (the test peers live there)."""
    proc = TurnProcess(tmp_path_factory.mktemp("turn"), allowed_peer_ip="127.0.0.1")
    yield proc
    proc.stop()


def uclient(
    server: ServerProcess,
    *args: str,
    port: int | None = None,
    secret: str = "test-secret",
    host: str = "127.0.0.1",
) -> str:
    """Run turnutils_uclient with REST credentials from the server's secret, against the
    TURN server at ``host``."""
    tool = require_tool("turnutils_uclient", package="coturn")
    cmd = [
        tool,
        "-W",
        secret,
        "-p",
        str(port or server.turn_port),
        "-n",
        "30",
        "-m",
        "2",
        "-l",
        "100",
        *args,
        host,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def assert_no_loss(output: str) -> None:
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    assert totals, output[-2000:]
    sent, received = map(int, totals[-1])
    assert sent > 0 and received == sent, output[-2000:]
    assert "Total lost packets 0 " in output, output[-2000:]


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("udp-peer", []),
        ("udp-peer-send-indications", ["-s"]),
        ("udp-client-to-client", ["-y"]),
        ("tcp-peer", ["-t"]),
        ("tcp-client-to-client", ["-t", "-y"]),
        ("tls-client-to-client", ["-t", "-S", "-y"]),
        ("tls-peer", ["-t", "-S"]),
    ],
)
def test_uclient_relays_without_loss(
    turn: TurnProcess, udp_peer: int, name: str, flags: list[str]
) -> None:
    port = turn.turn_tls_port if "-S" in flags else None
    peer_flags = [] if "-y" in flags else ["-e", "127.0.0.1", "-r", str(udp_peer)]
    assert_no_loss(uclient(turn, *flags, *peer_flags, port=port))


def test_aioice_turn_client_relays_to_udp_echo_peer(turn: TurnProcess) -> None:
    aioice_turn = require_module("aioice.turn", package="aioice")
    creds = turn.credentials("aioice")
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(10)
    echo_addr = echo.getsockname()

    async def scenario() -> list[bytes]:
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received.put_nowait(data)

        transport, _ = await aioice_turn.create_turn_endpoint(
            Proto,
            server_addr=("127.0.0.1", turn.turn_port),
            username=creds["username"],
            password=creds["password"],
            channel_refresh_time=60,
            lifetime=600,
        )
        loop = asyncio.get_running_loop()
        got = []
        try:
            for i in range(5):
                transport.sendto(b"ping %d" % i, echo_addr)
                data, addr = await loop.run_in_executor(None, echo.recvfrom, 2048)
                echo.sendto(b"echo:" + data, addr)
                got.append(await asyncio.wait_for(received.get(), 10))
        finally:
            transport.close()
        return got

    got = asyncio.run(scenario())
    echo.close()
    assert got == [b"echo:ping %d" % i for i in range(5)]


def stun_request(port: int, msg: Message) -> Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(serialize(msg), ("127.0.0.1", port))
        return parse(sock.recvfrom(65535)[0])


class RawTurn:
    """A minimal long-term-credential TURN client on one UDP socket or TCP stream (for
    negative tests); ``host`` is the server address it sends to."""

    def __init__(
        self,
        port: int,
        username: str,
        password: str,
        realm: str = "flutter-webrtc",
        *,
        host: str = "127.0.0.1",
        tcp: bool = False,
    ):
        self.server = (host, port)
        self.tcp = tcp
        if tcp:
            self.sock = socket.create_connection(self.server, timeout=5)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.settimeout(5)
        self.username = username
        self.key = long_term_key(username, realm, password)
        self.realm = ""
        self.nonce = ""
        self.last_source: tuple[str, int] | None = None  # where the last reply came from

    def _send(self, data: bytes) -> None:
        if self.tcp:
            self.sock.sendall(data)
        else:
            self.sock.sendto(data, self.server)

    def _recv(self) -> bytes:
        if self.tcp:
            header = self._read_exactly(20)
            length = int.from_bytes(header[2:4], "big")
            return header + self._read_exactly(length)
        data, self.last_source = self.sock.recvfrom(65535)
        return data

    def _read_exactly(self, size: int) -> bytes:
        buf = b""
        while len(buf) < size:
            chunk = self.sock.recv(size - len(buf))
            if not chunk:
                raise ConnectionError("TURN server closed the stream")
            buf += chunk
        return buf

    def recv_message(self) -> Message:
        """The next message from the server (a response or a Data indication)."""
        return parse(self._recv())

    def request(self, method: int, attrs: dict[int, Any]) -> Message:
        if not self.nonce:
            self._send(serialize(Message(method, Class.REQUEST, attributes=dict(attrs))))
            challenge = parse(self._recv())
            assert challenge.attributes[Attr.ERROR_CODE][0] == 401
            self.realm = challenge.attributes[Attr.REALM]
            self.nonce = challenge.attributes[Attr.NONCE]
        attributes = {
            **attrs,
            Attr.USERNAME: self.username,
            Attr.REALM: self.realm,
            Attr.NONCE: self.nonce,
        }
        signed = Message(method, Class.REQUEST, attributes=attributes)
        self._send(serialize(signed, integrity_key=self.key))
        return parse(self._recv())

    def close(self) -> None:
        self.sock.close()


def allocate_with(port: int, username: str, password: str) -> Message:
    """Allocate (401 challenge, then signed) and, if it worked, release the allocation."""
    client = RawTurn(port, username, password)
    try:
        reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        if reply.cls == Class.SUCCESS:
            client.request(Method.REFRESH, {Attr.LIFETIME: 0})
        return reply
    finally:
        client.close()


def test_binding_request_answered(turn: TurnProcess) -> None:
    reply = stun_request(turn.turn_port, Message(Method.BINDING, Class.REQUEST))
    assert reply.cls == Class.SUCCESS
    assert reply.attributes[Attr.XOR_MAPPED_ADDRESS][0] == "127.0.0.1"


def test_api_turn_credentials_work_and_bad_ones_get_401(turn: TurnProcess) -> None:
    creds = turn.credentials("wire")
    assert creds["uris"] == [
        f"turn:127.0.0.1:{turn.turn_port}?transport=udp",
        f"turn:127.0.0.1:{turn.turn_port}?transport=tcp",
        f"turns:127.0.0.1:{turn.turn_tls_port}?transport=tcp",
    ]
    reply = allocate_with(turn.turn_port, creds["username"], creds["password"])
    assert reply.cls == Class.SUCCESS, reply
    assert reply.attributes[Attr.XOR_RELAYED_ADDRESS][0] == "127.0.0.1"
    wrong = allocate_with(turn.turn_port, creds["username"], creds["password"][:-2] + "x=")
    assert wrong.attributes[Attr.ERROR_CODE][0] == 401
    expired_name = f"{int(time.time()) - 10}:wire"
    import base64
    import hashlib
    import hmac

    expired_pw = base64.b64encode(
        hmac.new(b"test-secret", expired_name.encode(), hashlib.sha1).digest()
    ).decode()
    expired = allocate_with(turn.turn_port, expired_name, expired_pw)
    assert expired.attributes[Attr.ERROR_CODE][0] == 401


def test_loopback_peers_denied_by_default(tmp_path: Path) -> None:
    srv = TurnProcess(tmp_path)  # no allowed_peer_ip: default policy
    try:
        creds = srv.credentials("deny")
        client = RawTurn(srv.turn_port, creds["username"], creds["password"])
        assert client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17}).cls == Class.SUCCESS
        for peer in (("127.0.0.1", 9), ("0.0.0.0", 9), ("169.254.169.254", 80)):
            reply = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: peer})
            assert reply.attributes[Attr.ERROR_CODE][0] == 403, peer
            reply = client.request(
                Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: peer}
            )
            assert reply.attributes[Attr.ERROR_CODE][0] == 403, peer
        # ...but another relay of this very server is always a permitted peer.
        other = RawTurn(srv.turn_port, creds["username"], creds["password"])
        relay = other.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        peer = relay.attributes[Attr.XOR_RELAYED_ADDRESS]
        ok = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: peer})
        assert ok.cls == Class.SUCCESS
        client.close()
        other.close()
    finally:
        srv.stop()


@contextlib.contextmanager
def coturn(tmp_path: Path, secret: str = "test-secret") -> Iterator[tuple[int, Path]]:
    """coturn's turnserver on 127.0.0.1 with use-auth-secret: its UDP/TCP port and log."""
    turnserver = require_tool("turnserver", package="coturn")
    port = free_port(socket.SOCK_DGRAM)
    log_path = tmp_path / "turnserver.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [
            turnserver,
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            "--min-port=61000",
            "--max-port=61100",
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            "--realm=flutter-webrtc",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            f"--pidfile={tmp_path / 'turn.pid'}",
            "--log-file=stdout",
        ],
        # Into a file, not a pipe nobody reads (a full pipe would block coturn).
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port, log_path
    finally:
        proc.terminate()
        proc.wait(10)
        log_file.close()


def allocate_when_up(port: int, creds: dict[str, Any], log_path: Path) -> Message:
    """Allocate at a coturn that may still be starting (bounded retries)."""
    deadline = time.monotonic() + 20
    reply = None
    while time.monotonic() < deadline:
        try:
            reply = allocate_with(port, creds["username"], creds["password"])
            break
        except (TimeoutError, ConnectionRefusedError):
            continue  # coturn still starting
    assert reply is not None and reply.cls == Class.SUCCESS, (
        reply,
        log_path.read_text(errors="replace")[-2000:],
    )
    return reply


def test_coturn_accepts_api_turn_credentials(turn: TurnProcess, tmp_path: Path) -> None:
    with coturn(tmp_path) as (port, log_path):
        allocate_when_up(port, turn.credentials("coturn-compat"), log_path)


def test_api_turn_lists_other_turn_servers_whose_credentials_work(tmp_path: Path) -> None:
    """[turn] servers: /api/turn names another TURN server sharing the secret (here coturn)
    after this one, and the same credential allocates on both."""
    with coturn(tmp_path) as (port, log_path):
        (tmp_path / "flaskrtc").mkdir()
        server = TurnProcess(tmp_path / "flaskrtc", servers=f"127.0.0.1:{port}")
        try:
            creds = server.credentials("two-servers")
            extra = [f"turn:127.0.0.1:{port}?transport=udp", f"turn:127.0.0.1:{port}?transport=tcp"]
            assert creds["uris"][0] == f"turn:127.0.0.1:{server.turn_port}?transport=udp"
            assert creds["uris"][-2:] == extra
            assert allocate_with(server.turn_port, creds["username"], creds["password"]).cls == (
                Class.SUCCESS
            )
            allocate_when_up(port, creds, log_path)
        finally:
            server.stop()
