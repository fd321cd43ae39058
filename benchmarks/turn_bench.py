"""TURN benchmark: relay CPU per packet, allocations per second, memory per allocation.

Starts ``python -m flaskrtc`` (TURN on 127.0.0.1, ephemeral ports) and coturn's
``turnserver`` side by side with the same secret, realm and loopback peers allowed, and
drives both with the same clients. Prints its figures; asserts nothing; all traffic stays on
127.0.0.1. Run with ``.venv/bin/python benchmarks/turn_bench.py [--messages 2000]``; needs
coturn (``turnserver``, ``turnutils_uclient``), which the whole run is skipped without.

(1) relay cost: ``turnutils_uclient -y`` (client to client through the server, ChannelData)
    with 100- and 1000-byte payloads. Server CPU (utime+stime from /proc, all threads) per
    message received by the clients. Each such message crosses the server twice (client A ->
    relay A -> relay B -> client B: two recvfrom and two sendto in the server), the same for
    every server. Reference: a bare, gevent-free Python recvfrom/sendto forwarder (epoll,
    a dict of upstream sockets, no parsing) placed between uclient and coturn; its own CPU
    per message is what the same two hops cost in plain Python.
(2) allocations/s: full Allocate with long-term auth (unsigned request, 401 with REALM and
    NONCE, signed request) from this process, one UDP socket per allocation, in batches.
(3) memory per live allocation: the server's VmRSS before and after 1000 held allocations.

``--metrics-cost`` runs only this instead: the relay cost of (1) for flaskrtc with
``[metrics] enabled = false`` and with it on and /metrics scraped every second (15 times
more often than Prometheus' default), all servers loaded at once in each round (each by its
own uclient, the same load), and the ratio of the medians over the rounds. The counters
themselves are always kept (they are plain integer additions on the relay path, also read
by the status page); ``--baseline-tree DIR`` adds a third server run from another source
tree (e.g. ``git archive`` of the commit before the counters), whose ratio is the cost of
counting at all.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from procstats import cpu_seconds, rss_kb  # noqa: E402

from flaskrtc.turn.stun import (  # noqa: E402
    Attr,
    Class,
    Message,
    Method,
    StunError,
    long_term_key,
    parse,
    serialize,
)

SECRET = "bench-secret"
REALM = "flutter-webrtc"
HOST = "127.0.0.1"
TURN_RE = re.compile(r"turn: listening on udp and tcp [^ ]+:(\d+)")
HTTP_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def rest_credential(user: str, ttl: int = 3600) -> tuple[str, str]:
    """A TURN REST username and password under SECRET (coturn's use-auth-secret scheme)."""
    username = f"{int(time.time()) + ttl}:{user}"
    digest = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


class Server:
    """A server process whose output is drained (and kept) by a thread."""

    def __init__(self, name: str, cmd: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.cmd = cmd
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.pid = self.proc.pid
        self.port = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                if len(self.lines) < 10000:
                    self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, regex: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(self.lines[-20:])
                    raise RuntimeError(f"{self.name}: no line matching {regex.pattern}:\n{tail}")
                self.cond.wait(min(left, 0.5))

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_kb(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_flaskrtc(
    workdir: Path,
    *,
    wildcard: bool = False,
    metrics: bool = False,
    tree: Path = REPO,
    name: str = "",
) -> tuple[Server, str]:
    """flaskrtc with plain HTTP and TURN on loopback, no quotas; returns it and its HTTP port.
    ``wildcard``: TURN on :: with public_ip empty (the default configuration: one dual-stack
    socket, IPv4 clients seen as ::ffff:a.b.c.d), where every datagram's destination is read
    with IPV6_PKTINFO. ``metrics``: [metrics] enabled (loopback may read /metrics);
    ``tree``: the source tree to run (another checkout, for a before/after figure)."""
    config = workdir / "config.ini"
    turn_addr = "public_ip =\nbind = ::" if wildcard else "public_ip = 127.0.0.1\nbind = 127.0.0.1"
    config.write_text(
        "[general]\nbind = 127.0.0.1\nport = 0\ntls = false\n"
        f"html_root = {REPO / 'web'}\nlog_level = INFO\n"
        "rate_limit = 0\nmax_connections_per_ip = 0\n"
        f"[turn]\nsecret = {SECRET}\n{turn_addr}\nport = 0\n"
        "tls_port = 0\nallowed_peer_ip = 127.0.0.1\nmin_port = 40000\nmax_port = 49999\n"
        # All clients on 127.0.0.1: no per-IP quota, no rate limit on unsigned replies.
        "user_quota = 0\ntotal_quota = 0\nip_quota = 0\nunauth_rate = 0\n"
        # Written only when on: a tree from before [metrics] would refuse the section.
        + ("[metrics]\nenabled = true\n" if metrics else "")
    )
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    server = Server(
        name or ("flaskrtc*" if wildcard else "flaskrtc"),
        [sys.executable, "-m", "flaskrtc", "--config", str(config)],
        workdir,
        env,
    )
    http = server.wait_for(HTTP_RE, 30).group(1)
    server.port = int(server.wait_for(TURN_RE, 30).group(1))
    return server, http


def start_coturn(turnserver: str, workdir: Path, relay_threads: int | None = 1) -> Server:
    """coturn on loopback: same secret and realm, ``relay_threads`` relay threads (None:
    coturn's default, one per CPU), logging to a file."""
    port = free_port()
    cmd = [
        turnserver,
        "-n",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        "--min-port=50000",
        "--max-port=59999",
        "--use-auth-secret",
        f"--static-auth-secret={SECRET}",
        f"--realm={REALM}",
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        *([f"--relay-threads={relay_threads}"] if relay_threads is not None else []),
        f"--pidfile={workdir / 'turn.pid'}",
        f"--log-file={workdir / 'turn.log'}",
        "--no-stdout-log",
        "--simple-log",
    ]
    server = Server("coturn", cmd, workdir, dict(os.environ))
    server.port = port
    deadline = time.monotonic() + 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                sock.sendto(serialize(Message(Method.BINDING, Class.REQUEST)), (HOST, port))
                if parse(sock.recvfrom(2048)[0]).cls == Class.SUCCESS:
                    return server
            except (OSError, StunError):
                time.sleep(0.1)
    server.stop()
    raise RuntimeError("coturn did not answer a Binding request:\n" + "\n".join(server.lines))


# -- the reference forwarder --------------------------------------------------------------


def forward(upstream_port: int, max_seconds: float) -> None:
    """A bare UDP forwarder (run in its own process): datagrams from clients to the upstream
    server from one socket per client, and back. No gevent, no parsing: the floor for a
    Python relay of the same two hops. Prints its port; exits after ``max_seconds``."""
    upstream = (HOST, upstream_port)
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind((HOST, 0))
    front.setblocking(False)
    print(front.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(front, selectors.EVENT_READ, None)
    backs: dict[Any, socket.socket] = {}
    front_recv, front_send = front.recvfrom, front.sendto
    stop_at = time.monotonic() + max_seconds
    while time.monotonic() < stop_at:
        for key, _ in sel.select(1.0):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            client = key.data
            recv = front_recv if client is None else sock.recvfrom
            while True:
                try:
                    data, addr = recv(65535)
                except BlockingIOError:
                    break
                try:
                    if client is not None:
                        front_send(data, client)
                        continue
                    back = backs.get(addr)
                    if back is None:
                        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        back.bind((HOST, 0))
                        back.setblocking(False)
                        sel.register(back, selectors.EVENT_READ, addr)
                        backs[addr] = back
                    back.sendto(data, upstream)
                except OSError:
                    pass  # a full buffer drops the datagram, as the network would


def start_forwarder(upstream_port: int, workdir: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--forward", str(upstream_port)],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(15)
    if not result or not result[0].strip().isdigit():
        proc.kill()
        proc.wait(10)
        raise RuntimeError("forwarder did not start")
    return proc, int(result[0])


# -- (1) relay cost -----------------------------------------------------------------------


def run_uclient(
    uclient: str,
    port: int,
    length: int,
    args: argparse.Namespace,
    sessions: Sequence[int] = (),
) -> dict[str, float]:
    """turnutils_uclient -y against ``port``; its totals (NaN when it failed).
    ``args.extra``: more uclient flags (workers_bench passes -c: no RTCP allocations).
    ``sessions``: one uclient per item, run at once, with that many sessions (its -m; one
    uclient paces itself and cannot load a server on a fast core); default one uclient of
    ``args.clients``. Their totals are summed, the loss is over all of them."""

    def command(clients: int) -> list[str]:
        return [
            uclient,
            "-y",
            *getattr(args, "extra", []),
            "-W",
            SECRET,
            "-p",
            str(port),
            "-m",
            str(clients),
            "-n",
            str(args.messages),
            "-l",
            str(length),
            "-z",
            str(args.interval),
            HOST,
        ]

    start = time.monotonic()
    procs = [
        subprocess.Popen(
            command(clients),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for clients in (sessions or (args.clients,))
    ]
    outputs = []
    try:
        for proc in procs:
            left = max(1.0, args.uclient_timeout - (time.monotonic() - start))
            try:
                out, _ = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            outputs.append(out or "")
    finally:
        for proc in procs:  # also when the benchmark itself is stopped meanwhile
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - start
    nan = float("nan")
    sent = received = lost = rate = 0.0
    for output in outputs:
        rate += sending_rate(output)
        totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
        found = re.search(r"Total lost packets (\d+) \(([\d.]+)%\)", output)
        if not totals or not found:
            return {"sent": nan, "received": nan, "lost": nan, "lost_pct": nan, "seconds": elapsed}
        sent += float(totals[-1][0])
        received += float(totals[-1][1])
        lost += float(found.group(1))
    return {
        "sent": sent,
        "received": received,
        "lost": lost,
        "lost_pct": 100.0 * lost / sent if sent else nan,
        "seconds": elapsed,
        "rate": rate,
    }


def sending_rate(output: str) -> float:
    """Messages received per second while a uclient was sending (NaN if it ran too briefly
    to tell), from its once-a-second ``N: : start_mclient: msz=..., tot_send_msgs=S,
    tot_recv_msgs=R`` lines. Its wall time would also count its allocations and the seconds
    it waits at the end for what was lost."""
    points = [
        (int(t), int(sent), int(recv))
        for t, sent, recv in re.findall(
            r"^(\d+): : start_mclient: msz=\d+, tot_send_msgs=(\d+), tot_recv_msgs=(\d+)",
            output,
            re.MULTILINE,
        )
    ]
    total = max((sent for _, sent, _ in points), default=0)
    window = [p for p in points if 0 < p[1] < total]
    if len(window) < 2 or window[-1][0] == window[0][0]:
        return float("nan")
    (t0, _, r0), (t1, _, r1) = window[0], window[-1]
    return (r1 - r0) / (t1 - t0)


def measure_relay(
    uclient: str, port: int, length: int, pids: list[int], args: argparse.Namespace
) -> tuple[dict[str, float], list[float]]:
    """One uclient run; the CPU seconds each of ``pids`` spent during it."""
    before = [cpu_seconds(pid) for pid in pids]
    result = run_uclient(uclient, port, length, args)
    return result, [cpu_seconds(pid) - cpu0 for pid, cpu0 in zip(pids, before, strict=True)]


def per_msg_us(cpu: float, result: dict[str, float]) -> float:
    received = result["received"]
    return cpu / received * 1e6 if received == received and received > 0 else float("nan")


# -- (2) and (3) allocations ----------------------------------------------------------------


def exchange(requests: dict[socket.socket, bytes], timeout: float) -> dict[socket.socket, Message]:
    """Send each socket's request to the server it is connected to and collect the replies
    (by transaction id); one retransmission of the missing ones halfway through."""
    replies: dict[socket.socket, Message] = {}
    sel = selectors.DefaultSelector()
    for sock, data in requests.items():
        sock.send(data)
        sel.register(sock, selectors.EVENT_READ)
    start = time.monotonic()
    resent = False
    try:
        while len(replies) < len(requests):
            now = time.monotonic()
            if now - start > timeout:
                break
            if not resent and now - start > timeout / 2:
                resent = True
                for sock, data in requests.items():
                    if sock not in replies:
                        sock.send(data)
            for key, _ in sel.select(0.05):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    msg = parse(sock.recv(65535))
                except (OSError, StunError):
                    continue
                if msg.transaction_id == requests[sock][8:20]:
                    replies[sock] = msg
                    sel.unregister(sock)
    finally:
        sel.close()
    return replies


class Allocations:
    """Allocations held by this process, one UDP socket each, against one server."""

    def __init__(self, port: int, user: str) -> None:
        self.server = (HOST, port)
        self.username, password = rest_credential(user)
        self.key = long_term_key(self.username, REALM, password)
        self.held: dict[socket.socket, tuple[str, str]] = {}  # socket -> (realm, nonce)
        self.failures: dict[str, int] = {}

    def _fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    def allocate(self, count: int, batch: int) -> float:
        """Create ``count`` allocations, ``batch`` in flight at once; returns the seconds."""
        start = time.perf_counter()
        for first in range(0, count, batch):
            socks = []
            for _ in range(min(batch, count - first)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect(self.server)
                socks.append(sock)
            plain = {
                s: serialize(
                    Message(
                        Method.ALLOCATE, Class.REQUEST, attributes={Attr.REQUESTED_TRANSPORT: 17}
                    )
                )
                for s in socks
            }
            challenges = exchange(plain, 5.0)
            signed: dict[socket.socket, bytes] = {}
            for sock in socks:
                reply = challenges.get(sock)
                if reply is None or reply.get(Attr.ERROR_CODE, (0, ""))[0] != 401:
                    self._fail("timeout" if reply is None else f"{reply.get(Attr.ERROR_CODE)[0]}")
                    sock.close()
                    continue
                realm, nonce = reply.get(Attr.REALM), reply.get(Attr.NONCE)
                self.held[sock] = (realm, nonce)
                signed[sock] = self._signed(
                    Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17}, realm, nonce
                )
            replies = exchange(signed, 5.0)
            for sock in signed:
                reply = replies.get(sock)
                if reply is None or reply.cls != Class.SUCCESS:
                    self._fail("timeout" if reply is None else f"{reply.get(Attr.ERROR_CODE)[0]}")
                    del self.held[sock]
                    sock.close()
        return time.perf_counter() - start

    def _signed(self, method: int, attrs: dict[int, Any], realm: str, nonce: str) -> bytes:
        """A request signed with this client's long-term key."""
        attributes = {**attrs, Attr.USERNAME: self.username, Attr.REALM: realm, Attr.NONCE: nonce}
        msg = Message(method, Class.REQUEST, attributes=attributes)
        return serialize(msg, integrity_key=self.key)

    def release(self, batch: int) -> list[socket.socket]:
        """Refresh LIFETIME 0 on every held allocation; returns the sockets, still open (a
        closed socket's port could come back at once for a new allocation, and coturn
        answers 437 to a 5-tuple whose deleted allocation it still remembers)."""
        socks = list(self.held)
        for first in range(0, len(socks), batch):
            requests = {}
            for sock in socks[first : first + batch]:
                realm, nonce = self.held[sock]
                requests[sock] = self._signed(Method.REFRESH, {Attr.LIFETIME: 0}, realm, nonce)
            exchange(requests, 2.0)
        self.held.clear()
        return socks


@dataclass
class AllocationFigures:
    held: int
    seconds: float
    cpu: float
    rss_before: int
    rss_after: int
    failures: dict[str, int]

    @property
    def per_s(self) -> float:
        return self.held / self.seconds if self.seconds > 0 else float("nan")


def allocation_figures(server: Server, count: int, batch: int) -> AllocationFigures:
    """Warm up, then time ``count`` allocations and measure the RSS they hold."""
    warm = Allocations(server.port, "warmup")
    warm.allocate(50, batch)
    spent = warm.release(batch)
    time.sleep(0.5)
    rss0 = server.rss()
    cpu0 = server.cpu()
    allocs = Allocations(server.port, "bench")
    seconds = allocs.allocate(count, batch)
    cpu = server.cpu() - cpu0
    time.sleep(0.5)
    rss1 = server.rss()
    figures = AllocationFigures(len(allocs.held), seconds, cpu, rss0, rss1, allocs.failures)
    spent += allocs.release(batch)
    for sock in spent:
        sock.close()
    return figures


# -- metrics on vs off ----------------------------------------------------------------------


class Scraper:
    """GETs /metrics every ``interval`` seconds in a thread, as Prometheus would."""

    def __init__(self, http_port: str, interval: float = 1.0) -> None:
        self.url = f"http://{HOST}:{http_port}/metrics"
        self.interval = interval
        self.scrapes = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(self.interval):
            with urllib.request.urlopen(self.url, timeout=5) as reply:
                self.bytes += len(reply.read())
            self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def scrape_cpu(server: Server, http_port: str, count: int = 200) -> float:
    """The server's CPU seconds per /metrics GET (each on a new connection), while idle."""
    import urllib.request

    url = f"http://{HOST}:{http_port}/metrics"
    before = server.cpu()
    for _ in range(count):
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()
    return (server.cpu() - before) / count


def metrics_cost(uclient: str, args: argparse.Namespace, lengths: list[int]) -> None:
    """flaskrtc with /metrics off and on (scraped every second), alternating rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        servers: list[Server] = []
        scrapers: list[Scraper] = []
        try:
            on_http = ""
            for name, on in (("metrics off", False), ("metrics on", True)):
                (Path(tmp) / name).mkdir()
                server, http = start_flaskrtc(Path(tmp) / name, metrics=on, name=name)
                servers.append(server)
                if on:
                    on_http = http
                    scrapers.append(Scraper(http, args.scrape_interval))
            if args.baseline_tree:
                (Path(tmp) / "baseline").mkdir()
                server, _ = start_flaskrtc(
                    Path(tmp) / "baseline", tree=Path(args.baseline_tree), name="no counters"
                )
                servers.append(server)
            print(
                f"metrics cost: uclient -y -m {args.clients} -n {args.messages} -z"
                f" {args.interval}, {args.rounds} rounds, the servers side by side;"
                f" {os.cpu_count()} CPUs;"
                " server CPU per message received (2 hops through the server); /metrics"
                f" scraped every {args.scrape_interval:g} s"
            )
            for length in lengths:
                runs: dict[str, list[float]] = {server.name: [] for server in servers}
                for round_ in range(args.rounds):
                    # All servers at once, each with its own uclient and the same load: a
                    # change of the machine's speed or of other work during the round touches
                    # them all alike (one after the other, single runs spread by ±20% here).
                    n = len(servers)
                    with ThreadPoolExecutor(n) as pool:
                        measured = list(
                            pool.map(
                                measure_relay,
                                [uclient] * n,
                                [server.port for server in servers],
                                [length] * n,
                                [[server.pid] for server in servers],
                                [args] * n,
                            )
                        )
                    for server, (result, (cpu,)) in zip(servers, measured, strict=True):
                        runs[server.name].append(per_msg_us(cpu, result))
                        print(
                            f"    payload {length} B, round {round_ + 1}, {server.name:12}"
                            f" {runs[server.name][-1]:6.1f} µs/msg ({result['received']:.0f}"
                            f"/{result['sent']:.0f} received/sent, lost {result['lost_pct']:.2f}%)"
                        )
                # A failed uclient run (NaN) is left out rather than sorted among the rest.
                medians = {
                    name: statistics.median([v for v in values if v == v] or [float("nan")])
                    for name, values in runs.items()
                }
                line = f"  payload {length} B: medians " + ", ".join(
                    f"{name} {us:.1f} µs/msg" for name, us in medians.items()
                )
                print(line)
                ratio = medians["metrics on"] / medians["metrics off"]
                print(f"    ratio metrics on / off: {ratio:.3f} (goal < 1.05)")
                if "no counters" in medians:
                    counted = medians["metrics off"] / medians["no counters"]
                    print(f"    ratio counters / no counters (metrics off): {counted:.3f}")
            for scraper in scrapers:
                scraper.stop()
                size = scraper.bytes / max(1, scraper.scrapes)
                print(f"  /metrics scraped {scraper.scrapes} times, {size:.0f} bytes each")
            print(f"  server CPU per scrape: {scrape_cpu(servers[1], on_http) * 1e3:.2f} ms")
        finally:
            for scraper in scrapers:
                scraper.stop()
            for server in servers:
                server.stop()


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=10, help="uclient -m")
    parser.add_argument("--messages", type=int, default=2000, help="uclient -n")
    parser.add_argument("--interval", type=int, default=5, help="uclient -z (ms)")
    parser.add_argument("--lengths", default="100,1000", help="uclient -l payloads")
    parser.add_argument("--uclient-timeout", type=float, default=90.0)
    parser.add_argument("--allocations", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50, help="allocations in flight")
    parser.add_argument("--no-reference", action="store_true", help="skip the bare forwarder")
    parser.add_argument(
        "--no-wildcard", action="store_true", help="skip flaskrtc on :: (the default, PKTINFO)"
    )
    parser.add_argument(
        "--metrics-cost",
        action="store_true",
        help="only compare flaskrtc with [metrics] off and on (scraped every second)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--metrics-cost rounds")
    parser.add_argument(
        "--scrape-interval", type=float, default=1.0, help="--metrics-cost: seconds"
    )
    parser.add_argument(
        "--baseline-tree", help="--metrics-cost: also run flaskrtc from this source tree"
    )
    parser.add_argument("--forward", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # SIGTERM ends the run through the finally blocks: every server it started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.forward:
        forward(args.forward, max_seconds=600)
        return 0

    turnserver, uclient = shutil.which("turnserver"), shutil.which("turnutils_uclient")
    if turnserver is None or uclient is None:
        print("coturn's turnserver / turnutils_uclient not installed (Debian package coturn)")
        return 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.metrics_cost:
        metrics_cost(uclient, args, lengths)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        servers: list[Server] = []
        forwarder: subprocess.Popen[str] | None = None
        try:
            (Path(tmp) / "flaskrtc").mkdir()
            (Path(tmp) / "coturn").mkdir()
            flask, http = start_flaskrtc(Path(tmp) / "flaskrtc")
            servers.append(flask)
            if not args.no_wildcard:
                (Path(tmp) / "flaskrtc-any").mkdir()
                servers.append(start_flaskrtc(Path(tmp) / "flaskrtc-any", wildcard=True)[0])
            coturn = start_coturn(turnserver, Path(tmp) / "coturn")
            servers.append(coturn)
            print(
                f"flaskrtc: pid {flask.pid}, http {http}, turn udp {flask.port}"
                " (one process, gevent; quotas off, allowed_peer_ip 127.0.0.1)"
            )
            if not args.no_wildcard:
                print(
                    f"flaskrtc*: pid {servers[1].pid}, turn udp {servers[1].port} (the default:"
                    " bind :: dual-stack, public_ip empty: each datagram's destination read"
                    " with IPV6_PKTINFO)"
                )
            print(f"coturn:   pid {coturn.pid}, turn udp {coturn.port}: {' '.join(coturn.cmd[1:])}")
            print(
                f"uclient:  -y -m {args.clients} -n {args.messages} -z {args.interval}"
                f" -l {args.lengths}; {os.cpu_count()} CPUs"
            )

            print(
                f"\n(2)/(3) {args.allocations} allocations (401 challenge + signed Allocate,"
                f" one UDP socket each, {args.batch} in flight), held open, then deleted"
            )
            alloc: dict[str, AllocationFigures] = {}
            for server in servers:
                fig = alloc[server.name] = allocation_figures(server, args.allocations, args.batch)
                held = max(1, fig.held)
                failed = ", ".join(f"{n}x {why}" for why, n in fig.failures.items()) or "none"
                print(
                    f"    {server.name:9} {fig.per_s:7.0f} allocations/s ({fig.held} in"
                    f" {fig.seconds:.2f} s, server CPU {fig.cpu / held * 1e3:.2f} ms each,"
                    f" failed: {failed})"
                )
                print(
                    f"    {'':9} RSS {fig.rss_before / 1024:.1f} -> {fig.rss_after / 1024:.1f} MB"
                    f" = {(fig.rss_after - fig.rss_before) / held:.1f} KB per live allocation"
                )
            ratio = alloc["coturn"].per_s / alloc["flaskrtc"].per_s
            print(f"    coturn/flaskrtc allocations/s: {ratio:.2f}")

            if not args.no_reference:
                forwarder, fwd_port = start_forwarder(coturn.port, Path(tmp))
            print(
                "\n(1) relay cost: server CPU per message received by uclient (-y, ChannelData;"
                " each message = 2 hops through the server)"
            )
            for length in lengths:
                print(f"  payload {length} B:")
                runs: dict[str, float] = {}
                for server in servers:
                    result, (cpu,) = measure_relay(uclient, server.port, length, [server.pid], args)
                    runs[server.name] = per_msg_us(cpu, result)
                    print(
                        f"    {server.name:9} {runs[server.name]:6.1f} µs/msg"
                        f" ({cpu:5.2f} s CPU, {result['received']:.0f}/{result['sent']:.0f}"
                        f" msgs received/sent, lost {result['lost']:.0f}"
                        f" = {result['lost_pct']:.2f}%, {result['seconds']:.1f} s)"
                    )
                if forwarder is not None:
                    result, (cpu_fwd, cpu_turn) = measure_relay(
                        uclient, fwd_port, length, [forwarder.pid, coturn.pid], args
                    )
                    runs["bare"] = per_msg_us(cpu_fwd, result)
                    print(
                        f"    bare py   {runs['bare']:6.1f} µs/msg"
                        f" (forwarder in front of coturn: {cpu_fwd:5.2f} s CPU, coturn behind it"
                        f" {per_msg_us(cpu_turn, result):.1f} µs/msg;"
                        f" {result['received']:.0f}/{result['sent']:.0f} msgs,"
                        f" lost {result['lost_pct']:.2f}%)"
                    )
                line = (
                    f"    ratio flaskrtc/coturn {runs['flaskrtc'] / runs['coturn']:.2f}"
                    " (target <= 3, aim 2)"
                )
                if "flaskrtc*" in runs:
                    pktinfo = runs["flaskrtc*"] / runs["flaskrtc"]
                    line += f"; flaskrtc* (IP_PKTINFO)/flaskrtc {pktinfo:.2f}"
                if "bare" in runs:
                    line += (
                        f"; bare Python/coturn {runs['bare'] / runs['coturn']:.2f},"
                        f" flaskrtc/bare Python {runs['flaskrtc'] / runs['bare']:.2f}"
                    )
                print(line)
        finally:
            if forwarder is not None:
                forwarder.kill()
                forwarder.wait(10)
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
