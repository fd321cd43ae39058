"""Issue 10's TURN holes, against a real ``python -m flaskrtc`` on 127.0.0.1: the own-relay
exception reaches relay sockets only, EVEN-PORT reservations are bounded, quotas hold per
user and per IP, unauthenticated replies are rate limited, and authentication failures are
logged in a format a fail2ban filter matches."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flaskrtc.turn.client import TurnClient
from flaskrtc.turn.stun import Attr, Class, Message, Method, encode_channel_data, parse, serialize
from tests.conftest import require_tool
from tests.wire.test_turn_wire import RawTurn, TurnProcess

# The fail2ban filter shipped in configs/fail2ban (the README shows it); the date is cut
# first, as fail2ban does.
FILTER = Path(__file__).resolve().parents[2] / "configs" / "fail2ban" / "flaskrtc-turn.conf"
FAILREGEX = next(
    line.split("=", 1)[1].strip()
    for line in FILTER.read_text().splitlines()
    if line.startswith("failregex")
)
# fail2ban's <ADDR> (IPv4 or IPv6) and its default date template, for lines read here.
ADDR = r"(?P<ip>(?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]*:[0-9a-fA-F:.]+)"
DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
FAILURE = re.compile(FAILREGEX.replace("<ADDR>", ADDR))


def poll(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def fail2ban_match(line: str) -> re.Match[str] | None:
    """What fail2ban does with a line: cut the date, then search the failregex."""
    found = DATE.match(line)
    if found is None:
        return None
    return FAILURE.search(line[found.end() :])


def allocate(client: RawTurn, **attrs: Any) -> Message:
    request: dict[int, Any] = {Attr.REQUESTED_TRANSPORT: 17}
    request.update((int(Attr[name]), value) for name, value in attrs.items())
    return client.request(Method.ALLOCATE, request)


@pytest.fixture(scope="module")
def default_policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    """Relays on 127.0.0.1 and the default peer policy: loopback is denied."""
    proc = TurnProcess(tmp_path_factory.mktemp("secure"))
    yield proc
    proc.stop()


def test_permission_to_another_relay_reaches_nothing_else_on_loopback(
    default_policy: TurnProcess,
) -> None:
    creds = default_policy.credentials("bypass")
    a = RawTurn(default_policy.turn_port, creds["username"], creds["password"])
    b = RawTurn(default_policy.turn_port, creds["username"], creds["password"])
    relay_a = allocate(a).attributes[Attr.XOR_RELAYED_ADDRESS]
    relay_b = allocate(b).attributes[Attr.XOR_RELAYED_ADDRESS]
    assert relay_a[0] == relay_b[0] == "127.0.0.1"
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a local service on loopback
    victim.bind(("127.0.0.1", 0))
    victim_address = victim.getsockname()
    try:
        reply = a.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay_b})
        assert reply.cls == Class.SUCCESS
        reply = b.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay_a})
        assert reply.cls == Class.SUCCESS
        bind: dict[int, Any] = {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: victim_address}
        assert a.request(Method.CHANNEL_BIND, bind).attributes[Attr.ERROR_CODE][0] == 403
        a._send(TurnClient.send_indication(victim_address, b"to the local service"))
        # Sent after it, from the same relay: once B has this, the other was handled too.
        a._send(TurnClient.send_indication(relay_b, b"to b"))
        assert b.recv_message().attributes[Attr.DATA] == b"to b"
        victim.setblocking(False)
        with pytest.raises(BlockingIOError):
            victim.recvfrom(65535)
        # Peer to client: the service's datagrams do not reach A either, B's do.
        victim.sendto(b"from the local service", relay_a)
        b._send(TurnClient.send_indication(relay_a, b"to a"))
        got = a.recv_message()
        assert got.attributes[Attr.DATA] == b"to a"
        assert got.attributes[Attr.XOR_PEER_ADDRESS] == relay_b
        # ChannelData relay to relay (the calls of the web demo and the NAT lab).
        bind = {Attr.CHANNEL_NUMBER: 0x4001, Attr.XOR_PEER_ADDRESS: relay_b}
        assert a.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS
        a._send(encode_channel_data(0x4001, b"media"))
        got = b.recv_message()
        assert got.attributes[Attr.DATA] == b"media" and got.attributes[Attr.XOR_PEER_ADDRESS] == (
            relay_a
        )
    finally:
        victim.close()
        a.close()
        b.close()


def test_relay_to_relay_after_the_other_relay_left_goes_nowhere(
    default_policy: TurnProcess,
) -> None:
    creds = default_policy.credentials("left")
    a = RawTurn(default_policy.turn_port, creds["username"], creds["password"])
    b = RawTurn(default_policy.turn_port, creds["username"], creds["password"])
    allocate(a)
    relay_b = allocate(b).attributes[Attr.XOR_RELAYED_ADDRESS]
    assert a.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay_b}).cls == (
        Class.SUCCESS
    )
    assert b.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
    # Whatever binds B's old port now (here: us) is no relay of the server's.
    # The server closes B's relay socket as it deletes the allocation; poll until it is free.
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def bound() -> bool:
        try:
            squatter.bind(tuple(relay_b))
        except OSError:
            return False
        return True

    try:
        assert poll(bound), f"B's old relay port {relay_b} never became free"
        a._send(TurnClient.send_indication(tuple(relay_b), b"to the squatter"))
        # A Refresh answered after it: the Send indication was handled by then.
        assert a.request(Method.REFRESH, {}).cls == Class.SUCCESS
        squatter.setblocking(False)
        # The server's relay sendto is synchronous on loopback: had it been sent, it is here.
        with pytest.raises(BlockingIOError):
            squatter.recvfrom(65535)
    finally:
        squatter.close()
        a.close()
        b.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_even_port_reservations_do_not_pile_up(tmp_path: Path) -> None:
    srv = TurnProcess(tmp_path, user_quota="2", ip_quota="0")
    try:
        creds = srv.credentials("evenport")
        client = RawTurn(srv.turn_port, creds["username"], creds["password"])
        assert allocate(client).cls == Class.SUCCESS  # the first relay: the reader is warm
        assert client.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
        baseline = open_fds(srv.proc.pid)
        for _ in range(30):
            reply = client.request(
                Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17, Attr.EVEN_PORT: True}
            )
            assert reply.cls == Class.SUCCESS and Attr.RESERVATION_TOKEN in reply.attributes
            assert client.request(Method.REFRESH, {Attr.LIFETIME: 0}).cls == Class.SUCCESS
        # Each reservation went with its allocation: no socket is left (they used to stay 30 s).
        assert poll(lambda: open_fds(srv.proc.pid) <= baseline, timeout=5), (
            open_fds(srv.proc.pid),
            baseline,
        )
        # The reservation counts in the quota: an R-bit allocation holds 2 of user_quota 2.
        reply = client.request(
            Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17, Attr.EVEN_PORT: True}
        )
        assert reply.cls == Class.SUCCESS
        fresh = srv.credentials("evenport")  # a fresh credential of the same user
        other = RawTurn(srv.turn_port, fresh["username"], fresh["password"])
        assert allocate(other).attributes[Attr.ERROR_CODE][0] == 486
        client.close()
        other.close()
    finally:
        srv.stop()


def test_quotas_per_user_across_credentials_and_per_client_ip(tmp_path: Path) -> None:
    srv = TurnProcess(tmp_path, user_quota="2", ip_quota="3")
    clients: list[RawTurn] = []
    try:

        def attempt(user: str) -> Message:
            creds = srv.credentials(user)  # a new /api/turn credential each time
            client = RawTurn(srv.turn_port, creds["username"], creds["password"])
            clients.append(client)
            return allocate(client)

        assert attempt("carol").cls == Class.SUCCESS
        time.sleep(1.05)  # the next credential's expiry (whole seconds) differs
        assert attempt("carol").cls == Class.SUCCESS
        assert attempt("carol").attributes[Attr.ERROR_CODE][0] == 486  # per user, not per name
        assert attempt("dave").cls == Class.SUCCESS  # 3 from 127.0.0.1
        assert attempt("erin").attributes[Attr.ERROR_CODE][0] == 486  # ip_quota 3
    finally:
        for client in clients:
            client.close()
        srv.stop()


def test_unauthenticated_replies_are_rate_limited_per_source_ip(tmp_path: Path) -> None:
    srv = TurnProcess(tmp_path, unauth_burst="5", unauth_rate="1")
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        b.bind(("127.0.0.2", 0))  # another source IP: its own bucket
        b.settimeout(5)
        target = ("127.0.0.1", srv.turn_port)
        requests = [
            Message(Method.BINDING, Class.REQUEST),
            Message(Method.ALLOCATE, Class.REQUEST, attributes={Attr.REQUESTED_TRANSPORT: 17}),
        ]
        for i in range(20):  # a 20-byte Binding or a 28-byte unauthenticated Allocate
            a.sendto(serialize(requests[i % 2]), target)
        b.sendto(serialize(requests[0]), target)
        # The server reads its one socket in order: when B is answered, A's 20 were handled.
        assert parse(b.recvfrom(65535)[0]).cls == Class.SUCCESS
        a.setblocking(False)
        replies = []
        while True:
            try:
                replies.append(parse(a.recvfrom(65535)[0]))
            except BlockingIOError:
                break
        assert len(replies) == 5  # the burst; the rest were dropped
        assert sum(len(serialize(r)) for r in replies) < 80 * 5
    finally:
        a.close()
        b.close()
        srv.stop()


def test_auth_failures_are_logged_for_fail2ban(default_policy: TurnProcess) -> None:
    creds = default_policy.credentials("f2b")
    before = len([line for line in default_policy.lines if "turn auth failure" in line])
    client = RawTurn(default_policy.turn_port, creds["username"], creds["password"][:-2] + "x=")
    reply = allocate(client)  # a 401 challenge (no failure), then a wrong password
    assert reply.attributes[Attr.ERROR_CODE][0] == 401
    port = client.sock.getsockname()[1]
    expected = (
        f'turn auth failure: client=127.0.0.1 port={port} transport=udp user="{creds["username"]}"'
        " reason=wrong-password"
    )
    default_policy.wait_for_log(re.escape(expected))
    stranger = RawTurn(default_policy.turn_port, "nobody", "pw")
    assert allocate(stranger).attributes[Attr.ERROR_CODE][0] == 401
    default_policy.wait_for_log(r'user="nobody" reason=unknown-user')
    lines = [line for line in default_policy.lines if "turn auth failure" in line][before:]
    assert len(lines) == 2, lines  # one line per failure; the challenges logged nothing
    for line in lines:
        found = fail2ban_match(line)
        assert found is not None, line
        assert found.group("ip") == "127.0.0.1"
        assert " WARNING " in line
    client.close()
    stranger.close()
    # The real fail2ban, reading the shipped filter file, matches both lines.
    regex_tool = require_tool("fail2ban-regex", package="fail2ban")
    log = default_policy.workdir / "failures.log"
    log.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [regex_tool, str(log), str(FILTER)], capture_output=True, text=True, timeout=60
    )
    assert "Failregex: 2 total" in done.stdout, done.stdout + done.stderr
    assert "2 matched, 0 missed" in done.stdout, done.stdout


def test_failregex_is_not_fooled_by_a_username() -> None:
    forged = (
        "2026-11-28 03:40:01 WARNING turn    turn auth failure: client=127.0.0.1 port=1 "
        'transport=udp user="x\\" reason=ok client=10.0.0.1" reason=unknown-user'
    )
    found = fail2ban_match(forged)
    assert found is not None and found.group("ip") == "127.0.0.1"
    v6 = (
        "2026-11-28 03:40:01 WARNING turn    turn auth failure: client=2001:db8::1 port=1 "
        'transport=tcp user="a" reason=wrong-password'
    )
    found = fail2ban_match(v6)
    assert found is not None and found.group("ip") == "2001:db8::1"
    assert fail2ban_match("2026-11-28 03:40:01 INFO  turn    something else") is None
