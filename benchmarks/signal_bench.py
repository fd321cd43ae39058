"""Signaling benchmark: offer forwarding between pairs, and a join storm.

Starts ``python -m flaskrtc`` (plain WS on 127.0.0.1, ephemeral port) and drives it from
this process with gevent and raw sockets. Prints its figures; asserts nothing. Run with
``make bench`` or ``.venv/bin/python benchmarks/signal_bench.py [--pairs 100] [--peers 1000]``.

(a) forwarding: P pairs ping-pong offer/answer for a fixed time; prints forwarded
    messages/s and one-way latency percentiles, beside a reference run through a bare
    gevent frame relay (no JSON, no hub) started in this same process.
(b) join storm: N peers connect, then send ``new`` evenly over ~5 s; a few of them measure
    keepalive echo round trips meanwhile. Prints when every peer held the complete list,
    the bytes the server sent, and what the naive broadcast-everything would have sent.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from procstats import cpu_seconds  # noqa: E402

from flaskrtc.signal.wsframe import (  # noqa: E402
    OP_TEXT,
    FrameDecoder,
    Message,
    accept_key,
    encode_frame,
    text_frame,
)

MASK = b"\x11\x22\x33\x44"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class Peer:
    """A raw WebSocket client: counts bytes, hands messages to a callback."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = "YmVuY2htYXJrLWtleQ=="
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("handshake failed")
            head += chunk
        status, _, rest = head.partition(b"\r\n")
        if b" 101 " not in status or accept_key(key).encode() not in rest:
            raise ConnectionError(status.decode())
        self.decoder = FrameDecoder(64 << 20, require_mask=False)
        self.received = len(head)
        self.leftover = rest.partition(b"\r\n\r\n")[2]

    def send(self, type_: str, data: Any) -> None:
        payload = json.dumps({"type": type_, "data": data}, separators=(",", ":")).encode()
        self.sock.sendall(encode_frame(OP_TEXT, payload, mask=MASK))

    def messages(self) -> Any:
        """Yield received message payloads (bytes) until EOF."""
        data = self.leftover
        while True:
            if data:
                for event in self.decoder.feed(data):
                    if isinstance(event, Message):
                        yield event.data
            data = self.sock.recv(262144)
            if not data:
                return
            self.received += len(data)


def drain(stream: Any) -> None:
    """Read and drop the server's log, so that it never blocks on a full pipe."""
    for _ in stream:
        pass


def start_server(workdir: Path, keepalive: float = 5.0) -> tuple[subprocess.Popen[str], int]:
    """Start flaskrtc without TLS on an ephemeral port; return the process and the port."""
    config = workdir / "config.ini"
    config.write_text(
        "[general]\nbind = 127.0.0.1\nport = 0\ntls = false\n"
        f"keepalive = {keepalive}\nhtml_root = {REPO / 'web'}\n"
        # Every client comes from 127.0.0.1: no per-IP rate limit or connection cap.
        "rate_limit = 0\nmax_connections_per_ip = 0\nmax_connections = 0\n"
        "[turn]\nsecret = bench\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "flaskrtc", "--config", str(config)],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        found = re.search(r"listening on https?://[^ ]+:(\d+)", line)
        if found:
            gevent.spawn(drain, proc.stdout)
            return proc, int(found.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("server did not start")


# -- (a) forwarding ---------------------------------------------------------------------


def bare_relay() -> tuple[StreamServer, int]:
    """Reference: accepts the same handshake and relays frames A→B, B→A with no parsing
    beyond the frame codec (the floor for a Python/gevent relay of WebSocket messages)."""
    partner: dict[str, Any] = {}

    def handle(sock: socket.socket, _addr: Any) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", head).group(1).decode()  # type: ignore[union-attr]
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
            ).encode()
        )
        decoder = FrameDecoder(1 << 20)
        first = True
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in decoder.feed(data):
                if not isinstance(event, Message):
                    continue
                if first:  # {"type":"new","data":{"id":"a<k>"}} pairs a<k> with b<k>
                    first = False
                    pid = json.loads(event.data)["data"]["id"]
                    partner[pid] = sock
                    continue
                target = event.data[event.data.index(b'"to":"') + 6 :].split(b'"', 1)[0]
                dest = partner.get(target.decode())
                if dest is not None:
                    dest.sendall(text_frame(event.data.decode()))

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    return server, server.server_port


