"""A cluster over Redis ([cluster] redis_url): real redis-server, several flaskrtc processes.

Peers on different instances list, call, bye and leave each other as on one server
(../shared/PROTOCOL.md), an id moves between instances by takeover, a killed instance's peers
leave everywhere within 4 heartbeats, and with Redis down an instance refuses ``new`` but
keeps its own calls going, then resynchronises when Redis is back.
"""

from __future__ import annotations

import functools
import itertools
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis.connection
import websocket

from flaskrtc.signal.cluster import REFUSAL
from flaskrtc.signal.cluster_redis import connect
from tests.conftest import Client, RedisProcess, ServerProcess, require_tool

HEARTBEAT = 0.5
# A dead instance's peers leave within 3 heartbeats (its key's TTL) + 1 (the next beat).
BOUND = 4 * HEARTBEAT


def cluster_extra(url: str, **more: str) -> dict[str, str]:
    return {"cluster.redis_url": url, "cluster.heartbeat": str(HEARTBEAT), **more}


def ids(peers: list[dict[str, Any]]) -> list[str]:
    return [p["id"] for p in peers]


def expect_peer_set(client: Client, wanted: set[str], timeout: float = 15) -> list[str]:
    """Read peers lists until one holds exactly ``wanted`` (in any order); its ids."""
    deadline = time.monotonic() + timeout
    while True:
        msg = client.expect("peers", max(0.01, deadline - time.monotonic()))
        if set(ids(msg["data"])) == wanted:
            return ids(msg["data"])


def wait_keepalives(client: Client, count: int, timeout: float = 5) -> None:
    """Read until ``count`` more ``{}`` keepalives have come (other messages are dropped)."""
    deadline = time.monotonic() + timeout
    start = client.keepalives
    while client.keepalives - start < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{client.keepalives - start} keepalives in {timeout} s")
        try:
            client.recv(0.2)
        except websocket.WebSocketTimeoutException:
            pass


class Nodes(list[ServerProcess]):
    """The instances of a cluster, and the URL of their Redis."""

    url = ""


def in_redis(url: str, peer_id: str) -> bool:
    """Whether Redis holds ``peer_id`` in the cluster's registry."""
    conn = connect(url, timeout=5)
    try:
        conn.send_command("HEXISTS", "flaskrtc:peers", peer_id)
        return bool(conn.read_response())
    finally:
        conn.disconnect()


def join_in_order(nodes: Nodes, *joins: tuple[Client, str]) -> list[list[dict[str, Any]]]:
    """Register each (client, id) once Redis holds the one before (so the order is the
    test's, not a race's); the lists everyone finally holds."""
    want: list[str] = []
    done: list[Client] = []
    for client, peer_id in joins:
        client.register(peer_id)
        want.append(peer_id)
        done.append(client)
        until(functools.partial(in_redis, nodes.url, peer_id), 10, f"{peer_id} in Redis")
    return [c.expect_peers(want) for c in done]


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """One Redis and three instances (the first over TLS) for the tests that keep them up."""
    binary = require_tool("redis-server", package="redis-server")
    store = RedisProcess(tmp_path_factory.mktemp("redis"), binary)
    servers = Nodes()
    servers.url = store.url
    try:
        for n in range(3):
            workdir = tmp_path_factory.mktemp(f"node{n}")
            servers.append(ServerProcess(workdir, tls=n == 0, extra=cluster_extra(store.url)))
        yield servers
    finally:
        for server in servers:
            server.stop()
        store.stop()


@pytest.fixture
def pair(redis_server: RedisProcess, tmp_path: Path) -> Iterator[Nodes]:
    """Two plain-WS instances of the test's own, pinging every 0.3 s (idle clients stay)."""
    servers = Nodes()
    servers.url = redis_server.url
    extra = cluster_extra(
        redis_server.url, **{"general.keepalive": "0.3", "general.idle_timeout": "60"}
    )
    try:
        for n in range(2):
            (tmp_path / f"node{n}").mkdir()
            servers.append(ServerProcess(tmp_path / f"node{n}", tls=False, extra=extra))
        yield servers
    finally:
        for server in servers:
            server.stop()


