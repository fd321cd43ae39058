"""Release binary benchmark: size, cold start to the first answered request, idle memory.

Run with ``make bench`` (which builds bin/ first if needed) or
``.venv/bin/python benchmarks/release_bench.py [--binary bin/flaskrtc-linux-amd64] [--runs 5]``.
Prints its figures; asserts nothing. Linux only (reads /proc).

- size: the one-file binary (target <= 40 MB).
- cold start: from spawning the process to the first 200 from ``/api/turn`` over HTTPS,
  polled every 5 ms; median of ``--runs`` starts (target <= 3 s). "First start" runs in an
  empty folder, so it includes generating the certificate and the TURN secret; "restart"
  runs where they already exist. Beside each: the same for ``python -m flaskrtc`` from the
  source tree in this venv, measured in the same run, as the reference.
- idle RSS: a few seconds after start with no clients, summed over the one-file bootloader
  and the Python process it unpacks and starts (the reference is one process).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from procstats import rss_kb  # noqa: E402

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
START_TIMEOUT = 60.0
IDLE_SECONDS = 3.0  # how long a started server sits with no clients before RSS is read

Command = Callable[[int], list[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the one-file bootloader starts a child)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = [pid]
    for current in found:
        found += [child for child, parent in parents.items() if parent == current]
    return found


def start(command: Command, workdir: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``command`` in ``workdir``; return it and the seconds to the first /api/turn 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKRTC_")}
    env.update(FLASKRTC_TURN_BIND="127.0.0.1", FLASKRTC_TURN_TLS_PORT=str(free_port()))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # timing only; the certificate is checked by the tests
    url = f"https://127.0.0.1:{port}/api/turn?service=turn&username=bench"
    began = time.perf_counter()
    proc = subprocess.Popen(
        command(port),
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while time.perf_counter() - began < START_TIMEOUT:
        if proc.poll() is not None:
            raise SystemExit(f"{command(port)[0]} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as reply:
                if reply.status == 200:
                    return proc, time.perf_counter() - began
        except (OSError, urllib.error.URLError):
            time.sleep(0.005)  # not listening yet
    stop(proc)
    raise SystemExit(f"no answer within {START_TIMEOUT:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(command: Command, runs: int) -> dict[str, float]:
    """Median first start and restart times (s), and idle RSS (MB) after the last restart."""
    first: list[float] = []
    again: list[float] = []
    rss_mb = 0.0
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="flaskrtc-bench-") as tmp:
            proc, seconds = start(command, Path(tmp))
            first.append(seconds)
            stop(proc)
            proc, seconds = start(command, Path(tmp))
            again.append(seconds)
            if run == runs - 1:
                time.sleep(IDLE_SECONDS)  # a fixed idle period, not a wait for a condition
                rss_mb = sum(rss_kb(pid) for pid in descendants(proc.pid)) / 1024
            stop(proc)
    return {
        "first": statistics.median(first),
        "first_max": max(first),
        "restart": statistics.median(again),
        "restart_max": max(again),
        "rss": rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", type=Path, default=REPO / "bin" / f"flaskrtc-linux-{ARCH}")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    binary: Path = args.binary.resolve()
    if not binary.is_file():
        raise SystemExit(f"{binary} does not exist: run `make linux` first")

    def frozen(port: int) -> list[str]:
        return [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--turn-port", "0"]

    def source(port: int) -> list[str]:
        return [sys.executable, "-m", "flaskrtc", *frozen(port)[1:]]

    os.environ["PYTHONPATH"] = str(REPO)  # the reference runs this tree's flaskrtc
    size_mb = binary.stat().st_size / 1e6
    print(f"release binary {binary.name}, {args.runs} runs each, medians (max)")
    print(f"  size:                  {size_mb:.1f} MB (target <= 40 MB)")
    bin_figures = measure(frozen, args.runs)
    ref_figures = measure(source, args.runs)
    rows = (
        ("first start, empty folder", "first", "s"),
        ("restart, cert+secret exist", "restart", "s"),
    )
    for label, key, _ in rows:
        b, r = bin_figures[key], ref_figures[key]
        print(
            f"  {label}: binary {b:.2f} s (max {bin_figures[key + '_max']:.2f}), "
            f"python -m flaskrtc {r:.2f} s (max {ref_figures[key + '_max']:.2f}), "
            f"ratio {b / r:.2f}x (target <= 3 s)"
        )
    b, r = bin_figures["rss"], ref_figures["rss"]
    print(
        f"  idle RSS after {IDLE_SECONDS:.0f} s: binary {b:.1f} MB (bootloader + Python), "
        f"python -m flaskrtc {r:.1f} MB, ratio {b / r:.2f}x"
    )


if __name__ == "__main__":
    main()