def forwarding(port: int, pairs: int, seconds: float) -> dict[str, float]:
    """Ping-pong offers/answers between ``pairs`` pairs for ``seconds``."""
    latencies: list[float] = []
    count = [0]
    stop_at = [0.0]
    sdp = "v=0\r\n" + "a=x\r\n" * 300  # about 2 KB, a typical offer
    peers: list[tuple[Peer, Peer]] = []
    for k in range(pairs):
        a, b = Peer(port), Peer(port)
        a.send("new", {"id": f"a{k}"})
        b.send("new", {"id": f"b{k}"})
        peers.append((a, b))
    gevent.sleep(0.5)  # let registration settle; the run below is what is measured

    def side(me: Peer, my_id: str, other: str, starts: bool) -> None:
        if starts:
            me.send("offer", {"to": other, "t": time.perf_counter(), "description": {"sdp": sdp}})
        for raw in me.messages():
            if not raw.startswith(b'{"type":"offer"') and not raw.startswith(b'{"type":"answer"'):
                continue
            msg = json.loads(raw)
            now = time.perf_counter()
            latencies.append(now - msg["data"]["t"])
            count[0] += 1
            if now >= stop_at[0]:
                return
            kind = "answer" if msg["type"] == "offer" else "offer"
            me.send(kind, {"to": other, "t": time.perf_counter(), "description": {"sdp": sdp}})

    start = time.perf_counter()
    stop_at[0] = start + seconds
    jobs = []
    for k, (a, b) in enumerate(peers):
        jobs.append(gevent.spawn(side, a, f"a{k}", f"b{k}", True))
        jobs.append(gevent.spawn(side, b, f"b{k}", f"a{k}", False))
    gevent.joinall(jobs, timeout=seconds + 10)
    elapsed = time.perf_counter() - start
    gevent.killall(jobs)
    for a, b in peers:
        a.sock.close()
        b.sock.close()
    return {
        "msgs_per_s": count[0] / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "count": count[0],
    }


# -- (b) join storm ---------------------------------------------------------------------


