"""[general] workers = 2 on real sockets: two processes on the same ports (SO_REUSEPORT), a
parent that restarts a killed worker and stops them all on SIGTERM, and TURN relaying between
clients whose allocations live in different workers (each worker's relays are the other's
"own relays", known through the shared table)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flaskrtc.turn.client import TurnClient
from flaskrtc.turn.stun import Attr, Class, Method
from tests.conftest import RedisProcess, ServerProcess
from tests.wire.test_turn_wire import RawTurn, TurnProcess

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="workers > 1 need Linux (SO_REUSEPORT)"
)

SHARES = ((41000, 41499), (41500, 41999))  # the relay port share of worker 1 and of worker 2
STARTED = re.compile(r"worker (\d)/2 started \(pid (\d+)\)")


@pytest.fixture
def workers(tmp_path: Path, redis_server: RedisProcess) -> Iterator[TurnProcess]:
    """Two workers (the cluster on a redis-server of the test's own), TURN on 127.0.0.1;
    loopback peers are the host's own: denied unless they are relays of this server (no
    allowed_peer_ip)."""
    (tmp_path / "srv").mkdir()
    proc = TurnProcess(
        tmp_path / "srv",
        general={"workers": "2"},
        cluster={"redis_url": redis_server.url},
        min_port=str(SHARES[0][0]),
        max_port=str(SHARES[1][1]),
        tls_port="0",
    )
    for worker in (1, 2):
        proc.wait_for_log(rf"w{worker}/server  turn: listening on", timeout=20)
    yield proc
    proc.stop()


def worker_pids(proc: ServerProcess) -> dict[int, int]:
    """Worker number -> pid of its latest start, from the parent's log."""
    pids: dict[int, int] = {}
    for line in proc.lines:
        found = STARTED.search(line)
        if found:
            pids[int(found.group(1))] = int(found.group(2))
    return pids


def share_of(port: int) -> int:
    return next(i + 1 for i, (low, high) in enumerate(SHARES) if low <= port <= high)


def allocations_in_both_workers(proc: TurnProcess) -> dict[int, tuple[RawTurn, tuple[str, int]]]:
    """Allocate from new client sockets (the kernel hashes each to a worker) until each
    worker holds one; bounded."""
    found: dict[int, tuple[RawTurn, tuple[str, int]]] = {}
    for attempt in range(40):
        creds = proc.credentials(f"u{attempt}")
        client = RawTurn(proc.turn_port, creds["username"], creds["password"])
        reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert reply.cls == Class.SUCCESS, reply.attributes.get(Attr.ERROR_CODE)
        relay = reply.attributes[Attr.XOR_RELAYED_ADDRESS]
        worker = share_of(relay[1])
        if worker in found:
            # Released at once: the per-IP quota is shared out between the workers.
            client.request(Method.REFRESH, {Attr.LIFETIME: 0})
            client.close()
        else:
            found[worker] = (client, relay)
        if len(found) == 2:
            break
    assert len(found) == 2, "40 clients all hashed to one worker"
    return found


def relay_both_ways_between(
    a: RawTurn, relay_a: tuple[str, int], b: RawTurn, relay_b: tuple[str, int]
) -> None:
    """Each permits the other's relay, then a datagram goes relay to relay each way."""
    for client, other in ((a, relay_b), (b, relay_a)):
        reply = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: other})
        assert reply.cls == Class.SUCCESS, (other, reply.attributes.get(Attr.ERROR_CODE))
    for sender, receiver, source, target in ((a, b, relay_a, relay_b), (b, a, relay_b, relay_a)):
        sender._send(TurnClient.send_indication(target, b"across workers"))
        got = receiver.recv_message()
        assert got.method == Method.DATA, got
        assert got.attributes[Attr.DATA] == b"across workers"
        assert got.attributes[Attr.XOR_PEER_ADDRESS] == source


def test_clients_on_different_workers_relay_to_each_other(workers: TurnProcess) -> None:
    found = allocations_in_both_workers(workers)
    (a, relay_a), (b, relay_b) = found[1], found[2]
    try:
        # 127.0.0.1 is this host: a peer there is refused unless it is a relay of this server;
        # relay_b lives in the other worker, which the table says is live.
        relay_both_ways_between(a, relay_a, b, relay_b)
        host_port: dict[int, Any] = {Attr.XOR_PEER_ADDRESS: ("127.0.0.1", workers.port)}
        refused = a.request(Method.CREATE_PERMISSION, host_port)
        assert refused.attributes[Attr.ERROR_CODE][0] == 403  # the host's HTTPS port: no
    finally:
        a.close()
        b.close()


