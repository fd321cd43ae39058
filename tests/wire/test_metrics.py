"""/healthz, /readyz and /metrics on a real ``python -m flaskrtc``: a signaling call and TURN
relaying over UDP and TCP move the counters by exactly what they did; /metrics is 404 when
off, 403 from an address not allowed, 401 without the token; /readyz names a stopped Redis;
each worker answers for itself."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flaskrtc.turn.stun import Attr, Class, Method
from tests.conftest import RedisProcess, ServerProcess
from tests.wire.test_turn_wire import RawTurn, TurnProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TOKEN = "metrics-token-0123456789"


def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> Any:
    """``(status, headers, body)`` of a GET of ``path`` on a fresh connection."""
    request = urllib.request.Request(server.base + path, headers=headers or {})
    context = server.ssl_context() if server.tls else None
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def scrape(server: ServerProcess, token: str = TOKEN) -> Samples:
    status, _, body = get(server, "/metrics", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def delta(before: Samples, after: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The flaskrtc samples that changed, and by how much."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key[0].startswith("flaskrtc_") and after[key] != before.get(key, 0.0)
    }


def poll(check: Any, timeout: float = 10.0) -> Any:
    """``check()`` until it returns a true value (then that value), else fail at the end."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {timeout} s: {check}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    """TURN and signaling with /metrics on (loopback and a token); loopback peers allowed."""
    proc = TurnProcess(
        tmp_path_factory.mktemp("metered"),
        allowed_peer_ip="127.0.0.1",
        user_quota="2",
        general={"rate_limit": "0"},
        metrics={"enabled": "true", "token": TOKEN},
    )
    yield proc
    proc.stop()


def m(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def msgs(type_: str, direction: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return m("flaskrtc_signal_messages_total", type=type_, direction=direction)


def test_a_signaling_call_moves_the_counters_by_exactly_its_messages(
    metered: TurnProcess,
) -> None:
    before = scrape(metered)
    a, b = metered.connect(), metered.connect()
    a.register("metric-a")
    a.expect_peers(["metric-a"])
    b.register("metric-b")
    a.expect_peers(["metric-a", "metric-b"])
    b.expect_peers(["metric-a", "metric-b"])
    a.send("offer", {"to": "metric-b", "description": {"type": "offer", "sdp": "o"}})
    b.expect("offer")
    b.send("answer", {"to": "metric-a", "description": {"type": "answer", "sdp": "a"}})
    a.expect("answer")
    a.send("candidate", {"to": "nobody", "candidate": {"candidate": "c"}})
    a.expect("error")
    a.send("bye", {"session_id": "metric-a-metric-b"})
    a.expect("bye")
    b.expect("bye")
    during = scrape(metered)
    assert value(during, "flaskrtc_ws_connections") == value(before, "flaskrtc_ws_connections") + 2
    assert value(during, "flaskrtc_signal_peers") == value(before, "flaskrtc_signal_peers") + 2
    assert delta(before, during) == {
        m("flaskrtc_ws_connections"): 2,
        m("flaskrtc_ws_connections_opened_total"): 2,
        m("flaskrtc_signal_peers"): 2,
        msgs("new", "in"): 2,
        msgs("offer", "in"): 1,
        msgs("answer", "in"): 1,
        msgs("candidate", "in"): 1,
        msgs("bye", "in"): 1,
        msgs("offer", "out"): 1,
        msgs("answer", "out"): 1,
        msgs("bye", "out"): 2,
        msgs("error", "out"): 1,
        # a's own list, then both lists of two (at once, or b's at once and a's deferred).
        msgs("peers", "out"): 3,
        m("flaskrtc_signal_protocol_errors_total", kind="unknown_peer"): 1,
    }
    a.close()
    b.expect("leave")
    b.expect_peers(["metric-b"])
    b.close()
    after = poll(
        lambda: (
            (s := scrape(metered))[m("flaskrtc_ws_connections")]
            == before[m("flaskrtc_ws_connections")]
            and s
        )
    )
    assert delta(during, after) == {
        m("flaskrtc_ws_connections"): -2,
        m("flaskrtc_signal_peers"): -2,
        msgs("leave", "out"): 1,
        msgs("peers", "out"): 1,
    }


def channel_data(channel: int, payload: bytes, pad: bool) -> bytes:
    frame = struct.pack("!HH", channel, len(payload)) + payload
    return frame + b"\0" * (-len(frame) % 4 if pad else 0)


def allocate_and_bind(proc: TurnProcess, creds: dict[str, Any], peer: Any, tcp: bool) -> RawTurn:
    client = RawTurn(proc.turn_port, creds["username"], creds["password"], tcp=tcp)
    reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    assert reply.cls == Class.SUCCESS, reply.attributes.get(Attr.ERROR_CODE)
    bind: dict[int, Any] = {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: peer}
    assert client.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS
    client.relay = reply.attributes[Attr.XOR_RELAYED_ADDRESS]  # type: ignore[attr-defined]
    return client


def relay_both_ways(client: RawTurn, peer: socket.socket, up: bytes, down: bytes) -> None:
    """``up`` from the client to the peer through the relay, ``down`` back."""
    client._send(channel_data(0x4000, up, client.tcp))
    data, source = peer.recvfrom(65535)
    assert data == up and source == tuple(client.relay)  # type: ignore[attr-defined]
    peer.sendto(down, source)
    if client.tcp:
        head = client._read_exactly(4)
        length = struct.unpack("!HH", head)[1]
        body = client._read_exactly(length + (-length % 4))[:length]
    else:
        frame, _ = client.sock.recvfrom(65535)
        head, body = frame[:4], frame[4:]
    assert struct.unpack("!HH", head)[0] == 0x4000 and body == down


def test_turn_relaying_over_udp_and_tcp_moves_the_counters_by_exactly_its_traffic(
    metered: TurnProcess,
) -> None:
    before = scrape(metered)
    creds = metered.credentials("metrics")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    udp = allocate_and_bind(metered, creds, peer.getsockname(), tcp=False)
    tcp = allocate_and_bind(metered, creds, peer.getsockname(), tcp=True)
    relay_both_ways(udp, peer, b"u" * 100, b"d" * 30)
    relay_both_ways(udp, peer, b"u" * 20, b"d" * 7)
    relay_both_ways(tcp, peer, b"t" * 5, b"r" * 1000)  # 5 is padded to 8 on the stream
    # Refused: a third allocation of the same user (user_quota 2), and a wrong password.
    third = RawTurn(metered.turn_port, creds["username"], creds["password"])
    reply = third.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    assert reply.attributes[Attr.ERROR_CODE][0] == 486
    wrong = RawTurn(metered.turn_port, creds["username"], "not-the-password")
    reply = wrong.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    assert reply.attributes[Attr.ERROR_CODE][0] == 401
    during = scrape(metered)
    relayed = "flaskrtc_turn_relayed_bytes_total"
    packets = "flaskrtc_turn_relayed_packets_total"
    assert delta(before, during) == {
        m("flaskrtc_turn_credentials_issued_total"): 1,
        m("flaskrtc_turn_allocations", transport="udp"): 1,
        m("flaskrtc_turn_allocations", transport="tcp"): 1,
        m("flaskrtc_turn_permissions"): 2,
        m("flaskrtc_turn_channels"): 2,
        m("flaskrtc_turn_allocations_created_total"): 2,
        m("flaskrtc_turn_allocations_refused_total", code="486"): 1,
        m("flaskrtc_turn_allocations_refused_total", code="401"): 1,
        m(relayed, transport="udp", direction="client-to-peer"): 120,
        m(relayed, transport="udp", direction="peer-to-client"): 37,
        m(packets, transport="udp", direction="client-to-peer"): 2,
        m(packets, transport="udp", direction="peer-to-client"): 2,
        m(relayed, transport="tcp", direction="client-to-peer"): 5,
        m(relayed, transport="tcp", direction="peer-to-client"): 1000,
        m(packets, transport="tcp", direction="client-to-peer"): 1,
        m(packets, transport="tcp", direction="peer-to-client"): 1,
    }
    udp.request(Method.REFRESH, {Attr.LIFETIME: 0})
    for client in (udp, tcp, third, wrong):
        client.close()
    peer.close()
    # The TCP allocation ends with its connection; no expiry: both were ended by the client.
    after = poll(
        lambda: (
            (s := scrape(metered))[m("flaskrtc_turn_allocations", transport="tcp")]
            == before[m("flaskrtc_turn_allocations", transport="tcp")]
            and s
        )
    )
    assert value(after, "flaskrtc_turn_allocations", transport="udp") == value(
        before, "flaskrtc_turn_allocations", transport="udp"
    )
    assert value(after, "flaskrtc_turn_allocations_expired_total") == value(
        before, "flaskrtc_turn_allocations_expired_total"
    )
    assert value(after, "process_open_fds") > 0 and value(after, "process_cpu_seconds_total") > 0


def test_metrics_needs_the_bearer_token(metered: TurnProcess) -> None:
    status, headers, _ = get(metered, "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, headers, _ = get(metered, "/metrics", {"Authorization": "Bearer wrong-token-xxxxxxxx"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, headers, body = get(metered, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE flaskrtc_turn_relayed_bytes_total counter" in body


def test_metrics_is_404_when_off_and_health_answers(server: ServerProcess) -> None:
    assert get(server, "/metrics")[0] == 404
    status, _, body = get(server, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = get(server, "/readyz")
    assert status == 200, body
    assert json.loads(body) == {
        "status": "ready",
        "down": [],
        "checks": {"http": "up", "websocket": "up", "turn": "up"},
        "worker": "1/1",
    }


def test_metrics_refuses_an_address_not_allowed(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, extra={"metrics.enabled": "true", "metrics.allow": "10.0.0.0/8"})
    try:
        status, _, body = get(proc, "/metrics")
        assert status == 403 and b"not allowed" in body
        assert get(proc, "/healthz")[0] == 200 and get(proc, "/readyz")[0] == 200
    finally:
        proc.stop()


def test_readyz_names_the_cluster_while_redis_is_stopped(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    proc = ServerProcess(tmp_path, extra={"cluster.redis_url": redis_server.url})
    try:
        poll(lambda: get(proc, "/readyz")[0] == 200)
        redis_server.stop()
        _, _, body = poll(lambda: (r := get(proc, "/readyz"))[0] == 503 and r)
        answer = json.loads(body)
        assert answer["down"] == ["cluster"] and answer["status"] == "unavailable"
        assert answer["checks"]["cluster"].startswith("down: Redis at redis://127.0.0.1:")
        assert get(proc, "/healthz")[0] == 200  # the process itself still answers
        redis_server.start()
        poll(lambda: get(proc, "/readyz")[0] == 200, timeout=20)  # reconnects with backoff
    finally:
        proc.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers need Linux")
def test_each_worker_answers_for_itself(tmp_path: Path, redis_server: RedisProcess) -> None:
    proc = TurnProcess(
        tmp_path,
        general={"workers": "2"},
        cluster={"redis_url": redis_server.url},
        tls_port="0",
        metrics={"enabled": "true"},
    )
    try:
        for worker in (1, 2):
            proc.wait_for_log(rf"w{worker}/server  turn: listening on", timeout=20)
        seen: set[str] = set()

        def both() -> bool:
            # Each request is a new connection: the kernel hashes it to one worker.
            samples = scrape(proc)
            seen.update(labels[1][1] for name, labels in samples if name == "flaskrtc_info")
            seen.add(json.loads(get(proc, "/healthz")[2])["worker"])
            return seen == {"1/2", "2/2"}

        poll(both, timeout=20)
    finally:
        proc.stop()
