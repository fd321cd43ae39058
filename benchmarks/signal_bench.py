"""Signaling benchmark: offer forwarding between pairs, and a join storm, over TLS and plain.

Starts ``python -m flaskrtc`` on 127.0.0.1 (an ephemeral port; over TLS with the self-signed
certificate it generates, as by default, and over plain WS) and drives it from this process
with gevent and raw sockets. Prints its figures; asserts nothing. Run with ``make bench`` or
``.venv/bin/python benchmarks/signal_bench.py [--transport tls] [--pairs 100] [--peers 1000]``.

(a) forwarding: P pairs ping-pong offer/answer (a browser-like SDP of --sdp-bytes) for a
    fixed time; prints forwarded messages/s, one-way latency percentiles and the server's
    CPU per forwarded message (counted while they ping-pong, not while they connect),
    beside a reference run through a bare gevent frame relay (no JSON, no hub, a sendall per
    message from the reading greenlet, TLS with the same certificate when the run is over
    TLS) started by this run as a process of its own, so that its CPU is measured the same
    way.
(b) join storm: N peers connect, then send ``new`` evenly over ~5 s; the first few of them
    run in a process of their own and measure keepalive echo round trips meanwhile (and for
    1 s before the storm, as the idle reference), so that the figure is the server's delay
    and not this process's, busy reading a thousand peers' lists. Prints when every peer
    held the complete list, the bytes the server sent (WebSocket bytes, before TLS), what
    the naive broadcast-everything would have sent, and the server's CPU and memory.

``--server-src DIR`` runs the flaskrtc of another source tree (e.g. an export of the last
commit) with the same clients, for before/after figures on the same machine.
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
import ssl  # noqa: E402
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
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    Message,
    Ping,
    accept_key,
    encode_frame,
    text_frame,
)

MASK = b"\x11\x22\x33\x44"
RELAY_RE = re.compile(r"relay listening on (\d+)")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM) of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Target:
    """Where the clients connect: a port, and the TLS context if the server speaks TLS."""

    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        self.port = port
        self.tls = tls


class Peer:
    """A raw WebSocket client: counts bytes, hands messages to a callback."""

    def __init__(self, target: Target) -> None:
        sock = socket.create_connection(("127.0.0.1", target.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.tls is not None:
            sock = target.tls.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        key = "YmVuY2htYXJrLWtleQ=="
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nUpgrade: websocket\r\n"
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
        """Yield received message payloads (bytes) until EOF; answer PINGs (the server drops a
        client it hears nothing from for three keepalive periods)."""
        data = self.leftover
        while True:
            if data:
                for event in self.decoder.feed(data):
                    if isinstance(event, Message):
                        yield event.data
                    elif isinstance(event, Ping):
                        self.sock.sendall(encode_frame(OP_PONG, event.payload, mask=MASK))
            data = self.sock.recv(262144)
            if not data:
                return
            self.received += len(data)


def drain(stream: Any) -> None:
    """Read and drop a child's output, so that it never blocks on a full pipe."""
    for _ in stream:
        pass


def client_context(cert: Path) -> ssl.SSLContext:
    """A client TLS context that trusts the server's generated certificate."""
    return ssl.create_default_context(cafile=str(cert))


