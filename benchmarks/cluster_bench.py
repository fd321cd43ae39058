"""Signaling with a cluster: 1 process vs 2 workers with Redis, and cross- vs same-instance.

Uses signal_bench's clients (raw WebSocket peers in gevent, over TLS by default) against
``python -m flaskrtc`` processes on 127.0.0.1 and a ``redis-server`` this run starts on a
free loopback port (Debian package redis-server). Prints, side by side in one run:

(a) offer/answer forwarding (signal_bench's ping-pong of P pairs): one process without a
    cluster (today's default) vs ``workers = 2`` with ``[cluster] redis_url``; messages/s,
    latency, server CPU per message (the parent and both workers) and the ratio.
(b) the join storm (N peers over S seconds): the same two servers; when every peer held the
    complete list, bytes sent, keepalive round trips, server CPU.
(c) forwarding latency at a light load (a few pairs): two flaskrtc instances (one process
    each) sharing one Redis, each pair's two peers on the same instance vs on different
    instances, beside one process without a cluster; p50/p99 and the ratio cross/same.

Asserts nothing; all traffic stays on 127.0.0.1. On a 2-core machine the clients, Redis and
two workers share the cores: say so when comparing.

Run: ``.venv/bin/python benchmarks/cluster_bench.py [--transport plain] [--pairs 100]``.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import signal_bench as sb  # noqa: E402


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """redis-server on a free loopback port, answering PING: (process, url)."""
    import socket

    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("cluster_bench: redis-server is not installed (Debian: redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("cluster_bench: redis-server did not answer")


class Servers:
    """Starts flaskrtc instances under one temporary folder (one certificate for all)."""

    def __init__(self, root: Path, tls: bool, redis_url: str) -> None:
        self.root, self.tls, self.redis_url = root, tls, redis_url
        self.certs = root / "certs"
        self.count = 0

    def start(self, workers: int = 1, cluster: bool = False) -> tuple[Any, sb.Target]:
        self.count += 1
        workdir = self.root / f"s{self.count}"
        workdir.mkdir()
        extra = f"[cluster]\nredis_url = {self.redis_url}\n" if cluster else ""
        return sb.start_server(
            workdir, self.tls, sb.REPO, workers=workers, extra=extra, certs=self.certs
        )


def row(label: str, r: dict[str, float], note: str = "") -> None:
    print(
        f"    {label:24} {r['msgs_per_s']:7.0f} msg/s  p50 {r['p50_ms']:6.2f} ms"
        f"  p99 {r['p99_ms']:6.2f} ms  server CPU {r['cpu_us']:6.1f} µs/msg"
        f" ({r['cpu_share'] * 100:3.0f}% of a core){note}",
        flush=True,
    )


def storm_row(label: str, s: dict[str, float]) -> None:
    print(
        f"    {label:24} complete: {'yes' if s['complete'] else 'NO'},"
        f" {s['all_complete_after_last_join_s']:.2f} s after the last join;"
        f" sent {s['sent_mb']:.0f} MB; keepalive p50/p99 {s['rtt_p50_ms']:.1f}/"
        f"{s['rtt_p99_ms']:.1f} ms; server CPU {s['cpu_s']:.2f} s",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--transport", choices=("tls", "plain"), default="tls")
    parser.add_argument("--only", choices=("forwarding", "storm", "latency"))
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sdp-bytes", type=int, default=1500)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=5.0)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--latency-pairs", type=int, default=5)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = args.transport == "tls"
    print(
        f"cluster_bench: {os.cpu_count()} cores shared by clients, Redis and the servers;"
        f" {'TLS (wss)' if tls else 'plain (ws)'}",
        flush=True,
    )
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis, url = start_redis(root)
        servers = Servers(root, tls, url)
        try:
            if args.only in (None, "forwarding"):
                print(f"(a) forwarding, {args.pairs} pairs, {args.seconds:g} s", flush=True)
                got = {}
                for label, workers, cluster in (
                    ("1 process, no cluster", 1, False),
                    ("2 workers + Redis", 2, True),
                ):
                    proc, target = servers.start(workers, cluster)
                    try:
                        got[label] = sb.forwarding(
                            target, args.pairs, args.seconds, args.sdp_bytes, proc.pid
                        )
                    finally:
                        sb.stop(proc)
                    row(label, got[label])
                one, two = got["1 process, no cluster"], got["2 workers + Redis"]
                line = (
                    f"forwarding: 2 workers / 1 process: throughput"
                    f" {two['msgs_per_s'] / one['msgs_per_s']:.2f}, CPU per message"
                    f" {two['cpu_us'] / one['cpu_us']:.2f}"
                )
                print("    " + line, flush=True)
                summary.append(line)
            if args.only in (None, "storm"):
                print(f"(b) join storm, {args.peers} peers over {args.spread:g} s", flush=True)
                storms = {}
                for label, workers, cluster in (
                    ("1 process, no cluster", 1, False),
                    ("2 workers + Redis", 2, True),
                ):
                    proc, target = servers.start(workers, cluster)
                    try:
                        cert = servers.certs / "cert.pem" if tls else None
                        storms[label] = sb.join_storm(
                            target, args.peers, args.spread, args.probes, proc.pid, cert
                        )
                    finally:
                        sb.stop(proc)
                    storm_row(label, storms[label])
                one_s, two_s = storms["1 process, no cluster"], storms["2 workers + Redis"]
                line = (
                    f"storm: 2 workers + Redis {two_s['all_complete_after_last_join_s']:.2f} s,"
                    f" p99 {two_s['rtt_p99_ms']:.1f} ms vs 1 process"
                    f" {one_s['all_complete_after_last_join_s']:.2f} s,"
                    f" p99 {one_s['rtt_p99_ms']:.1f} ms"
                )
                print("    " + line, flush=True)
                summary.append(line)
            if args.only in (None, "latency"):
                n = args.latency_pairs
                print(
                    f"(c) forwarding latency, {n} pairs (a light load), {args.seconds:g} s",
                    flush=True,
                )
                lat = {}
                proc, target = servers.start()
                try:
                    lat["1 process, no cluster"] = sb.forwarding(
                        target, n, args.seconds, args.sdp_bytes, proc.pid
                    )
                finally:
                    sb.stop(proc)
                row("1 process, no cluster", lat["1 process, no cluster"])
                (pa, ta), (pb, tb) = servers.start(cluster=True), servers.start(cluster=True)
                try:
                    lat["same instance"] = sb.forwarding(
                        ta, n, args.seconds, args.sdp_bytes, pa.pid, others=(pb.pid,)
                    )
                    row("cluster, same instance", lat["same instance"])
                    lat["cross instance"] = sb.forwarding(
                        ta, n, args.seconds, args.sdp_bytes, pa.pid, target_b=tb, others=(pb.pid,)
                    )
                    row("cluster, cross instance", lat["cross instance"])
                finally:
                    sb.stop(pa)
                    sb.stop(pb)
                same, cross = lat["same instance"], lat["cross instance"]
                line = (
                    f"latency: cross-instance p50/p99 {cross['p50_ms']:.2f}/{cross['p99_ms']:.2f}"
                    f" ms vs same-instance {same['p50_ms']:.2f}/{same['p99_ms']:.2f} ms"
                    f" (ratio p50 {cross['p50_ms'] / same['p50_ms']:.2f}, p99"
                    f" {cross['p99_ms'] / same['p99_ms']:.2f}); no cluster"
                    f" {lat['1 process, no cluster']['p50_ms']:.2f}/"
                    f"{lat['1 process, no cluster']['p99_ms']:.2f} ms"
                )
                print("    " + line, flush=True)
                summary.append(line)
        finally:
            redis.terminate()
            redis.wait(10)
    print("summary")
    for line in summary:
        print("    " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