def clients_of_worker(proc: TurnProcess, worker: int, count: int) -> list[RawTurn]:
    """``count`` clients whose allocations are in ``worker`` (others released); bounded."""
    kept: list[RawTurn] = []
    for attempt in range(60):
        creds = proc.credentials(f"k{attempt}")
        client = RawTurn(proc.turn_port, creds["username"], creds["password"])
        reply = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert reply.cls == Class.SUCCESS, reply.attributes.get(Attr.ERROR_CODE)
        if share_of(reply.attributes[Attr.XOR_RELAYED_ADDRESS][1]) == worker:
            kept.append(client)
            if len(kept) == count:
                return kept
        else:
            client.request(Method.REFRESH, {Attr.LIFETIME: 0})
            client.close()
    pytest.fail(f"60 clients: fewer than {count} hashed to worker {worker}")


def test_a_killed_worker_is_replaced_and_serves_again(workers: TurnProcess) -> None:
    first = worker_pids(workers)
    assert set(first) == {1, 2}
    # Clients of worker 2 keep their worker while 1 dies and comes back: the parent holds
    # every worker's sockets, so the kernel's groups (and its spread) never change.
    survivors = clients_of_worker(workers, 2, 4)
    os.kill(first[1], signal.SIGKILL)
    workers.wait_for_log(r"worker 1/2 \(pid \d+\) exited with status -9", timeout=10)
    deadline = time.monotonic() + 20
    while worker_pids(workers)[1] == first[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    again = worker_pids(workers)
    assert again[1] != first[1] and again[2] == first[2]
    # The new worker 1 listens (its share of relays is handed out again) and relays to 2.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sum("w1/server  turn: listening on" in line for line in workers.lines) >= 2:
            break
        time.sleep(0.05)
    for client in survivors:
        refreshed = client.request(Method.REFRESH, {})
        assert refreshed.cls == Class.SUCCESS, refreshed.attributes.get(Attr.ERROR_CODE)
        client.close()
    found = allocations_in_both_workers(workers)
    (a, relay_a), (b, relay_b) = found[1], found[2]
    try:
        relay_both_ways_between(a, relay_a, b, relay_b)
    finally:
        a.close()
        b.close()


def test_sigterm_stops_the_parent_and_every_worker(workers: TurnProcess) -> None:
    pids = worker_pids(workers)
    assert workers.stop(signal.SIGTERM) == 0
    for pid in pids.values():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"worker pid {pid} outlived its parent")
    assert any("workers  stopped" in line for line in workers.lines)


def expect_peer_ids(client: Any, ids: set[str], timeout: float = 15) -> None:
    """Read ``peers`` lists until one holds exactly ``ids`` (in any order); bounded."""
    deadline = time.monotonic() + timeout
    last: set[str] = set()
    while time.monotonic() < deadline:
        msg = client.expect("peers", max(0.01, deadline - time.monotonic()))
        last = {peer["id"] for peer in msg["data"]}
        if last == ids:
            return
    pytest.fail(f"peers {sorted(last)}, wanted {sorted(ids)}")


def test_peers_on_every_worker_list_and_call_each_other(workers: TurnProcess) -> None:
    """The kernel spreads the WebSockets over both workers; through the cluster every peer
    lists every other and an offer reaches each, whichever worker holds it."""
    clients = [workers.connect() for _ in range(6)]
    ids = {f"w{n}" for n in range(6)}
    try:
        for n, client in enumerate(clients):
            client.register(f"w{n}")
        for client in clients:
            expect_peer_ids(client, ids)
        for n, client in enumerate(clients[1:], start=1):
            offer = {"to": f"w{n}", "session_id": f"w0-w{n}", "description": {"sdp": "x"}}
            clients[0].send("offer", offer)
            got = client.expect("offer")
            assert got["data"]["from"] == "w0" and got["data"]["session_id"] == f"w0-w{n}"
    finally:
        for client in clients:
            client.close()