def start_server(
    workdir: Path,
    tls: bool,
    src: Path,
    keepalive: float = 5.0,
    *,
    workers: int = 1,
    extra: str = "",
    certs: Path | None = None,
) -> tuple[subprocess.Popen[str], Target]:
    """Start flaskrtc (the tree at ``src``) on an ephemeral port; return it and its target
    once it (each of its ``workers``) listens. ``extra``: more config sections (a
    ``[cluster]``); ``certs``: the certificate folder (two instances share one)."""
    certs = certs or workdir / "certs"
    config = workdir / "config.ini"
    config.write_text(
        "[general]\nbind = 127.0.0.1\nport = 0\n"
        f"tls = {'true' if tls else 'false'}\ncert = {certs / 'cert.pem'}\n"
        f"key = {certs / 'key.pem'}\n"
        f"keepalive = {keepalive}\nhtml_root = {REPO / 'web'}\n"
        # Every client comes from 127.0.0.1: no per-IP rate limit or connection cap.
        "rate_limit = 0\nmax_connections_per_ip = 0\nmax_connections = 0\n"
        # (only when asked: an older tree, run by --server-src, may not know the key)
        + (f"workers = {workers}\n" if workers != 1 else "")
        + "[turn]\nsecret = bench\nbind = 127.0.0.1\nport = 0\ntls_port = 0\n"
        + extra
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "flaskrtc", "--config", str(config)],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    log = []
    listening = 0
    for line in proc.stdout:
        log.append(line)
        found = re.search(r"listening on https?://[^ ]+:(\d+)", line)
        if found:
            listening += 1
        if found and listening == workers:  # every worker shares the port the parent bound
            gevent.spawn(drain, proc.stdout)
            context = client_context(certs / "cert.pem") if tls else None
            return proc, Target(int(found.group(1)), context)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(log))


