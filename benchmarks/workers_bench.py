"""TURN relay throughput with [general] workers: 1 worker vs 2 workers vs coturn.

Starts ``python -m flaskrtc`` with one worker, the same with ``workers = 2`` (and a
``redis-server`` on a free loopback port when the cluster needs one), and coturn's
``turnserver`` with its default relay threads, all on 127.0.0.1 with the same secret, and
drives each with the same ``turnutils_uclient -y`` loads (client to client, ChannelData):

(a) the issue's load on the whole machine: one uclient, 10 sessions, as fast as it sends
    (``-m 10 -z 0``); the loss (goal for one worker: <= 1%).
(b) the most each server carries at <= 1% loss: sessions at ``-z 1`` (spread over uclients
    of 10 sessions at most: one uclient paces itself and cannot saturate a core), up by a
    quarter at a time until a load loses more, then bisected; its rate, and the ratios
    2 workers / 1 worker (goal >= 1.5) and coturn / 1 worker.
    On a small machine the load generator shares the cores with the servers and cannot
    saturate two workers, so by default each worker gets ``--core-share`` of a core (a CFS
    quota in a cgroup of its own; coturn the same per relay thread): a machine with a core
    per worker, scaled down. ``--core-share 0`` runs uncapped.

Rates are messages received by the clients per second while they were sending (from
uclient's once-a-second totals; its wall time also holds its allocations and the seconds it
waits at the end for lost messages); the CPU is the server processes'. Asserts nothing; all
traffic stays on 127.0.0.1; the cgroups are removed at the end, also on failure.

Run: ``.venv/bin/python benchmarks/workers_bench.py [--core-share 0.2] [--max-sessions 80]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
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


class CpuCap:
    """Linux CFS quotas that give each server process ``share`` of one core (10 ms periods):
    a machine with a core per worker, modelled on a small one, so that the load generator,
    which shares the machine, can saturate the servers. cgroup v2 (``cpu.max``) or v1's
    cpu controller; root only. Each group is removed by :meth:`close`."""

    PERIOD_US = 10_000

    def __init__(self, share: float) -> None:
        self.share = share
        self.groups: list[Path] = []
        v2 = Path("/sys/fs/cgroup")
        controllers = v2 / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            self.root, self.v2 = v2, True
            (v2 / "cgroup.subtree_control").write_text("+cpu")
        elif (v2 / "cpu" / "cpu.cfs_quota_us").exists():
            self.root, self.v2 = v2 / "cpu", False
        else:
            raise OSError("no cgroup cpu controller")

    @staticmethod
    def available() -> str | None:
        """None if quotas can be set here, else why not."""
        if os.geteuid() != 0:
            return "not root"
        try:
            cap = CpuCap(0.5)
            cap.limit([])
            cap.close()
        except OSError as err:
            return f"no writable cgroup cpu controller ({err})"
        return None

    def limit(self, pids: list[int], cores: float | None = None) -> Path:
        """A group of ``cores`` (default ``share``) of CPU time holding ``pids`` (with their
        threads)."""
        group = self.root / f"flaskrtc-bench-{os.getpid()}-{len(self.groups)}"
        group.mkdir()
        self.groups.append(group)
        quota = int((cores if cores is not None else self.share) * self.PERIOD_US)
        if self.v2:
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        return group

    def close(self) -> None:
        """Move what is left back to the root group and remove every group."""
        for group in self.groups:
            try:
                for pid in (group / "cgroup.procs").read_text().split():
                    try:
                        (self.root / "cgroup.procs").write_text(pid)
                    except OSError:
                        pass  # exited meanwhile
                group.rmdir()
            except OSError:
                pass
        self.groups.clear()


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


def measure(
    uclient: str,
    server: tb.Server,
    pids: list[int],
    args: argparse.Namespace,
    sessions: list[int],
    interval: int,
) -> dict[str, float]:
    """One load against ``server``: a uclient per item of ``sessions`` with that many
    sessions, at ``interval`` ms; the uclient totals, the rate relayed and the CPU seconds
    of ``pids``."""
    run = argparse.Namespace(
        messages=args.messages,
        interval=interval,
        uclient_timeout=args.uclient_timeout,
        # -c: no RTCP allocation (EVEN-PORT's reservation, then an Allocate with its
        # RESERVATION-TOKEN from another socket, which the kernel may hash to the other
        # worker: 508 there). WebRTC never uses it.
        extra=["-c"],
    )
    before = [cpu_seconds(p) for p in pids]
    result = tb.run_uclient(uclient, server.port, args.length, run, sessions)
    result["cpu"] = sum(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
    if result["rate"] != result["rate"]:  # too short a run to tell: over the wall time
        result["rate"] = result["received"] / result["seconds"]
    return result


def line(name: str, label: str, result: dict[str, float]) -> str:
    return (
        f"  {name:12} {label}: {result['rate']:8.0f} msgs/s relayed, lost"
        f" {result['lost_pct']:5.2f}%, server CPU {result['cpu']:5.2f} s"
        f" ({result['received']:.0f}/{result['sent']:.0f} in {result['seconds']:.1f} s)"
    )


def search(run: Callable[[int], bool], start: int, limit: int, bisections: int) -> None:
    """Find the most sessions ``run`` carries at <= 1% loss: up by a quarter at a time from
    ``start`` until a load fails (or ``limit``), then ``bisections`` halvings between the
    last load that passed and the first that failed."""
    good, bad = 0, None
    sessions = start
    while sessions <= limit:
        if run(sessions):
            good = sessions
            sessions = max(sessions + 1, sessions * 5 // 4)
        else:
            bad = sessions
            break
    for _ in range(bisections):
        if bad is None or bad - good <= 1:
            return
        middle = (good + bad) // 2
        if run(middle):
            good = middle
        else:
            bad = middle


def spread(sessions: int, per_uclient: int) -> list[int]:
    """``sessions`` over as few uclients as hold ``per_uclient`` each, as evenly as can be:
    the sessions of each uclient."""
    count = -(-sessions // per_uclient)
    return [sessions // count + (1 if i < sessions % count else 0) for i in range(count)]


def capacity(
    name: str,
    workers: int,
    server: tb.Server,
    uclient: str,
    args: argparse.Namespace,
    share: float,
) -> float:
    """The highest rate ``server`` relays at <= 1% loss (0 if none), found by :func:`search`,
    with each of its workers (or coturn's relay threads) capped at ``share`` of a core."""
    pids = children(server.pid)
    best = 0.0
    cap = CpuCap(share) if share else None
    try:
        if cap is not None:
            if workers == 0:  # coturn: one process, a relay thread per CPU
                cap.limit([server.pid], share * (os.cpu_count() or 1))
            else:  # each worker (the parent of several only watches them)
                for pid in pids[1:] if workers > 1 else pids:
                    cap.limit([pid])

        def run(sessions: int) -> bool:
            nonlocal best
            load = spread(sessions, args.per_uclient)
            result = measure(uclient, server, pids, args, load, args.interval)
            label = f"-z {args.interval}, {sessions:3} sessions in {len(load)} uclient(s)"
            print(line(name, label, result), flush=True)
            if result["lost_pct"] > 1.0:
                return False
            best = max(best, result["rate"])
            return True

        search(run, args.start_sessions, args.max_sessions, args.bisections)
    finally:
        if cap is not None:
            cap.close()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--per-uclient", type=int, default=10, help="sessions per uclient at most (its -m)"
    )
    parser.add_argument("--messages", type=int, default=4000, help="uclient -n")
    parser.add_argument("--interval", type=int, default=1, help="uclient -z in the search, ms")
    parser.add_argument("--start-sessions", type=int, default=10, help="the search's first load")
    parser.add_argument("--max-sessions", type=int, default=120, help="the search's last load")
    parser.add_argument("--bisections", type=int, default=3, help="halvings after the climb")
    parser.add_argument(
        "--core-share",
        type=float,
        default=0.2,
        help="the search caps each worker (and coturn's each relay thread) at this share of a"
        " core with a CFS quota, so that the load generator can saturate them on a small"
        " machine; 0: no cap (a machine with cores to spare, or a load from another host)",
    )
    parser.add_argument("--length", type=int, default=100, help="uclient -l")
    parser.add_argument("--uclient-timeout", type=float, default=180.0)
    args = parser.parse_args()
    # SIGTERM ends the run through the finally blocks: servers stopped, cgroups removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    turnserver, uclient = shutil.which("turnserver"), shutil.which("turnutils_uclient")
    if turnserver is None or uclient is None:
        print("coturn's turnserver / turnutils_uclient not installed (Debian package coturn)")
        return 1
    share = args.core_share
    if share > 0:
        why = CpuCap.available()
        if why is not None:
            print(f"--core-share {share:g} needs CPU quotas ({why}): the search runs uncapped")
            share = 0.0
    cores = os.cpu_count() or 1
    print(
        f"uclient -y -c -n {args.messages} -l {args.length}, {args.per_uclient} sessions per"
        f" uclient at most; {cores} CPUs"
        " shared with uclient"
    )
    best: dict[str, float] = {}
    issue_load: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis, url = start_redis(Path(tmp))
        try:
            makers: list[tuple[str, int, Callable[[Path], tb.Server]]] = [
                ("flaskrtc 1w", 1, lambda d: start_flaskrtc(d, 1, url)),
                ("flaskrtc 2w", 2, lambda d: start_flaskrtc(d, 2, url)),
                ("coturn", 0, lambda d: tb.start_coturn(turnserver, d, relay_threads=None)),
            ]
            print("(a) the issue's load on the whole machine: one uclient -m 10 -z 0")
            servers = []
            for name, workers, make in makers:
                workdir = Path(tmp) / name.replace(" ", "-")
                workdir.mkdir()
                servers.append((name, workers, make(workdir)))
            try:
                for name, _workers, server in servers:
                    pids = children(server.pid)
                    result = measure(uclient, server, pids, args, [10], interval=0)
                    issue_load[name] = result
                    print(line(name, "-m 10 -z 0, 1 uclient", result), flush=True)
                if share:
                    print(
                        f"(b) the most carried at <= 1% loss, each worker capped at {share:g}"
                        f" of a core (CFS quota), coturn at {share:g} per relay thread"
                        f" ({cores} threads)"
                    )
                else:
                    print("(b) the most carried at <= 1% loss, uncapped")
                for name, workers, server in servers:
                    best[name] = capacity(name, workers, server, uclient, args, share)
            finally:
                for _name, _workers, server in servers:
                    server.stop()
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait(10)
    print("\nsummary")
    print("  the issue's load (one uclient -m 10 -z 0), loss:")
    for name, result in issue_load.items():
        goal = "  (goal for 1 worker <= 1%)" if name == "flaskrtc 1w" else ""
        print(f"    {name:12} {result['lost_pct']:5.2f}%{goal}")
    capped = f", each worker capped at {share:g} core" if share else ""
    print(f"  highest rate at <= 1% loss{capped}:")
    for name in ("flaskrtc 1w", "flaskrtc 2w", "coturn"):
        print(f"    {name:12} {best.get(name, 0.0):8.0f} msgs/s")
    one = best.get("flaskrtc 1w", 0.0)
    if one:
        print(
            f"  ratio 2 workers / 1 worker {best.get('flaskrtc 2w', 0.0) / one:.2f} (goal >= 1.5);"
            f" coturn / 1 worker {best.get('coturn', 0.0) / one:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