# -- the redis-py connection is cooperative --------------------------------------------------


def _longest_gap(seconds: float) -> float:
    """Tick every 10 ms for ``seconds`` in a greenlet of its own; the longest time it could
    not run."""
    ticks: list[float] = []

    def ticker() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    gevent.spawn(ticker).join()
    return max(b - a for a, b in itertools.pairwise(ticks))


def test_subscriber_wait_does_not_stall_other_greenlets(redis_server: RedisProcess) -> None:
    sub = connect(redis_server.url, timeout=5, name="test-sub")
    sub.send_command("SUBSCRIBE", "chan")
    assert sub.read_response()[0] == b"subscribe"
    got: list[Any] = []
    # A subscriber waiting (for ever) for a message parks its greenlet only...
    reader = gevent.spawn(lambda: got.append(sub.read_response(timeout=None)))
    gevent.sleep(0)  # the reader is now blocked in its read
    gap = _longest_gap(0.6)
    assert gap < 0.2, f"other greenlets stalled {gap:.2f} s while the subscriber waited"
    assert not reader.dead and got == []
    # ... and gets what another greenlet's connection publishes meanwhile.
    pub = connect(redis_server.url, timeout=5)
    pub.send_command("PUBLISH", "chan", "hello")
    assert pub.read_response() == 1
    reader.join(5)
    assert got == [[b"message", b"chan", b"hello"]]
    # The control: redis-py's own connection (a blocking socket) stalls the whole process.
    stock = redis.connection.Connection(
        host="127.0.0.1", port=redis_server.port, socket_timeout=0.4, protocol=2
    )
    stock.connect()
    stock.send_command("SUBSCRIBE", "chan")
    stock.read_response()

    def blocking_read() -> None:
        try:
            stock.read_response()
        except redis.exceptions.TimeoutError:
            pass

    gevent.spawn_later(0.1, blocking_read)  # while the ticker runs
    assert _longest_gap(0.8) >= 0.35
    for conn in (sub, pub, stock):
        conn.disconnect()