def tree(pid: int) -> list[int]:
    """``pid`` and its children (a parent of workers and its workers), read from /proc."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass  # gone, or no children file (an old kernel): the process alone
    return pids


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of the processes ``pids`` (one that has ended counts as 0)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def tree_rss_mb(pids: list[int]) -> float:
    """The sum of the peak RSS of ``pids``, in MB."""
    return sum(peak_rss_mb(pid) for pid in pids)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- (a) forwarding ---------------------------------------------------------------------


def bare_relay(cert: Path | None) -> StreamServer:
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

    kwargs: dict[str, Any] = {}
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(cert.with_name("key.pem")))
        kwargs["ssl_context"] = context
    return StreamServer(("127.0.0.1", 0), handle, **kwargs)


def relay_child(cert: str) -> int:
    """The bare relay as a process of its own (``--relay-child``): prints its port, serves."""
    server = bare_relay(Path(cert) if cert else None)
    server.start()
    print(f"relay listening on {server.server_port}", flush=True)
    gevent.wait()
    return 0


def start_relay(cert: Path | None) -> tuple[subprocess.Popen[str], Target]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--relay-child", str(cert or "")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    found = RELAY_RE.search(proc.stdout.readline())
    if not found:
        proc.kill()
        raise RuntimeError("bare relay did not start")
    gevent.spawn(drain, proc.stdout)
    context = client_context(cert) if cert is not None else None
    return proc, Target(int(found.group(1)), context)


# The lines of a browser's audio+video offer (Chromium, shortened), for a realistic SDP:
# its size, and its density of line breaks, which JSON escapes as \r\n.
_SDP_HEAD = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 7cd4b0d2-4b5c-4b4e-9e3f-2f4c1c9a0b1d",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Xh3p",
    "a=ice-pwd:9zLkJ0vQ2m1rT6yB4nW8sE5d",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 4A:1F:9C:2B:7E:55:D0:8A:3C:61:F2:0B:9E:47:AA:13:"
    "6D:C8:25:B9:04:7F:E1:3A:58:92:CD:06:BB:74:1E:F0",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
]


def offer_sdp(size: int) -> str:
    """A browser-like SDP of about ``size`` bytes (more ``a=ssrc`` lines to make it up)."""
    lines = list(_SDP_HEAD)
    k = 0
    while len("\r\n".join(lines)) < size:
        lines.append(f"a=ssrc:{1000 + k} msid:7cd4b0d2-4b5c-4b4e track-{k}")
        k += 1
    return ("\r\n".join(lines) + "\r\n")[:size]


def forwarding(
    target: Target,
    pairs: int,
    seconds: float,
    sdp_bytes: int,
    pid: int,
    target_b: Target | None = None,
    others: tuple[int, ...] = (),
) -> dict[str, float]:
    """Ping-pong offers/answers between ``pairs`` pairs for ``seconds``; the CPU process
    ``pid`` (with its children and ``others``) spends meanwhile (not while the pairs
    connect and register) per message. ``target_b``: where the second of each pair
    connects (another instance of a cluster), if not ``target``."""
    pids = [p for q in (pid, *others) for p in tree(q)]
    latencies: list[float] = []
    count = [0]
    stop_at = [0.0]
    sdp = offer_sdp(sdp_bytes)
    peers: list[tuple[Peer, Peer]] = []
    for k in range(pairs):
        a, b = Peer(target), Peer(target_b or target)
        a.send("new", {"id": f"a{k}"})
        b.send("new", {"id": f"b{k}"})
        peers.append((a, b))
    gevent.sleep(0.5)  # let registration settle; the run below is what is measured

    def side(me: Peer, other: str, starts: bool) -> None:
        if starts:
            me.send("offer", {"to": other, "t": time.perf_counter(), "description": {"sdp": sdp}})
        for raw in me.messages():
            if not raw.startswith(b'{"type":"offer"') and not raw.startswith(b'{"type":"answer"'):
                continue
            msg = json.loads(raw)
            now = time.perf_counter()
            if now >= stop_at[0]:
                return  # counted up to stop_at only: the measured window
            latencies.append(now - msg["data"]["t"])
            count[0] += 1
            kind = "answer" if msg["type"] == "offer" else "offer"
            me.send(kind, {"to": other, "t": time.perf_counter(), "description": {"sdp": sdp}})

    cpu0 = tree_cpu(pids)
    start = time.perf_counter()
    stop_at[0] = start + seconds
    jobs = []
    for k, (a, b) in enumerate(peers):
        jobs.append(gevent.spawn(side, a, f"b{k}", True))
        jobs.append(gevent.spawn(side, b, f"a{k}", False))
    # The window ends at stop_at for everyone (a side that stops leaves its partner waiting
    # for an answer that never comes: the jobs are killed, not joined).
    gevent.sleep(max(0.0, stop_at[0] - time.perf_counter()))
    elapsed = time.perf_counter() - start
    cpu = tree_cpu(pids) - cpu0
    gevent.killall(jobs, timeout=5)
    for a, b in peers:
        a.sock.close()
        b.sock.close()
    return {
        "msgs_per_s": count[0] / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "count": count[0],
        "cpu_us": cpu / max(1, count[0]) * 1e6,
        "cpu_share": cpu / elapsed,
        "rss_mb": tree_rss_mb(pids),
    }


# -- (b) join storm ---------------------------------------------------------------------


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StormPeers:
    """Some of the storm's peers (global indexes ``indexes``), their readers and probes."""

    def __init__(self, target: Target, n: int, indexes: range, user_agent: str) -> None:
        self.n = n
        self.user_agent = user_agent
        self.indexes = indexes
        self.peers: dict[int, Peer] = {}
        self.complete_at: dict[int, float | None] = dict.fromkeys(indexes)
        self.last_lists: dict[int, bytes] = dict.fromkeys(indexes, b"")
        self.rtts: list[float] = []
        self.readers = []
        for i in indexes:  # each reader starts at once: it answers the server's PINGs
            self.peers[i] = Peer(target)
            self.readers.append(gevent.spawn(self._reader, i))

    def _reader(self, i: int) -> None:
        n = self.n
        for raw in self.peers[i].messages():
            if raw.startswith(b'{"type":"peers"'):
                self.last_lists[i] = raw
                # Counting entries with bytes.count keeps the client cheap; the last list
                # is parsed in full at the end.
                if raw.count(b'"id":') == n:
                    if self.complete_at[i] is None:
                        self.complete_at[i] = time.monotonic()
                else:
                    self.complete_at[i] = None
            elif raw.startswith(b'{"type":"keepalive"'):
                self.rtts.append(time.monotonic() - json.loads(raw)["data"]["t"])

    def join(self, i: int) -> None:
        self.peers[i].send(
            "new", {"id": f"{100000 + i}", "name": f"peer {i}", "user_agent": self.user_agent}
        )

    def probe(self, until: gevent.event.Event) -> list[gevent.Greenlet[Any]]:
        """Every peer sends a keepalive every 50 ms until ``until`` is set."""

        def prober(peer: Peer) -> None:
            while not until.is_set():
                peer.send("keepalive", {"t": time.monotonic()})
                until.wait(0.05)

        return [gevent.spawn(prober, peer) for peer in self.peers.values()]

    def all_complete(self) -> bool:
        return all(t is not None for t in self.complete_at.values())

    def received(self) -> int:
        return sum(p.received for p in self.peers.values())

    def results(self) -> dict[str, Any]:
        return {
            "complete_at": list(self.complete_at.values()),
            "lengths": [
                len(json.loads(raw)["data"]) if raw else 0 for raw in self.last_lists.values()
            ],
            "received": self.received(),
            "rtts": self.rtts,
        }

    def close(self) -> None:
        gevent.killall(self.readers)
        for p in self.peers.values():
            p.sock.close()


