"""TURN relay throughput with [general] workers: 1 worker vs 2 workers vs coturn.

Starts ``python -m flaskrtc`` with one worker, the same with ``workers = 2`` (and a
``redis-server`` on a free loopback port when the cluster needs one), and coturn's
``turnserver`` with its default relay threads, all on 127.0.0.1 with the same secret, and
drives each with the same ``turnutils_uclient -y`` loads (client to client, ChannelData),
faster and faster: per-session intervals ``--intervals`` ms with ``--clients`` sessions.
Prints, per server and load, the messages relayed per second (received by the clients over
the wall time), the loss, and the server's CPU; then the highest rate each carried at <= 1%
loss and the ratios 2 workers / 1 worker and coturn / 1 worker. Asserts nothing; all traffic
stays on 127.0.0.1. The machine's cores are shared with uclient itself: on 2 cores, a second
worker competes with the load generator (say so when comparing).

Run: ``.venv/bin/python benchmarks/workers_bench.py [--messages 500 --intervals 5,2,1,0]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import turn_bench as tb
from procstats import cpu_seconds


def children(pid: int) -> list[int]:
    """``pid`` and its child processes (a parent of workers and the workers)."""
    try:
        found = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
    except FileNotFoundError:
        found = []
    return [pid, *(int(p) for p in found)]


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """redis-server on a free loopback port, if installed: (process, url) or (None, "")."""
    server = shutil.which("redis-server")
    if server is None:
        return None, ""
    port = tb.free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_flaskrtc(workdir: Path, workers: int, redis_url: str) -> tb.Server:
    """flaskrtc with ``workers`` workers, TURN on 127.0.0.1, quotas off; once every worker
    says it listens."""
    port = tb.free_port()
    cluster = f"[cluster]\nredis_url = {redis_url}\n" if workers > 1 else ""
    config = workdir / "config.ini"
    config.write_text(
        f"[general]\nbind = 127.0.0.1\nport = 0\ntls = false\nworkers = {workers}\n"
        f"html_root = {tb.REPO / 'web'}\nlog_level = INFO\n"
        "rate_limit = 0\nmax_connections_per_ip = 0\n"
        f"[turn]\nsecret = {tb.SECRET}\npublic_ip = 127.0.0.1\nbind = 127.0.0.1\n"
        f"port = {port}\ntls_port = 0\nallowed_peer_ip = 127.0.0.1\n"
        "min_port = 40000\nmax_port = 49999\n"
        "user_quota = 0\ntotal_quota = 0\nip_quota = 0\nunauth_rate = 0\n" + cluster
    )
    env = {**os.environ, "PYTHONPATH": str(tb.REPO), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "flaskrtc", "--config", str(config)]
    server = tb.Server(f"flaskrtc {workers}w", command, workdir, env)
    server.port = port
    if workers == 1:
        server.wait_for(tb.TURN_RE, 30)
    for n in range(1, workers + 1 if workers > 1 else 1):
        server.wait_for(re.compile(rf"w{n}/server  turn: listening on"), 30)
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="uclient -m")
    parser.add_argument("--messages", type=int, default=2000, help="uclient -n")
    parser.add_argument("--intervals", default="5,1,0", help="uclient -z values, ms")
    parser.add_argument("--length", type=int, default=100, help="uclient -l")
    parser.add_argument("--uclient-timeout", type=float, default=120.0)
    args = parser.parse_args()
    turnserver, uclient = shutil.which("turnserver"), shutil.which("turnutils_uclient")
    if turnserver is None or uclient is None:
        print("coturn's turnserver / turnutils_uclient not installed (Debian package coturn)")
        return 1
    intervals = [int(x) for x in args.intervals.split(",")]
    print(
        f"uclient -y -c -m {args.clients} -n {args.messages} -l {args.length}, -z in {intervals};"
        f" {os.cpu_count()} CPUs shared with uclient"
    )
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis, url = start_redis(Path(tmp))
        try:
            makers: list[tuple[str, Callable[[Path], tb.Server]]] = [
                ("flaskrtc 1w", lambda d: start_flaskrtc(d, 1, url)),
                ("flaskrtc 2w", lambda d: start_flaskrtc(d, 2, url)),
                ("coturn", lambda d: tb.start_coturn(turnserver, d, relay_threads=None)),
            ]
            for name, make in makers:
                workdir = Path(tmp) / name.replace(" ", "-")
                workdir.mkdir()
                server = make(workdir)
                try:
                    pids = children(server.pid)
                    for interval in intervals:
                        run = argparse.Namespace(
                            clients=args.clients,
                            messages=args.messages,
                            interval=interval,
                            uclient_timeout=args.uclient_timeout,
                            # -c: no RTCP allocation (EVEN-PORT's reservation, then an Allocate
                            # with its RESERVATION-TOKEN from another socket, which the kernel
                            # may hash to the other worker: 508 there). WebRTC never uses it.
                            extra=["-c"],
                        )
                        before = [cpu_seconds(p) for p in pids]
                        result = tb.run_uclient(uclient, server.port, args.length, run)
                        cpu = sum(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
                        rate = result["received"] / result["seconds"]
                        print(
                            f"  {name:12} -z {interval}: {rate:8.0f} msgs/s relayed, lost"
                            f" {result['lost_pct']:5.2f}%, server CPU {cpu:5.2f} s"
                            f" ({result['received']:.0f}/{result['sent']:.0f} in"
                            f" {result['seconds']:.1f} s)",
                            flush=True,
                        )
                        if result["lost_pct"] <= 1.0:
                            best[name] = max(best.get(name, 0.0), rate)
                finally:
                    server.stop()
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait(10)
    print("\nhighest rate at <= 1% loss:")
    for name in ("flaskrtc 1w", "flaskrtc 2w", "coturn"):
        print(f"  {name:12} {best.get(name, 0.0):8.0f} msgs/s")
    one = best.get("flaskrtc 1w", 0.0)
    if one:
        print(
            f"  ratio 2 workers / 1 worker {best.get('flaskrtc 2w', 0.0) / one:.2f} (goal >= 1.5);"
            f" coturn / 1 worker {best.get('coturn', 0.0) / one:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