def test_unix_socket_url(redis_server: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    argv = [redis_server.binary, "--port", "0", "--unixsocket", str(path), "--save", ""]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        until(path.exists, 10, "the Unix socket")
        conn = connect(f"unix://{path}", timeout=5)
        conn.send_command("PING")
        assert conn.read_response() == b"PONG"
        conn.disconnect()
    finally:
        proc.kill()
        proc.wait()


# -- three instances, one Redis --------------------------------------------------------------


def test_peers_listed_across_instances(trio: Nodes) -> None:
    clients = [server.connect() for server in trio]
    for n, client in enumerate(clients):
        client.register(f"list{n}", f"name{n}", f"ua{n}")
        until(functools.partial(in_redis, trio.url, f"list{n}"), 10, "registered")
    lists = [client.expect_peers(["list0", "list1", "list2"]) for client in clients]
    assert lists[0] == lists[1] == lists[2]  # one order on every instance
    assert lists[2][1] == {"id": "list1", "name": "name1", "user_agent": "ua1"}
    for client in clients:
        client.close()
    # Once they are all gone, nobody of theirs stays listed anywhere (no ghosts).
    watcher = trio[1].connect()
    watcher.register("list-watch")
    expect_peer_set(watcher, {"list-watch"})
    watcher.close()


def test_call_across_instances(trio: Nodes) -> None:
    alice, bob = trio[0].connect(), trio[2].connect()
    join_in_order(trio, (alice, "call-a"), (bob, "call-b"))
    offer = {
        "to": "call-b",
        "from": "forged",
        "session_id": "call-a-call-b",
        "media": "video",
        "description": {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 300},
        "extra": {"kept": [1, 2]},
    }
    alice.send("offer", offer)
    got = bob.expect("offer")["data"]
    assert got == {**offer, "from": "call-a"}
    bob.send("answer", {"to": "call-a", "session_id": "call-a-call-b", "description": {"sdp": "a"}})
    answer = alice.expect("answer")["data"]
    assert answer["from"] == "call-b" and answer["description"] == {"sdp": "a"}
    for n in range(20):  # relayed in order
        candidate = {"candidate": f"c{n}", "sdpMid": "0", "sdpMLineIndex": 0}
        alice.send("candidate", {"to": "call-b", "candidate": candidate})
    for n in range(20):
        got = bob.expect("candidate")["data"]
        assert got["candidate"]["candidate"] == f"c{n}" and got["from"] == "call-a"
    # An id registered nowhere is an error, as on one server.
    alice.send("offer", {"to": "nobody", "description": {}})
    assert alice.expect("error")["data"] == {
        "request": "offer",
        "reason": "peer 'nobody' is not registered",
    }
    # bye reaches both sides, each with its own id as "to".
    bob.send("bye", {"session_id": "call-a-call-b", "from": "call-b"})
    assert bob.expect("bye")["data"] == {"session_id": "call-a-call-b", "to": "call-b"}
    assert alice.expect("bye")["data"] == {"session_id": "call-a-call-b", "to": "call-a"}
    alice.close()
    bob.close()


def test_leave_and_disconnect_reach_other_instances(trio: Nodes) -> None:
    a, b, c = (server.connect() for server in trio)
    join_in_order(trio, (a, "lv-a"), (b, "lv-b"), (c, "lv-c"))
    b.send("leave", "lv-b")
    for client in (a, c):
        assert client.expect("leave")["data"] == "lv-b"
        client.expect_peers(["lv-a", "lv-c"])
    c.close()  # a disconnect
    assert a.expect("leave")["data"] == "lv-c"
    a.expect_peers(["lv-a"])
    # b, unregistered but connected, may register again and is listed last.
    b.register("lv-b")
    a.expect_peers(["lv-a", "lv-b"])
    a.send("keepalive", {"probe": 1})
    assert a.expect("keepalive")["data"] == {"probe": 1}  # no second leave came first
    a.close()
    b.close()


def test_takeover_across_instances(trio: Nodes) -> None:
    watcher, old, other = trio[2].connect(), trio[0].connect(), trio[2].connect()
    join_in_order(trio, (watcher, "to-watch"), (old, "to-x"), (other, "to-y"))
    new = trio[1].connect()
    new.register("to-x", "after")
    # The old connection (another instance) is told and closed with 4409.
    err = old.expect("error")
    assert err["data"] == {
        "request": "new",
        "reason": "id 'to-x' was taken over by a new connection",
    }
    old.ws.settimeout(10)
    opcode, frame = old.ws.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 4409
    # Everyone lists the id once, at the end; nobody got a leave for it.
    listed = watcher.expect_peers(["to-watch", "to-y", "to-x"])
    assert listed[2]["name"] == "after"
    new.expect_peers(["to-watch", "to-y", "to-x"])
    watcher.send("keepalive", {})
    while True:
        msg = watcher.recv()
        assert msg["type"] != "leave", msg
        if msg["type"] == "keepalive":
            break
    # Messages to the id now reach the new connection.
    watcher.send("offer", {"to": "to-x", "description": {"sdp": "s"}})
    assert new.expect("offer")["data"]["from"] == "to-watch"
    for client in (watcher, other, new):
        client.close()
    old.ws.close()


def test_takeover_race_leaves_one_holder(trio: Nodes) -> None:
    # Two instances register the same id at the same moment: exactly one connection keeps it.
    first, second = trio[0].connect(), trio[1].connect()
    watcher = trio[2].connect()
    join_in_order(trio, (watcher, "race-w"))
    for client in (first, second):
        client.ws.send(json.dumps({"type": "new", "data": {"id": "race-x"}}))
    watcher.expect_peers(["race-w", "race-x"])
    kicked = []
    for client in (first, second):
        client.ws.settimeout(3)
        try:
            while True:
                msg = client.recv(3)
                if msg["type"] == "error":
                    kicked.append(client)
                    break
        except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
            pass
    assert len(kicked) == 1
    keeper = second if kicked[0] is first else first
    watcher.send("offer", {"to": "race-x", "description": {}})
    assert keeper.expect("offer")["data"]["from"] == "race-w"
    for client in (first, second, watcher):
        client.close()


# -- instances that die, Redis that goes away -------------------------------------------------


def test_killed_instance_peers_leave_within_bound(pair: Nodes) -> None:
    a, b = pair[0].connect(), pair[1].connect()
    join_in_order(pair, (a, "kill-a"), (b, "kill-b"))
    pair[1].stop(signal.SIGKILL)
    killed = time.monotonic()
    assert a.expect("leave", timeout=BOUND + 5)["data"] == "kill-b"
    took = time.monotonic() - killed
    assert took <= BOUND + 0.5, f"leave after {took:.2f} s, bound {BOUND} s"
    a.expect_peers(["kill-a"], timeout=2)
    a.close()


def test_stopped_instance_peers_leave_at_once(pair: Nodes) -> None:
    a, b = pair[0].connect(), pair[1].connect()
    join_in_order(pair, (a, "term-a"), (b, "term-b"))
    stopped = time.monotonic()
    pair[1].stop(signal.SIGTERM)
    assert a.expect("leave", timeout=5)["data"] == "term-b"
    # A clean stop says goodbye: no waiting for the key to expire.
    assert time.monotonic() - stopped < 3 * HEARTBEAT + 2.5
    a.close()


def test_redis_down_then_back(redis_server: RedisProcess, pair: Nodes) -> None:
    one, two = pair
    a1, a2, b1 = one.connect(), one.connect(), two.connect()
    join_in_order(pair, (a1, "down-a1"), (a2, "down-a2"), (b1, "down-b1"))
    # While the subscriber waits, keepalives (every 0.3 s) go on.
    wait_keepalives(a1, 3)

    redis_server.stop(signal.SIGKILL)
    for server in pair:
        server.wait_for_log("cluster: Redis at .* lost")
    # A new registration gets a clear error...
    a3 = one.connect()
    a3.register("down-a3")
    assert a3.expect("error")["data"] == {"request": "new", "reason": REFUSAL}
    # ... while a call between peers of one instance goes on,
    a1.send("offer", {"to": "down-a2", "description": {"sdp": "local"}})
    assert a2.expect("offer")["data"]["from"] == "down-a1"
    a2.send("answer", {"to": "down-a1", "description": {"sdp": "back"}})
    assert a1.expect("answer")["data"]["description"] == {"sdp": "back"}
    # ... and one to another instance is an error (never silently lost).
    a1.send("candidate", {"to": "down-b1", "candidate": {}})
    assert a1.expect("error")["data"]["request"] == "candidate"
    wait_keepalives(a1, 2)

    # Redis back on the same port, empty: both instances reconnect and resynchronise.
    redis_server.start()
    for server in pair:
        server.wait_for_log("cluster: Redis at .* is back", timeout=15)
    want = {"down-a1", "down-a2", "down-b1"}
    lists = [expect_peer_set(client, want) for client in (a1, a2, b1)]
    assert lists[0] == lists[1] == lists[2]
    a3.register("down-a3")
    for client in (a1, a2, b1, a3):
        expect_peer_set(client, want | {"down-a3"})
    a1.send("offer", {"to": "down-b1", "description": {"sdp": "again"}})
    assert b1.expect("offer")["data"]["from"] == "down-a1"
    b1.send("bye", {"session_id": "down-a1-down-b1"})
    assert a1.expect("bye")["data"]["to"] == "down-a1"
    assert b1.expect("bye")["data"]["to"] == "down-b1"
    for client in (a1, a2, b1, a3):
        client.close()