def probe_child(spec: str) -> int:
    """The storm's probing peers as a process of their own (``--probe-child``): commands on
    stdin (idle, start, join I, stop), a JSON line of results on stdout. Their round trips
    then measure the server, not this benchmark's own process busy reading a thousand
    peers' lists."""
    from gevent.fileobject import FileObjectPosix

    conf = json.loads(spec)
    context = client_context(Path(conf["cert"])) if conf["cert"] else None
    peers = StormPeers(
        Target(conf["port"], context), conf["n"], range(conf["probes"]), conf["user_agent"]
    )
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    until = gevent.event.Event()
    jobs: list[gevent.Greenlet[Any]] = []
    idle: list[float] = []
    for line in stdin:
        cmd = line.decode().split()
        if cmd[0] == "idle":
            over = gevent.event.Event()
            gevent.joinall(peers.probe(over), timeout=1.0)
            over.set()
            gevent.sleep(0.2)
            idle, peers.rtts = peers.rtts, []
            out.write("idle-done\n")
            out.flush()
        elif cmd[0] == "start":
            jobs = peers.probe(until)
        elif cmd[0] == "join":
            peers.join(int(cmd[1]))
        elif cmd[0] == "stop":
            deadline = time.monotonic() + 5
            while not peers.all_complete() and time.monotonic() < deadline:
                gevent.sleep(0.05)
            until.set()
            gevent.joinall(jobs, timeout=5)
            out.write(json.dumps({**peers.results(), "idle_rtts": idle}) + "\n")
            out.flush()
            break
    peers.close()
    return 0


