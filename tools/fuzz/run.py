"""``make fuzz``: a longer fuzzing campaign over the sans-I/O cores, with figures.

    python tools/fuzz/run.py [--minutes 10] [--targets stun-bytes,turn-machine,...]
                             [--engine auto|atheris|hypothesis] [--workdir DIR]

With atheris (``pip install atheris``; it has wheels for CPython 3.11 on Linux x86-64) every
target in tools/fuzz/targets.py runs in its own process under libFuzzer for an equal share of
the time, with flaskrtc's modules instrumented for coverage; a crash is recorded (its input
is kept) and the target restarted for the rest of its time. Without atheris, the hypothesis
tests (tests/unit/test_fuzz_*.py) run in rounds with a large FLASKRTC_FUZZ_EXAMPLES until the
time is up.

Printed: per target the time, executions, executions per second, libFuzzer's coverage
(``cov``: edges, ``ft``: features) and corpus size, how many distinct outcomes the tests
counted, and failures; then the failures' first lines and where their inputs are. Exit 1 on
any failure. The work folder (corpora, logs, crash inputs) is a temporary one, kept when
something failed or when --workdir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MAX_FAILURES_PER_TARGET = 3
# Inputs of the hypothesis targets are choice sequences: give them room.
MAX_LEN = {"raw": 2048, "hypothesis": 8192}
RAW_TARGETS = {"stun-bytes", "turn-bytes", "wsframe-bytes", "signal-bytes"}


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# -- the worker: one target under libFuzzer ---------------------------------------------------


def worker(name: str, seconds: int, corpus: Path, stats: Path, artifacts: Path) -> None:
    """Fuzz target ``name`` for ``seconds`` (never returns: libFuzzer exits the process)."""
    import atheris

    sys.path[:0] = [str(REPO), str(HERE)]
    with atheris.instrument_imports(include=["flaskrtc"]):
        import targets

    target = targets.TARGETS[name]
    state: dict[str, Any] = {"executions": 0, "written": 0.0, "started": time.monotonic()}

    def write(failure: str | None = None) -> None:
        got = targets.outcomes()
        body = {
            "executions": state["executions"],
            "seconds": time.monotonic() - state["started"],
            "outcomes": len(got),
            "top": got.most_common(12),
            "failure": failure,
        }
        stats.write_text(json.dumps(body))
        state["written"] = time.monotonic()

    def one_input(data: bytes) -> None:
        state["executions"] += 1
        try:
            target(data)
        except BaseException as err:
            write(f"{type(err).__name__}: {str(err)[:2000]}")
            raise
        if time.monotonic() - state["written"] > 1.0:
            write()

    kind = "raw" if name in RAW_TARGETS else "hypothesis"
    argv = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-max_len={MAX_LEN[kind]}",
        "-timeout=30",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{name}-",
        str(corpus),
    ]
    atheris.Setup(argv, one_input)
    write()
    atheris.Fuzz()


# -- the campaign ----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    executions: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    outcomes: int = 0
    failures: list[str] = field(default_factory=list)
    top: list[tuple[str, int]] = field(default_factory=list)


STATUS_RE = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")
ARTIFACT_RE = re.compile(r"Test unit written to (\S+)")


def run_target(name: str, seconds: int, work: Path) -> Result:
    """Run one target's worker until its time is used; restart it after a crash."""
    import targets

    result = Result(name)
    corpus = work / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = work / "artifacts"
    artifacts.mkdir(exist_ok=True)
    if not any(corpus.iterdir()):
        for i, seed in enumerate(targets.seeds(name)):
            (corpus / f"seed-{i}").write_bytes(seed)
    deadline = time.monotonic() + seconds
    attempt = 0
    while len(result.failures) < MAX_FAILURES_PER_TARGET:
        left = int(deadline - time.monotonic())
        if left < 5:
            break
        attempt += 1
        stats = work / f"{name}-{attempt}.json"
        log = work / f"{name}-{attempt}.log"
        cmd = [sys.executable, __file__, "--worker", name, "--seconds", str(left)]
        cmd += ["--corpus", str(corpus), "--stats", str(stats), "--artifacts", str(artifacts)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
        started = time.monotonic()
        with log.open("w") as out:
            try:
                proc = subprocess.run(
                    cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=left + 120
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = -1
        result.seconds += time.monotonic() - started
        text = log.read_text(errors="replace")
        statuses = STATUS_RE.findall(text)
        if statuses:
            _runs, cov, ft, corp = map(int, statuses[-1])
            result.cov, result.ft, result.corpus = max(result.cov, cov), max(result.ft, ft), corp
        body: dict[str, Any] = json.loads(stats.read_text()) if stats.exists() else {}
        result.executions += int(body.get("executions", 0))
        result.outcomes = max(result.outcomes, int(body.get("outcomes", 0)))
        result.top = body.get("top", result.top)
        if code != 0:
            reason = body.get("failure") or f"worker exited with {code} (see {log})"
            found = ARTIFACT_RE.search(text)
            where = found.group(1) if found else str(log)
            result.failures.append(f"{reason.splitlines()[0][:300]}  [input: {where}]")
    return result


def run_atheris(names: list[str], minutes: float, work: Path) -> list[Result]:
    share = max(10, int(minutes * 60 / len(names)))
    results = []
    for name in names:
        print(f"fuzz: {name} for {share} s ...", flush=True)
        results.append(run_target(name, share, work))
        r = results[-1]
        print(
            f"fuzz: {name}: {r.executions} executions, cov {r.cov} ft {r.ft}, "
            f"{r.outcomes} outcomes, {len(r.failures)} failure(s)",
            flush=True,
        )
    return results


def run_hypothesis(minutes: float, work: Path, examples: int) -> list[Result]:
    """The fallback: each test file in rounds of ``examples`` examples per test."""
    files = sorted((REPO / "tests" / "unit").glob("test_fuzz_*.py"))
    share = minutes * 60 / len(files)
    results = []
    for path in files:
        result = Result(path.stem)
        deadline = time.monotonic() + share
        rounds = 0
        while time.monotonic() < deadline and len(result.failures) < MAX_FAILURES_PER_TARGET:
            rounds += 1
            env = {**os.environ, "FLASKRTC_FUZZ_EXAMPLES": str(examples)}
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
            cmd.append("--hypothesis-show-statistics")
            started = time.monotonic()
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            result.seconds += time.monotonic() - started
            (work / f"{path.stem}-{rounds}.log").write_text(done.stdout + done.stderr)
            tests = len(re.findall(r"^tests/unit/\S+::", done.stdout, re.M))
            result.executions += sum(
                int(n) for n in re.findall(r"- (\d+) passing examples", done.stdout)
            ) or examples * max(1, tests)
            if done.returncode != 0:
                failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
                result.failures.append(f"round {rounds}: {', '.join(failed) or 'error'}")
        result.outcomes = rounds
        results.append(result)
        print(f"fuzz: {path.stem}: {rounds} rounds, {len(result.failures)} failure(s)", flush=True)
    return results


def report(results: list[Result], engine: str, work: Path, started: float) -> int:
    total = time.monotonic() - started
    print()
    print(f"fuzz campaign ({engine}), {total / 60:.1f} min in all")
    head = f"{'target':24} {'time s':>7} {'execs':>10} {'exec/s':>8} {'cov':>6} {'ft':>7}"
    head += f" {'corpus':>7} {'outcomes':>9} {'failures':>9}"
    print(head)
    for r in results:
        rate = r.executions / r.seconds if r.seconds else 0.0
        print(
            f"{r.name:24} {r.seconds:7.0f} {r.executions:10d} {rate:8.0f} {r.cov:6d} {r.ft:7d}"
            f" {r.corpus:7d} {r.outcomes:9d} {len(r.failures):9d}"
        )
    execs = sum(r.executions for r in results)
    failures = [(r.name, f) for r in results for f in r.failures]
    print(f"{'total':24} {sum(r.seconds for r in results):7.0f} {execs:10d}")
    if engine == "hypothesis":
        print("(hypothesis engine: 'outcomes' is the number of rounds; no coverage figures)")
    for name, failure in failures:
        print(f"FAILURE {name}: {failure}")
    print(f"{'FAIL' if failures else 'PASS'}: {len(failures)} failure(s); work folder {work}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="whole campaign (10)")
    parser.add_argument("--targets", default="", help="comma-separated subset (default all)")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--workdir", type=Path, help="keep corpora, logs, crashes here")
    parser.add_argument("--examples", type=int, default=5000, help="hypothesis engine round")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=60, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.seconds, args.corpus, args.stats, args.artifacts)
        return 0

    sys.path[:0] = [str(REPO), str(HERE)]
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "hypothesis"
        if engine == "hypothesis":
            print("fuzz: atheris is not installed (pip install atheris): hypothesis instead")
    elif engine == "atheris" and not have_atheris():
        print("fuzz: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="flaskrtc-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if engine == "atheris":
        import targets

        names = [n for n in args.targets.split(",") if n] or list(targets.TARGETS)
        unknown = sorted(set(names) - set(targets.TARGETS))
        if unknown:
            parser.error(f"unknown targets {unknown}; known: {', '.join(targets.TARGETS)}")
        results = run_atheris(names, args.minutes, work)
    else:
        results = run_hypothesis(args.minutes, work, args.examples)
    status = report(results, engine, work, started)
    if status == 0 and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