def join_storm(port: int, n: int, spread: float, probes: int) -> dict[str, float]:
    """``n`` peers join evenly over ``spread`` seconds; see the module docstring."""
    peers = [Peer(port) for _ in range(n)]
    complete_at: list[float | None] = [None] * n
    rtts: list[float] = []
    storm_over = gevent.event.Event()
    last_lists: list[bytes] = [b""] * n

    def reader(i: int) -> None:
        for raw in peers[i].messages():
            if raw.startswith(b'{"type":"peers"'):
                last_lists[i] = raw
                # Counting entries with bytes.count keeps the client cheap; the last list
                # is parsed in full at the end.
                if raw.count(b'"id":') == n:
                    if complete_at[i] is None:
                        complete_at[i] = time.perf_counter()
                else:
                    complete_at[i] = None
            elif raw.startswith(b'{"type":"keepalive"'):
                rtts.append(time.perf_counter() - json.loads(raw)["data"]["t"])

    readers = [gevent.spawn(reader, i) for i in range(n)]

    def prober(i: int) -> None:
        while not storm_over.is_set():
            peers[i].send("keepalive", {"t": time.perf_counter()})
            storm_over.wait(0.05)

    probe_jobs = [gevent.spawn(prober, i) for i in range(probes)]
    start = time.perf_counter()
    for i in range(n):
        target = start + spread * i / n
        delay = target - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        peers[i].send("new", {"id": f"{100000 + i}", "name": f"peer {i}", "user_agent": "bench"})
    last_join = time.perf_counter()
    deadline = last_join + 30
    while time.perf_counter() < deadline and not all(complete_at):
        gevent.sleep(0.05)
    storm_over.set()
    gevent.joinall(probe_jobs, timeout=5)
    done = [t for t in complete_at if t is not None]
    complete = len(done) == n and all(len(json.loads(raw)["data"]) == n for raw in last_lists)
    received = sum(p.received for p in peers)
    final = json.loads(last_lists[0])["data"] if last_lists[0] else []
    # Naive: every join sends the list of i peers to i peers.
    entry_sizes = [len(json.dumps(e, separators=(",", ":"))) + 1 for e in final]
    naive = sum((i + 1) * (30 + sum(entry_sizes[: i + 1])) for i in range(len(entry_sizes)))
    gevent.killall(readers)
    for p in peers:
        p.sock.close()
    return {
        "joins_over_s": last_join - start,
        "complete": float(complete),
        "all_complete_after_last_join_s": (max(done) - last_join) if done else float("nan"),
        "sent_mb": received / 1e6,
        "naive_mb": naive / 1e6,
        "rtt_p50_ms": percentile(rtts, 50) * 1000,
        "rtt_p99_ms": percentile(rtts, 99) * 1000,
        "rtt_count": len(rtts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=5.0)
    parser.add_argument("--probes", type=int, default=10)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp))
        try:
            print(
                f"(a) offer/answer forwarding, {args.pairs} pairs, {args.seconds:.0f} s, ~2 KB SDP"
            )
            cpu0 = cpu_seconds(proc.pid)
            fwd = forwarding(port, args.pairs, args.seconds)
            cpu = cpu_seconds(proc.pid) - cpu0
            relay, relay_port = bare_relay()
            ref = forwarding(relay_port, args.pairs, args.seconds)
            relay.stop()
            print(
                f"    flaskrtc:   {fwd['msgs_per_s']:8.0f} msg/s  p50 {fwd['p50_ms']:6.2f} ms"
                f"  p99 {fwd['p99_ms']:6.2f} ms  server CPU {cpu / max(1, fwd['count']) * 1e6:.0f}"
                " µs/msg"
            )
            print(
                f"    bare relay: {ref['msgs_per_s']:8.0f} msg/s  p50 {ref['p50_ms']:6.2f} ms"
                f"  p99 {ref['p99_ms']:6.2f} ms  (reference, same process)"
            )
            print(
                "    ratio flaskrtc/bare relay throughput:"
                f" {fwd['msgs_per_s'] / ref['msgs_per_s']:.2f}"
            )
        finally:
            proc.terminate()
            proc.wait(10)
        proc, port = start_server(Path(tmp))
        try:
            print(
                f"(b) join storm, {args.peers} peers over {args.spread:.0f} s, "
                f"{args.probes} keepalive probes every 50 ms"
            )
            storm = join_storm(port, args.peers, args.spread, args.probes)
            print(
                f"    joins took {storm['joins_over_s']:.2f} s; every peer holds the complete list:"
                f" {'yes' if storm['complete'] else 'NO'},"
                f" {storm['all_complete_after_last_join_s']:.2f} s after the last join"
                " (target < 2 s)"
            )
            print(
                f"    server sent {storm['sent_mb']:.1f} MB (target < 500 MB); naive broadcast:"
                f" {storm['naive_mb']:.0f} MB; ratio {storm['sent_mb'] / storm['naive_mb']:.4f}"
            )
            print(
                f"    keepalive round trip during the storm: p50 {storm['rtt_p50_ms']:.1f} ms,"
                f" p99 {storm['rtt_p99_ms']:.1f} ms over {storm['rtt_count']:.0f} probes"
                " (target p99 < 100 ms)"
            )
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