def join_storm(
    target: Target,
    n: int,
    spread: float,
    probes: int,
    pid: int,
    cert: Path | None,
    user_agent: str = "bench",
) -> dict[str, float]:
    """``n`` peers join evenly over ``spread`` seconds; the first ``probes`` of them are in a
    child process and measure keepalive round trips (see :func:`probe_child`). The CPU of
    process ``pid`` (and of this one) is counted from the first join until every peer holds
    the complete list."""
    spec = {
        "port": target.port,
        "cert": str(cert or ""),
        "n": n,
        "probes": probes,
        "user_agent": user_agent,
    }
    child = subprocess.Popen(
        [sys.executable, __file__, "--probe-child", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None

    def tell(command: str) -> None:
        assert child.stdin is not None
        child.stdin.write(command + "\n")
        child.stdin.flush()

    def expect(what: str) -> str:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith(what):
            raise RuntimeError(f"probe process: expected {what!r}, got {line!r}")
        return line

    try:
        connect_start = time.monotonic()
        expect("ready")
        peers = StormPeers(target, n, range(probes, n), user_agent)
        connect_s = time.monotonic() - connect_start
        # The idle reference: the probes for 1 s before anyone registers.
        tell("idle")
        expect("idle-done")
        received0 = peers.received()

        tell("start")
        pids = tree(pid)
        cpu0, own0 = tree_cpu(pids), own_cpu_seconds()
        start = time.monotonic()
        for i in range(n):
            delay = start + spread * i / n - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            if i < probes:
                tell(f"join {i}")
            else:
                peers.join(i)
        last_join = time.monotonic()
        deadline = last_join + 30
        while time.monotonic() < deadline and not peers.all_complete():
            gevent.sleep(0.05)
        cpu, own = tree_cpu(pids) - cpu0, own_cpu_seconds() - own0
        wall = time.monotonic() - start
        tell("stop")
        probed = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
    mine = peers.results()
    complete_at = mine["complete_at"] + probed["complete_at"]
    lengths = mine["lengths"] + probed["lengths"]
    done = [t for t in complete_at if t is not None]
    complete = len(done) == n and all(length == n for length in lengths)
    received = mine["received"] - received0 + probed["received"]
    raw = peers.last_lists[n - 1]
    final = json.loads(raw)["data"] if raw else []
    # Naive: every join sends the list of i peers to i peers.
    entry_sizes = [len(json.dumps(e, separators=(",", ":"))) + 1 for e in final]
    naive = sum((i + 1) * (30 + sum(entry_sizes[: i + 1])) for i in range(len(entry_sizes)))
    peers.close()
    rtts, idle_rtts = probed["rtts"], probed["idle_rtts"]
    return {
        "connect_s": connect_s,
        "cpu_s": cpu,
        "cpu_share": cpu / wall,
        "client_cpu_share": own / wall,
        "joins_over_s": last_join - start,
        "complete": float(complete),
        "all_complete_after_last_join_s": (max(done) - last_join) if done else float("nan"),
        "sent_mb": received / 1e6,
        "naive_mb": naive / 1e6,
        "rtt_p50_ms": percentile(rtts, 50) * 1000,
        "rtt_p99_ms": percentile(rtts, 99) * 1000,
        "rtt_count": len(rtts),
        "idle_rtt_p50_ms": percentile(idle_rtts, 50) * 1000,
        "idle_rtt_p99_ms": percentile(idle_rtts, 99) * 1000,
    }


def run_forwarding(name: str, tls: bool, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"(a) {name}: offer/answer forwarding, {args.pairs} pairs, {args.seconds:g} s,"
        f" {args.sdp_bytes}-byte browser-like SDP",
        flush=True,
    )
    proc, target = start_server(tmp, tls, args.server_src)
    try:
        fwd = forwarding(target, args.pairs, args.seconds, args.sdp_bytes, proc.pid)
    finally:
        stop(proc)
    relay, relay_target = start_relay(tmp / "certs" / "cert.pem" if tls else None)
    try:
        ref = forwarding(relay_target, args.pairs, args.seconds, args.sdp_bytes, relay.pid)
    finally:
        stop(relay)
    for label, row, note in (
        ("flaskrtc  ", fwd, ""),
        ("bare relay", ref, "  (reference, same run)"),
    ):
        print(
            f"    {label} {row['msgs_per_s']:7.0f} msg/s  p50 {row['p50_ms']:6.2f} ms"
            f"  p99 {row['p99_ms']:6.2f} ms  server CPU {row['cpu_us']:5.1f} µs/msg"
            f" ({row['cpu_share'] * 100:3.0f}% of a core)  peak RSS {row['rss_mb']:5.1f} MB{note}"
        )
    target_note = "  (target ≤ 60 µs/msg)" if tls else ""
    print(
        f"    ratio flaskrtc/bare relay: CPU per message {fwd['cpu_us'] / ref['cpu_us']:.2f},"
        f" throughput {fwd['msgs_per_s'] / ref['msgs_per_s']:.2f};"
        f" flaskrtc {fwd['cpu_us']:.1f} µs/msg{target_note}",
        flush=True,
    )
    return {"fwd": fwd, "ref": ref}


def run_storm(name: str, tls: bool, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    print(
        f"(b) {name}: join storm, {args.peers} peers over {args.spread:g} s, "
        f"{args.probes} keepalive probes every 50 ms",
        flush=True,
    )
    proc, target = start_server(tmp, tls, args.server_src)
    try:
        cert = tmp / "certs" / "cert.pem" if tls else None
        storm = join_storm(
            target, args.peers, args.spread, args.probes, proc.pid, cert, args.user_agent
        )
        storm["rss_mb"] = tree_rss_mb(tree(proc.pid))
    finally:
        stop(proc)
    targets = tls  # the storm targets are set for TLS, the default
    print(
        f"    {args.peers} connections took {storm['connect_s']:.1f} s;"
        f" joins took {storm['joins_over_s']:.2f} s; every peer holds the complete list:"
        f" {'yes' if storm['complete'] else 'NO'},"
        f" {storm['all_complete_after_last_join_s']:.2f} s after the last join"
        + (" (target ≤ 2 s)" if targets else "")
    )
    print(
        f"    server sent {storm['sent_mb']:.1f} MB"
        + (" (target ≤ 500 MB)" if targets else "")
        + f"; naive broadcast: {storm['naive_mb']:.0f} MB;"
        f" ratio {storm['sent_mb'] / storm['naive_mb']:.4f}"
    )
    print(
        f"    keepalive round trip during the storm: p50 {storm['rtt_p50_ms']:.1f} ms,"
        f" p99 {storm['rtt_p99_ms']:.1f} ms over {storm['rtt_count']:.0f} probes"
        + (" (target p99 ≤ 100 ms)" if targets else "")
        + f"; idle reference, same server before the storm: p50 {storm['idle_rtt_p50_ms']:.1f}"
        f" ms, p99 {storm['idle_rtt_p99_ms']:.1f} ms;"
        f" ratio p99 {storm['rtt_p99_ms'] / storm['idle_rtt_p99_ms']:.1f}"
    )
    print(
        f"    server CPU from the first join to the last complete list {storm['cpu_s']:.2f} s"
        f" ({storm['cpu_share'] * 100:.0f}% of a core; the clients' process:"
        f" {storm['client_cpu_share'] * 100:.0f}%), peak RSS {storm['rss_mb']:.1f} MB",
        flush=True,
    )
    return storm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--transport",
        choices=("both", "tls", "plain"),
        default="both",
        help="TLS (wss, the server's default), plain WS, or both (TLS first); default both",
    )
    parser.add_argument("--only", choices=("forwarding", "storm"), help="run one part only")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sdp-bytes", type=int, default=1500, help="SDP size in the offers")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=5.0)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument(
        "--user-agent",
        default="bench",
        help="the user_agent every storm peer registers with (its size is the list's size)",
    )
    parser.add_argument(
        "--server-src",
        type=Path,
        default=REPO,
        help="the source tree whose flaskrtc to run (default: this one), to compare two trees",
    )
    parser.add_argument("--relay-child", metavar="CERT", help=argparse.SUPPRESS)
    parser.add_argument("--probe-child", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay_child is not None:
        return relay_child(args.relay_child)
    if args.probe_child is not None:
        return probe_child(args.probe_child)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    transports = {"both": ("tls", "plain"), "tls": ("tls",), "plain": ("plain",)}[args.transport]
    print(f"signal_bench: {os.cpu_count()} cores; server {args.server_src}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for kind in transports:
        tls = kind == "tls"
        name = "TLS (wss)" if tls else "plain (ws)"
        results[kind] = {}
        with tempfile.TemporaryDirectory() as tmp:
            if args.only in (None, "forwarding"):
                results[kind].update(run_forwarding(name, tls, Path(tmp), args))
            if args.only in (None, "storm"):
                results[kind]["storm"] = run_storm(name, tls, Path(tmp), args)

    print("summary")
    for kind, res in results.items():
        parts = [f"    {kind:5}"]
        if "fwd" in res:
            fwd, ref = res["fwd"], res["ref"]
            parts.append(
                f"forwarding {fwd['cpu_us']:.1f} µs/msg (bare relay {ref['cpu_us']:.1f},"
                f" ratio {fwd['cpu_us'] / ref['cpu_us']:.2f}), RSS {fwd['rss_mb']:.0f} MB"
            )
        if "storm" in res:
            s = res["storm"]
            parts.append(
                f"storm {s['all_complete_after_last_join_s']:.2f} s,"
                f" {s['sent_mb']:.0f} MB, keepalive p50/p99 {s['rtt_p50_ms']:.1f}/"
                f"{s['rtt_p99_ms']:.1f} ms, RSS {s['rss_mb']:.0f} MB"
            )
        print("; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
