"""Soak: minutes of mixed load against one flaskrtc process, whose open file descriptors and
resident memory must come back to their baseline afterwards.

Starts ``python -m flaskrtc`` (TLS, everything on 127.0.0.1, ephemeral ports; the config
below shortens lifetimes so that expiry happens within the run) and drives it with, at once:

- signaling churn: pairs of WebSocket clients join (``new``), wait for each other in
  ``peers``, run a call (``offer``, ``answer``, three ``candidate`` each way, ``bye``) and
  end one of four ways: a clean close, a TCP FIN without a close frame, a TCP reset, or a
  "ghost" that goes silent with its socket open and must be dropped by ``idle_timeout``;
- TURN: a REST credential from ``/api/turn`` per cycle, two allocations (UDP or TCP each),
  permissions both ways, a ChannelBind, datagrams relayed both ways through Send indications
  and ChannelData, then Refresh(0), or the sockets closed (a TCP allocation ends with its
  connection; a UDP one is left to expire after its 60 s lifetime).

Every ``--interval`` seconds it prints the server's open fds (/proc/PID/fd) and VmRSS with
the load's counters. The baseline is taken after a warm-up (the same load, clean endings
only, then idle until the fd count is steady). At the end the load stops and the server
is polled until everything left behind has expired; then the fd count must equal the
baseline. A leak is RSS that keeps rising under a steady load: the last sample must be
within ``max(3 MB, 5 %)`` of the one at mid-run (or at 1.5 lifetimes, if later; runs under
3 minutes do not settle and skip this check) (CPython's allocator keeps freed arenas for
reuse, so RSS plateaus with the load and does not fall back to the baseline after it; the
table shows both). The server's log must hold no ERROR line and no traceback, and the
clients must have seen no error. Prints PASS or FAIL; exit code 1 on FAIL.

Run with ``.venv/bin/python benchmarks/soak.py --minutes 10`` (``make soak``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from procstats import rss_kb  # noqa: E402

from flaskrtc.turn.client import (  # noqa: E402
    DataIndication,
    Request,
    Retry,
    Success,
    TurnClient,
)
from flaskrtc.turn.stun import (  # noqa: E402
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    next_frame_length,
)
from tests.conftest import Client, ServerProcess  # noqa: E402

LIFETIME = 60  # seconds: the shortest allocation lifetime a server may grant (RFC 8656 §7.2)
KEEPALIVE = 1.0  # seconds: ghosts are dropped after three periods
SDP = "v=0\r\n" + "a=x-soak:" + "x" * 1300 + "\r\n"  # about the size of a real offer
CHANNEL = 0x4000


@dataclass
class Stats:
    """Counters shared by the load threads (updated under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    online: int = 0  # WebSocket clients open now
    allocations: int = 0  # allocations this process holds now (not counting expiring ones)
    errors: list[str] = field(default_factory=list)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                if name in ("online", "allocations"):
                    setattr(self, name, getattr(self, name) + delta)
                else:
                    self.counts[name] += delta

    def error(self, where: str, exc: BaseException) -> None:
        with self.lock:
            self.counts["errors"] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{where}: {exc.__class__.__name__}: {exc}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- signaling ----------------------------------------------------------------------------


class Signaling:
    """One thread's signaling churn: a call between two fresh clients, over and over."""

    def __init__(self, server: ServerProcess, stats: Stats, name: str, seed: int) -> None:
        self.server = server
        self.stats = stats
        self.name = name
        self.rng = random.Random(seed)
        self.ghosts: list[tuple[float, Client]] = []  # (close after, client)
        self.serial = 0

    def join(self) -> tuple[str, Client]:
        self.serial += 1
        peer_id = f"{self.name}-{self.serial}"
        client = self.server.connect()
        self.stats.add(online=1, joins=1)
        client.register(peer_id, peer_id, "soak")
        return peer_id, client

    def cycle(self, clean_only: bool) -> None:
        (ida, a), (idb, b) = self.join(), self.join()
        sent = 2
        try:
            for client in (a, b):
                # Until a list shows the other one (lists of other threads' joins come too).
                other = idb if client is a else ida
                while other not in [p["id"] for p in client.expect("peers")["data"]]:
                    pass
            sid = f"{ida}-{idb}"
            a.send(
                "offer",
                {
                    "to": idb,
                    "session_id": sid,
                    "media": "video",
                    "description": {"sdp": SDP, "type": "offer"},
                },
            )
            b.expect("offer")
            b.send("answer", {"to": ida, "session_id": sid, "description": {"sdp": SDP}})
            a.expect("answer")
            sent += 2
            for sender, receiver, to in ((a, b, idb), (b, a, ida)):
                for n in range(3):
                    cand = {"sdpMLineIndex": 0, "sdpMid": "0", "candidate": f"candidate:{n} 1"}
                    sender.send("candidate", {"to": to, "session_id": sid, "candidate": cand})
                for _ in range(3):
                    receiver.expect("candidate")
                sent += 3
            a.send("bye", {"session_id": sid, "from": ida})
            b.expect("bye")
            sent += 1
            self.stats.add(calls=1)
        finally:
            self.stats.add(messages=sent)
            for client in (a, b):
                self.end(client, "clean" if clean_only else None)

    def end(self, client: Client, how: str | None) -> None:
        how = how or self.rng.choice(["clean", "fin", "reset", "ghost"])
        sock = client.ws.sock
        if how == "clean":
            client.close()
        elif how == "ghost":
            # Silent from now on, socket open: the server must drop it (idle_timeout).
            self.ghosts.append((time.monotonic() + 4 * KEEPALIVE + 2, client))
            self.stats.add(ghosts=1)
            return
        elif sock is not None:
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # no close frame: a FIN, or with SO_LINGER 0 a reset
        self.stats.add(online=-1, drops=how != "clean")

    def reap(self, everything: bool = False) -> None:
        """Close the ghosts whose time has come (the server dropped them long before)."""
        now = time.monotonic()
        keep = []
        for when, client in self.ghosts:
            if everything or when <= now:
                if client.ws.sock is not None:
                    client.ws.sock.close()
                self.stats.add(online=-1, drops=1)
            else:
                keep.append((when, client))
        self.ghosts = keep

    def run(self, until: float, clean_only: bool) -> None:
        while time.monotonic() < until:
            try:
                self.cycle(clean_only)
            except Exception as exc:  # counted and shown; the run goes on
                self.stats.error(f"signal {self.name}", exc)
            self.reap()
        self.reap(everything=clean_only)


# -- TURN ---------------------------------------------------------------------------------


class Link:
    """A client's connection to the TURN server, UDP or TCP (RFC 8656 §3.1 framing)."""

    def __init__(self, transport: str, port: int) -> None:
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes | None:
        """One STUN message or ChannelData; None when nothing came in ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                return self.sock.recv(65536)
            while True:
                size = next_frame_length(self.buffer)  # RFC 8656 §12.5 framing
                if size is not None and len(self.buffer) >= size:
                    frame, self.buffer = self.buffer[:size], self.buffer[size:]
                    return frame
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the TURN server closed the connection")
                self.buffer += chunk
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


class Turn:
    """One thread's TURN load: two allocations relaying to each other, over and over."""

    def __init__(self, server: ServerProcess, stats: Stats, name: str, seed: int) -> None:
        self.server = server
        self.stats = stats
        self.name = name
        self.rng = random.Random(seed)
        self.ctx = server.ssl_context()
        # UDP sockets of allocations left to expire stay open until they have: closed, their
        # port could be given to the next socket, whose Allocate would then rightly get 437
        # (the 5-tuple still has an allocation, RFC 8656 §7.2).
        self.parked: list[tuple[float, Link]] = []

    def unpark(self, everything: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for expires, link in self.parked:
            if everything or expires <= now:
                link.close()
            else:
                keep.append((expires, link))
        self.parked = keep

    def credential(self) -> tuple[str, str]:
        url = f"{self.server.base}/api/turn?service=turn&username={self.name}"
        with urllib.request.urlopen(url, context=self.ctx, timeout=10) as reply:
            body = json.load(reply)
        self.stats.add(credentials=1)
        return str(body["username"]), str(body["password"])

    def transact(self, link: Link, client: TurnClient, request: Request) -> Success:
        """``request`` to its success: challenges answered, UDP retransmitted (RFC 8489
        §6.2.1, a shortened schedule for loopback)."""
        for _ in range(8):
            link.send(request.data)
            deadline = time.monotonic() + 1.0
            while (left := deadline - time.monotonic()) > 0:
                data = link.recv(left)
                if data is None:
                    break
                if is_channel_data(data):
                    continue  # late relayed data of this cycle
                event = client.receive(data)
                if isinstance(event, Retry):
                    request = event.request
                    break
                if isinstance(event, Success):
                    return event
            else:
                continue
            if data is None and link.transport == "tcp":
                raise TimeoutError("no answer over TCP")
        raise TimeoutError(f"no success for method {request.method:#x}")

    def relayed(self, link: Link, client: TurnClient, timeout: float = 2) -> bytes | None:
        """The next payload relayed to this client (Data indication or ChannelData)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = link.recv(left)
            if data is None:
                return None
            if is_channel_data(data):
                return decode_channel_data(data)[1]
            event = client.receive(data)
            if isinstance(event, DataIndication):
                return event.data
        return None

    def cycle(self, clean_only: bool) -> None:
        self.unpark()
        username, password = self.credential()
        transports = [self.rng.choice(["udp", "tcp"]) for _ in range(2)]
        links = [Link(t, self.server.turn_port) for t in transports]  # one port, both
        clients = [TurnClient(username, password) for _ in links]
        held = 0
        parked: list[Link] = []
        try:
            for link, client in zip(links, clients, strict=True):
                self.transact(link, client, client.allocate(lifetime=LIFETIME))
                held += 1
                self.stats.add(allocations=1, allocated=1)
            (la, lb), (ca, cb) = links, clients
            assert ca.relayed is not None and cb.relayed is not None
            self.transact(la, ca, ca.create_permission(cb.relayed))
            self.transact(lb, cb, cb.create_permission(ca.relayed))
            self.transact(la, ca, ca.channel_bind(CHANNEL, cb.relayed))
            pad = la.transport == "tcp"
            for n in range(20):
                payload = f"{self.name} {n} ".encode() + os.urandom(100)
                if n % 2:
                    la.send(encode_channel_data(CHANNEL, payload, pad=pad))
                else:
                    la.send(ca.send_indication(cb.relayed, payload))
                got = self.relayed(lb, cb)
                self.stats.add(relayed=1, lost=got != payload)
                lb.send(cb.send_indication(ca.relayed, payload))
                got = self.relayed(la, ca)  # as ChannelData: A bound a channel to B's relay
                self.stats.add(relayed=1, lost=got != payload)
            ending = "refresh" if clean_only else self.rng.choice(["refresh", "close"])
            for link, client in zip(links, clients, strict=True):
                if ending == "refresh":
                    self.transact(link, client, client.refresh(0))
                    self.stats.add(deleted=1)
                elif link.transport == "udp":
                    self.stats.add(left_to_expire=1)
                    parked.append(link)
                else:
                    self.stats.add(closed_with_tcp=1)
        finally:
            self.stats.add(allocations=-held)
            for link in links:
                if link in parked:
                    self.parked.append((time.monotonic() + LIFETIME + 5, link))
                else:
                    link.close()

    def run(self, until: float, clean_only: bool) -> None:
        while time.monotonic() < until:
            try:
                self.cycle(clean_only)
            except Exception as exc:
                self.stats.error(f"turn {self.name}", exc)
        self.unpark(everything=True)


# -- the run ------------------------------------------------------------------------------


def load(
    server: ServerProcess, stats: Stats, seconds: float, clean_only: bool, args: Any, tag: str
) -> None:
    """Run every load thread for ``seconds``; returns when all have stopped."""
    until = time.monotonic() + seconds
    workers: list[Signaling | Turn] = [
        Signaling(server, stats, f"{tag}s{n}", args.seed + n) for n in range(args.signal_threads)
    ]
    workers += [
        Turn(server, stats, f"{tag}t{n}", args.seed + 100 + n) for n in range(args.turn_threads)
    ]
    threads = [threading.Thread(target=w.run, args=(until, clean_only)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
        if thread.is_alive():
            raise RuntimeError("a load thread did not stop")


def settle(pid: int, target: int | None, timeout: float, step: float = 1.0) -> int:
    """Poll the fd count until it is steady for 3 samples (``target`` None) or at most
    ``target``; returns the last count (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    history: list[int] = []
    while True:
        history.append(open_fds(pid))
        if target is None and len(history) >= 3 and len(set(history[-3:])) == 1:
            return history[-1]
        if target is not None and history[-1] <= target:
            return history[-1]
        if time.monotonic() >= deadline:
            return history[-1]
        time.sleep(step)  # polling the server's /proc entry: there is no event to wait on


def sampler(
    pid: int, stats: Stats, interval: float, stop: threading.Event, rows: list[dict[str, Any]]
) -> None:
    start = time.monotonic()
    last = dict(stats.counts)
    last_t = start
    print(
        f"{'t s':>6} {'fds':>5} {'RSS MB':>7} {'online':>6} {'allocs':>6} {'msg/s':>7} "
        f"{'relay/s':>7} {'errors':>6}",
        flush=True,
    )
    while not stop.wait(interval):
        now = time.monotonic()
        with stats.lock:
            counts = dict(stats.counts)
            online, allocations = stats.online, stats.allocations
        span = max(now - last_t, 1e-9)
        row = {
            "t": now - start,
            "fds": open_fds(pid),
            "rss": rss_kb(pid) / 1024,
            "online": online,
            "allocations": allocations,
            "msg_s": (counts.get("messages", 0) - last.get("messages", 0)) / span,
            "relay_s": (counts.get("relayed", 0) - last.get("relayed", 0)) / span,
            "errors": counts.get("errors", 0),
        }
        rows.append(row)
        last, last_t = counts, now
        print(
            f"{row['t']:6.0f} {row['fds']:5d} {row['rss']:7.1f} {online:6d} {allocations:6d} "
            f"{row['msg_s']:7.0f} {row['relay_s']:7.0f} {row['errors']:6d}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load phase")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of warm-up load")
    parser.add_argument("--signal-threads", type=int, default=3)
    parser.add_argument("--turn-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--status-screenshot",
        type=Path,
        metavar="PNG",
        help="turn [metrics] on and, at the end of the load, save a headless Chromium "
        "screenshot of /status there (the README's picture)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flaskrtc-soak-") as tmp:
        server = ServerProcess(
            Path(tmp),
            extra={
                "general.keepalive": str(KEEPALIVE),
                # One client address (127.0.0.1) does everything: no per-IP caps.
                "general.rate_limit": "0",
                "general.max_connections_per_ip": "0",
                "turn.ip_quota": "0",
                "turn.user_quota": "0",
                # Allocations left to expire pile up to about 2000 (60 s of them): no cap.
                "turn.total_quota": "0",
                "turn.unauth_rate": "0",
                "turn.default_lifetime": str(LIFETIME),
                "turn.max_lifetime": str(LIFETIME),
                **(
                    {"metrics.enabled": "true", "metrics.token": STATUS_TOKEN}
                    if args.status_screenshot
                    else {}
                ),
            },
        )
        pid = server.proc.pid
        try:
            return soak(server, pid, args)
        finally:
            server.stop()


STATUS_TOKEN = "soak-status-token-0123456789"


def status_screenshot(server: ServerProcess, after: float, path: Path) -> None:
    """``after`` seconds into the load, a screenshot of /status in headless Chromium."""
    from playwright import sync_api

    from tests.browser import CHROMIUM_FLAGS, chromium_path

    time.sleep(max(0.0, after))
    with sync_api.sync_playwright() as running:
        browser = running.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1100, "height": 420}
            )
            page = context.new_page()
            page.goto(f"{server.base}/status?token={STATUS_TOKEN}")
            page.wait_for_selector("body[data-loaded='1']", timeout=15000)
            page.screenshot(path=str(path))
            print(f"soak: status page screenshot in {path}", flush=True)
        finally:
            browser.close()


def soak(server: ServerProcess, pid: int, args: Any) -> int:
    started = time.monotonic()
    start_fds, start_rss = open_fds(pid), rss_kb(pid) / 1024
    warm = Stats()
    print(
        f"soak: server pid {pid}; at start {start_fds} fds, {start_rss:.1f} MB; "
        f"warm-up {args.warmup:.0f} s (clean endings only)",
        flush=True,
    )
    load(server, warm, args.warmup, True, args, "w")
    base_fds = settle(pid, None, 30)
    base_rss = rss_kb(pid) / 1024
    print(
        f"soak: baseline {base_fds} fds, {base_rss:.1f} MB; load for {args.minutes:g} min",
        flush=True,
    )

    stats = Stats()
    rows: list[dict[str, Any]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=sampler, args=(pid, stats, args.interval, stop, rows))
    watcher.start()
    shooter = None
    if args.status_screenshot:
        shooter = threading.Thread(
            target=status_screenshot, args=(server, args.minutes * 60 - 8, args.status_screenshot)
        )
        shooter.start()
    try:
        load(server, stats, args.minutes * 60, False, args, "")
    finally:
        stop.set()
        watcher.join()
        if shooter is not None:
            shooter.join()
    loaded = time.monotonic()
    # What the load left behind: UDP allocations expire after LIFETIME, ghosts after
    # idle_timeout, lingering closes after 2 s.
    end_fds = settle(pid, base_fds, LIFETIME + 30)
    drained = time.monotonic() - loaded
    end_rss = rss_kb(pid) / 1024
    peak_fds = max([r["fds"] for r in rows] + [base_fds])
    peak_rss = max([r["rss"] for r in rows] + [base_rss])

    log = list(server.lines)
    bad_lines = [line for line in log if " ERROR " in line or "Traceback" in line]
    ghosts_dropped = sum("dropped: nothing received for" in line for line in log)
    c = stats.counts
    # A leak is memory that keeps growing under a steady load; CPython keeps freed arenas,
    # so RSS after the drain stays near its plateau rather than falling back to the baseline.
    # The load is steady once the UDP allocations left to expire come and go at the same
    # rate (after LIFETIME): compare from the later of mid-run and 1.5 lifetimes.
    settled_at = max(args.minutes * 30, LIFETIME * 1.5)
    steady = [r for r in rows if r["t"] >= settled_at]
    mid_rss = steady[0]["rss"] if steady else base_rss
    last_rss = rows[-1]["rss"] if rows else base_rss
    rss_limit = mid_rss + max(3.0, 0.05 * mid_rss)
    checks = {
        "fds back to baseline": end_fds <= base_fds,
        "no ERROR or traceback in the server log": not bad_lines,
        "no client errors": c["errors"] == 0,
        "every ghost dropped by idle_timeout": ghosts_dropped >= c["ghosts"],
    }
    if len(steady) >= 2:
        name = (
            f"RSS flat under steady load (last {last_rss:.1f} <= {mid_rss:.1f} MB at "
            f"{steady[0]['t']:.0f} s + max(3 MB, 5 %))"
        )
        checks[name] = last_rss <= rss_limit
    else:
        print("soak: RSS plateau not checked: the load needs --minutes 3 or more to settle")

    print()
    print(
        f"soak summary ({args.minutes:g} min of load, {(loaded - started) / 60:.1f} min "
        f"with warm-up, drained in {drained:.0f} s)"
    )
    table = [
        ("WebSocket joins", c["joins"]),
        ("calls (offer, answer, 6 candidates, bye)", c["calls"]),
        ("signaling messages sent", c["messages"]),
        ("clients dropped without a clean close (FIN, reset, ghost)", c["drops"]),
        ("ghosts dropped by idle_timeout (server log)", f"{ghosts_dropped} of {c['ghosts']}"),
        ("/api/turn credentials", c["credentials"]),
        ("TURN allocations", c["allocated"]),
        ("  deleted with Refresh(0)", c["deleted"]),
        ("  ended with their TCP connection", c["closed_with_tcp"]),
        ("  left to expire (UDP)", c["left_to_expire"]),
        ("datagrams relayed (client to client)", c["relayed"]),
        ("  lost or wrong", c["lost"]),
        ("client errors", c["errors"]),
        ("server ERROR lines / tracebacks", len(bad_lines)),
        (
            "open fds: start / baseline / peak / end",
            f"{start_fds} / {base_fds} / {peak_fds} / {end_fds}",
        ),
        (
            "RSS MB: start / baseline / peak / end",
            f"{start_rss:.1f} / {base_rss:.1f} / {peak_rss:.1f} / {end_rss:.1f}",
        ),
    ]
    table.append(("RSS MB once steady / at the last sample", f"{mid_rss:.1f} / {last_rss:.1f}"))
    width = max(len(name) for name, _ in table)
    for name, value in table:
        print(f"  {name:<{width}}  {value}")
    for text in stats.errors:
        print(f"  client error: {text}")
    for line in bad_lines[:10]:
        print(f"  server: {line}")
    print()
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'}  {name}")
    passed = all(checks.values())
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
