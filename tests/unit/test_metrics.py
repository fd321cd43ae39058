"""flaskrtc/metrics.py: the collector reads the servers' counts at scrape time, readiness
names what is down, the registry is private, and /metrics is guarded (Flask test client)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flaskrtc.app import create_app
from flaskrtc.config import load_config
from flaskrtc.metrics import Monitor
from flaskrtc.signal.cluster import DOWN
from flaskrtc.signal.hub import Hub, SignalStats
from flaskrtc.signal.server import SignalServer
from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.server import ClientLink, TurnServer
from flaskrtc.turn.stun import Attr, Class, Method
from tests.unit.test_turn_core import CLIENT, NOW, PEER, Client, error, make_core

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(monitor: Monitor) -> Samples:
    """Every sample of the exposition, by name and sorted labels."""
    text = monitor.exposition().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def signal_server() -> SignalServer:
    return SignalServer(keepalive=60, max_message_size=1 << 20)


def msg(type_: str, data: Any) -> bytes:
    return json.dumps({"type": type_, "data": data}).encode()


def test_signaling_counts_by_type_direction_and_error_kind() -> None:
    signal = signal_server()
    monitor = Monitor(signal)
    hub = signal.hub
    hub.receive("a", msg("new", {"id": "A", "name": "a", "user_agent": "t"}), 0.0)
    hub.receive("b", msg("new", {"id": "B", "name": "b", "user_agent": "t"}), 10.0)
    hub.receive("a", msg("offer", {"to": "B", "description": {"sdp": "x"}}), 10.1)
    hub.receive("b", msg("answer", {"to": "A", "description": {"sdp": "y"}}), 10.2)
    hub.receive("a", msg("candidate", {"to": "C", "candidate": {}}), 10.3)  # no such peer
    hub.receive("c", msg("offer", {"to": "A", "description": {}}), 10.3)  # not registered
    hub.receive("a", b"not json", 10.4)
    hub.receive("a", msg("bye", {"session_id": "A-B"}), 10.5)
    signal.stats.slow_dropped += 1  # as the shell counts one
    samples = scrape(monitor)
    counts = {
        (labels[1][1], labels[0][1]): v
        for (name, labels), v in samples.items()
        if name == "flaskrtc_signal_messages_total"
    }
    assert counts[("new", "in")] == 2
    assert counts[("offer", "in")] == 2 and counts[("offer", "out")] == 1
    assert counts[("answer", "in")] == 1 and counts[("answer", "out")] == 1
    assert counts[("candidate", "in")] == 1 and counts[("candidate", "out")] == 0
    assert counts[("invalid", "in")] == 1
    assert counts[("bye", "in")] == 1 and counts[("bye", "out")] == 2  # to both sides
    # A's list, then B's: B's join 10 s later is broadcast to both at once.
    assert counts[("peers", "out")] == 3
    assert counts[("error", "out")] == 3
    errors = {
        labels[0][1]: v
        for (name, labels), v in samples.items()
        if name == "flaskrtc_signal_protocol_errors_total"
    }
    assert errors["unknown_peer"] == 1 and errors["not_registered"] == 1
    assert errors["malformed"] == 1 and sum(errors.values()) == 3
    assert value(samples, "flaskrtc_signal_peers") == 2
    assert value(samples, "flaskrtc_ws_slow_consumers_dropped_total") == 1
    hub.disconnect("a", 11.0)
    samples = scrape(monitor)
    assert value(samples, "flaskrtc_signal_peers") == 1
    assert value(samples, "flaskrtc_signal_messages_total", type="leave", direction="out") == 1


@dataclass
class Sent:
    datagrams: list[tuple[bytes, Any]] = field(default_factory=list)

    def sendto(self, data: bytes, address: Any) -> None:
        self.datagrams.append((data, address))


def test_turn_counts_allocations_refusals_expiry_and_relayed_bytes() -> None:
    core, ports = make_core(user_quota=1)
    turn = TurnServer(core)
    monitor = Monitor(signal_server())
    monitor.turn = turn
    alice = Client(core)
    assert error(alice.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17}, key=b"x" * 16))
    assert alice.allocate().cls == Class.SUCCESS
    again = Client(core, FiveTuple("tcp", ("198.51.100.7", 40001), ("0.0.0.0", 3478)))
    assert error(again.allocate()) == 486  # user_quota = 1
    bind = {Attr.CHANNEL_NUMBER: 0x4000, Attr.XOR_PEER_ADDRESS: PEER}
    assert alice.request(Method.CHANNEL_BIND, bind).cls == Class.SUCCESS
    samples = scrape(monitor)
    assert value(samples, "flaskrtc_turn_allocations", transport="udp") == 1
    assert value(samples, "flaskrtc_turn_allocations", transport="tcp") == 0
    assert value(samples, "flaskrtc_turn_permissions") == 1
    assert value(samples, "flaskrtc_turn_channels") == 1
    assert value(samples, "flaskrtc_turn_allocations_created_total") == 1
    # The unsigned first request's 401 challenge is not a refusal; the wrong key's 401 is.
    assert value(samples, "flaskrtc_turn_allocations_refused_total", code="401") == 1
    assert value(samples, "flaskrtc_turn_allocations_refused_total", code="486") == 1
    assert value(samples, "flaskrtc_turn_allocations_refused_total", code="508") == 0

    # The shell's ChannelData fast path counts the payload that left the relay.
    relay = ports.open_ports[50000]
    relay.raw = Sent()
    link = ClientLink(CLIENT, Sent(), stream=False, counts=turn.relayed["udp"])
    turn.client_input(struct.pack("!HH", 0x4000, 5) + b"hello" + b"\0\0\0", link)
    turn.client_input(struct.pack("!HH", 0x4001, 2) + b"no", link)  # no such channel
    assert relay.raw.datagrams == [(b"hello", PEER)]
    samples = scrape(monitor)
    labels = {"transport": "udp", "direction": "client-to-peer"}
    assert value(samples, "flaskrtc_turn_relayed_bytes_total", **labels) == 5
    assert value(samples, "flaskrtc_turn_relayed_packets_total", **labels) == 1
    assert (
        value(samples, "flaskrtc_turn_relayed_packets_total", **{**labels, "transport": "tcp"}) == 0
    )
    assert monitor.snapshot()["relayed_bytes"] == {"client_to_peer": 5, "peer_to_client": 0}

    core.expire(NOW + 3600)
    samples = scrape(monitor)
    assert value(samples, "flaskrtc_turn_allocations_expired_total") == 1
    assert value(samples, "flaskrtc_turn_allocations", transport="udp") == 0


def test_process_metrics_and_a_private_registry() -> None:
    first, second = Monitor(signal_server()), Monitor(signal_server())
    assert first.registry() is not second.registry()
    samples = scrape(first)
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert ("process_cpu_seconds_total", ()) in samples
    assert value(samples, "flaskrtc_info", version=__import__("flaskrtc").__version__, worker="1/1")
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("flaskrtc") for name in global_names)


class FakeServer:
    def __init__(self, started: bool = True) -> None:
        self.started = started


@dataclass
class FakeCore:
    state: str


@dataclass
class FakeCluster:
    core: FakeCore
    where: str = "redis://127.0.0.1:1/0"


def test_readiness_names_what_is_down() -> None:
    signal = signal_server()
    monitor = Monitor(signal, cluster_required=True)
    assert monitor.readiness() == {
        "http": "down: not listening",
        "websocket": "down: not listening",
        "turn": "down: not listening",
        "cluster": "down: not started",
    }
    monitor.http = FakeServer()
    turn = TurnServer(make_core()[0])
    turn.servers = [FakeServer(), FakeServer()]
    monitor.turn = turn
    monitor.cluster = FakeCluster(FakeCore("up"))
    assert set(monitor.readiness().values()) == {"up"}
    assert monitor.snapshot()["ready"] is True
    monitor.cluster.core.state = DOWN
    assert monitor.readiness()["cluster"] == "down: Redis at redis://127.0.0.1:1/0 does not answer"
    turn.servers[1].started = False
    signal.stopping = True
    checks = monitor.readiness()
    assert checks["turn"].startswith("down") and checks["websocket"] == "down: shutting down"
    assert checks["http"] == "up"
    snapshot = monitor.snapshot()
    assert snapshot["ready"] is False
    assert json.loads(json.dumps(snapshot)) == snapshot  # JSON-able as it is
    assert snapshot["allocations"] == {"udp": 0, "tcp": 0, "tls": 0}


def app_for(monitor_settings: dict[str, str]) -> Any:
    config = load_config(None, {}, {"turn.secret": "s" * 20, **monitor_settings})
    signal = signal_server()
    monitor = Monitor(signal)
    monitor.http = FakeServer()
    app = create_app(config, signal, monitor=monitor)
    return app.test_client(), monitor


def test_metrics_is_404_unless_enabled_and_health_is_always_served() -> None:
    client, _ = app_for({})
    assert client.get("/metrics").status_code == 404
    health = client.get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert health.status_code == 200 and health.get_json()["status"] == "ok"
    ready = client.get("/readyz", environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert ready.status_code == 503  # no TURN server attached
    assert ready.get_json()["down"] == ["turn"]
    assert ready.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("settings", "address", "headers", "status"),
    [
        ({}, "127.0.0.1", {}, 200),
        ({}, "::1", {}, 200),
        ({}, "::ffff:127.0.0.1", {}, 200),
        ({}, "192.0.2.1", {}, 403),
        ({"metrics.allow": "10.0.0.0/8"}, "127.0.0.1", {}, 403),
        ({"metrics.allow": "10.0.0.0/8"}, "10.9.8.7", {}, 200),
        ({"metrics.allow": ""}, "198.51.100.1", {}, 200),
        ({"metrics.token": "t" * 16}, "127.0.0.1", {}, 401),
        ({"metrics.token": "t" * 16}, "127.0.0.1", {"Authorization": "Bearer " + "u" * 16}, 401),
        ({"metrics.token": "t" * 16}, "127.0.0.1", {"Authorization": "Basic " + "t" * 16}, 401),
        ({"metrics.token": "t" * 16}, "127.0.0.1", {"Authorization": "Bearer " + "t" * 16}, 200),
        ({"metrics.token": "t" * 16}, "192.0.2.1", {"Authorization": "Bearer " + "t" * 16}, 403),
    ],
)
def test_metrics_access(
    settings: dict[str, str], address: str, headers: dict[str, str], status: int
) -> None:
    client, _ = app_for({"metrics.enabled": "true", **settings})
    reply = client.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": address})
    assert reply.status_code == status
    if status == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 200:
        assert reply.content_type.startswith("text/plain; version=0.0.4")
        assert b"flaskrtc_ws_connections 0.0" in reply.data


def test_api_turn_counts_the_credentials_it_issues() -> None:
    client, monitor = app_for({})
    assert client.get("/api/turn?service=turn&username=u").status_code == 200
    assert client.get("/api/turn?service=nope").status_code == 400
    assert client.get("/api/turn?service=turn&username=v").status_code == 200
    assert monitor.credentials_issued == 2


def test_every_signaling_count_starts_at_zero_and_counts_each_message_once() -> None:
    stats = SignalStats()
    assert stats.ws_opened == 0 and stats.slow_dropped == 0
    assert set(stats.received.values()) == set(stats.sent.values()) == {0}
    assert set(stats.errors.values()) == {0}
    hub = Hub()
    hub.receive("a", msg("keepalive", {"n": 1}), 0.0)
    hub.receive("a", msg("new", {"id": "A", "name": "a", "user_agent": "t"}), 0.0)
    # B joins within A's interval: B gets the list at once, A with the deferred broadcast.
    hub.receive("b", msg("new", {"id": "B", "name": "b", "user_agent": "t"}), 0.0001)
    assert hub.next_deadline() is not None
    hub.poll(1.0)
    hub.receive("b", msg("leave", {}), 2.0)
    hub.receive("b", msg("leave", {}), 2.1)  # no longer registered: an error
    hub.receive("a", msg("bye", {"session_id": "A-B"}), 2.2)  # B is gone: bye to A, error
    hub.receive("a", msg("bye", {"session_id": "X-Y"}), 2.3)  # not A's session
    hub.poll(10.0)
    received = {k: v for k, v in hub.stats.received.items() if v}
    sent = {k: v for k, v in hub.stats.sent.items() if v}
    errors = {k: v for k, v in hub.stats.errors.items() if v}
    assert received == {"keepalive": 1, "new": 2, "leave": 2, "bye": 2}
    assert sent == {"keepalive": 1, "peers": 4, "leave": 1, "bye": 1, "error": 3}
    assert errors == {"not_registered": 1, "unknown_peer": 1, "bad_session": 1}
    assert hub.peer_count() == hub.listed_count() == 1
