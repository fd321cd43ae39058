"""``make mutation``: a small mutation tester of flaskrtc's sans-I/O cores.

    python tools/mutate.py [--module flaskrtc/turn/stun.py ...] [--max-mutants N]
                           [--report FILE] [--threshold 90] [--jobs 2] [--seed 0]

Each mutant is one small change to one module's source (a comparison or boolean operator
flipped, ``not`` dropped, ``+`` turned into ``-``, an integer constant bumped, a ``return X``
turned into ``return None``, a ``raise`` removed, ...). The module's unit tests (``TESTS``
below) then run in a subprocess against a temporary copy of the repository holding the
mutant; the files of /work/main are never written. A mutant is killed when the tests fail
or time out, and survives when they pass: a survivor is a rule the tests do not state.

Printed per module: mutants, killed (timeouts included), survived, timeouts and the score
(killed / mutants, equivalent mutants left out); exit 1 when a module scores below
--threshold. --max-mutants samples N mutants per module, one from each of N equal strata
of the module's mutants in source order, with a fixed seed: a run is repeatable.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a worker's copy of the repository holds (the unit tests need no more).
COPY = ("flaskrtc", "tests/unit", "tests/__init__.py", "tests/conftest.py", "configs")
COPY_FILES = ("pyproject.toml",)

# Module -> the unit tests that exercise it (fast ones first: pytest stops at the first failure).
TESTS: dict[str, list[str]] = {
    "flaskrtc/turn/stun.py": ["test_stun.py", "test_turn_auth.py", "test_fuzz_stun.py"],
    "flaskrtc/turn/allocation.py": [
        "test_turn_core.py",
        "test_relay_addressing.py",
        "test_fuzz_turn_core.py",
    ],
    "flaskrtc/turn/core.py": [
        "test_turn_core.py",
        "test_turn_client.py",
        "test_fuzz_turn_core.py",
        "test_metrics.py",  # its counts (TurnStats)
    ],
    "flaskrtc/turn/credentials.py": ["test_credentials.py", "test_turn_auth.py"],
    "flaskrtc/turn/auth.py": ["test_turn_auth.py", "test_turn_core.py"],
    "flaskrtc/turn/policy.py": ["test_turn_policy.py", "test_turn_core.py"],
    "flaskrtc/turn/ratelimit.py": ["test_turn_ratelimit.py"],
    "flaskrtc/signal/protocol.py": ["test_protocol.py", "test_fuzz_signal.py"],
    "flaskrtc/signal/hub.py": [
        "test_hub.py",
        "test_fuzz_signal.py",
        "test_metrics.py",  # its counts (SignalStats)
        "test_cluster.py",  # the paths with a Remote
    ],
    "flaskrtc/signal/wsframe.py": ["test_wsframe.py", "test_fuzz_wsframe.py"],
}

# Mutants that cannot change behaviour: (module, original line, mutated line) -> why.
# Lines are compared stripped, so the entries survive edits elsewhere in the module.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("flaskrtc/turn/stun.py", "if n < 4:", "if (n <= 4):"): (
        "a 4-byte address fails the family/length check next: StunError either way, and its "
        "text is never sent (a 400 carries the standard reason)"
    ),
    ("flaskrtc/turn/stun.py", "if family not in (1, 2):", "if family not in (2, 2):"): (
        "family 1 with a bad length: StunError either way, only its unsent text differs"
    ),
    (
        "flaskrtc/turn/stun.py",
        "family = value[0] if value else 0",
        "family = value[0] if value else 1",
    ): "an empty value is refused by _unpack_error_code on the next line",
    ("flaskrtc/turn/core.py", "return {}", "return None"): (
        "a handler's attributes go to Message.response, which takes None as {}"
    ),
    ("flaskrtc/turn/policy.py", "return False", "return None"): (
        "private predicates (_member, _denied6) whose result is only ever truth-tested"
    ),
    (
        "flaskrtc/signal/hub.py",
        "seen: int = -1  # the list version this peer was last sent",
        "seen: int = -2  # the list version this peer was last sent",
    ): "seen is only compared with != to a version that starts at 0 and grows",
    (
        "flaskrtc/signal/hub.py",
        "self._version = 0  # bumped on every change to the list",
        "self._version = 1  # bumped on every change to the list",
    ): "the version is only compared with != (seen starts at -1)",
    ("flaskrtc/signal/hub.py", "self._version += 1", "self._version += 2"): (
        "the version is only compared with !=: any increment works"
    ),
    (
        "flaskrtc/signal/hub.py",
        'raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover',
        "pass  # pragma: no cover",
    ): "unreachable: parse() returns one of the handled request types",
    (
        "flaskrtc/signal/wsframe.py",
        "key = (mask * ((n + 3) >> 2))[:n]",
        "key = (mask * ((n + 4) >> 2))[:n]",
    ): "one more repetition of the mask, cut to n bytes by [:n]",
    ("flaskrtc/signal/wsframe.py", "elif pos < len(buf):", "elif (pos <= len(buf)):"): (
        "at pos == len(buf) it appends an empty slice"
    ),
    ("flaskrtc/signal/wsframe.py", "if len(raw) > limit:", "if (len(raw) >= limit):"): (
        "a reason of exactly limit bytes is cut to limit bytes: unchanged"
    ),
}

COMPARE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
ARITH: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}
LOGGERS = {"log", "logger", "_log", "_logger", "LOG", "logging"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


@dataclass(frozen=True)
class Mutant:
    """Replace the source span (lineno, col)-(end_lineno, end_col) with ``replacement``."""

    module: str
    lineno: int
    col: int
    end_lineno: int
    end_col: int
    replacement: str
    description: str
    wrap: bool = False  # an expression: parenthesized, so precedence holds wherever it sits

    def apply(self, source: str) -> str:
        """``source`` with this mutation; line numbers are kept (columns are UTF-8 bytes)."""
        lines = source.encode().splitlines(keepends=True)
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line))
        data = source.encode()
        begin = starts[self.lineno - 1] + self.col
        end = starts[self.end_lineno - 1] + self.end_col
        pad = "\n" * (self.end_lineno - self.lineno)
        new = f"({self.replacement}{pad})" if self.wrap else self.replacement + pad
        return (data[:begin] + new.encode() + data[end:]).decode()

    def lines(self, source: str) -> tuple[str, str]:
        """The original and the mutated source line, stripped."""
        original = source.splitlines()[self.lineno - 1].strip()
        mutated = self.apply(source).splitlines()[self.lineno - 1].strip()
        return original, mutated


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_stub(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A Protocol method: a docstring and ``...``; its defaults never run."""
    return all(
        isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) for stmt in node.body
    )


def _is_log_call(node: ast.Call) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr in LOG_METHODS
        and isinstance(func.value, ast.Name)
        and func.value.id in LOGGERS
    )


def _is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))
    )


class _Finder(ast.NodeVisitor):
    """Collects the mutants of one module, in source order."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.mutants: list[Mutant] = []

    def _add(self, node: ast.AST, new: ast.AST | str, description: str, wrap: bool) -> None:
        text = new if isinstance(new, str) else ast.unparse(new)
        self.mutants.append(
            Mutant(
                self.module,
                node.lineno,  # type: ignore[attr-defined]
                node.col_offset,  # type: ignore[attr-defined]
                node.end_lineno,  # type: ignore[attr-defined]
                node.end_col_offset,  # type: ignore[attr-defined]
                text,
                description,
                wrap,
            )
        )

    # -- what is not mutated -----------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name == "__repr__" or _is_stub(node):
            return
        self.visit(node.args)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for stmt in node.body:  # not the decorators (dataclass options) nor the bases
            self.visit(stmt)

    def visit_arg(self, node: ast.arg) -> None:
        return  # annotations only

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            return
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return

    # -- the operators -----------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        if not _is_log_call(node):
            self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if not (isinstance(node.left, ast.Name) and node.left.id == "__name__"):
            for i, op in enumerate(node.ops):
                swap = COMPARE.get(type(op))
                if swap is not None:
                    ops = [*node.ops[:i], swap(), *node.ops[i + 1 :]]
                    new = ast.Compare(node.left, ops, node.comparators)
                    self._add(node, new, f"{type(op).__name__} -> {swap.__name__}", True)
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        swap: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        name = "and -> or" if isinstance(node.op, ast.And) else "or -> and"
        self._add(node, ast.BoolOp(swap, node.values), name, True)
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self._add(node, node.operand, "not x -> x", True)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = ARITH.get(type(node.op))
        if swap is not None and not (_is_str(node.left) or _is_str(node.right)):
            new = ast.BinOp(node.left, swap(), node.right)
            self._add(node, new, f"{type(node.op).__name__} -> {swap.__name__}", True)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        swap = ARITH.get(type(node.op))
        if swap is not None and not _is_str(node.value):
            new = ast.AugAssign(node.target, swap(), node.value)
            self._add(node, new, f"{type(node.op).__name__}= -> {swap.__name__}=", False)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, bool):
            self._add(node, repr(not node.value), f"{node.value} -> {not node.value}", False)
        elif isinstance(node.value, int):
            self._add(node, repr(node.value + 1), f"{node.value} -> {node.value + 1}", False)

    def visit_Return(self, node: ast.Return) -> None:
        value = node.value
        if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
            self._add(node, "return None", "return X -> return None", False)
            self.visit(value)

    def visit_Raise(self, node: ast.Raise) -> None:
        self._add(node, "pass", "raise -> pass", False)
        self.generic_visit(node)


def generate(source: str, module: str = "<string>") -> list[Mutant]:
    """Every mutant of ``source``, in source order."""
    finder = _Finder(module)
    finder.visit(ast.parse(source))
    return finder.mutants


def is_equivalent(mutant: Mutant, source: str) -> bool:
    original, mutated = mutant.lines(source)
    return (mutant.module, original, mutated) in EQUIVALENT


def sample(mutants: Sequence[Mutant], limit: int | None, seed: int) -> list[Mutant]:
    """``limit`` of ``mutants``: one at random from each of ``limit`` equal strata."""
    if limit is None or limit >= len(mutants):
        return list(mutants)
    rng = random.Random(seed)
    bounds = [len(mutants) * i // limit for i in range(limit + 1)]
    return [mutants[rng.randrange(lo, hi)] for lo, hi in itertools.pairwise(bounds)]


# -- running ----------------------------------------------------------------------------------
KILLED, SURVIVED, TIMEOUT = "killed", "survived", "timeout"


class Workspace:
    """A private copy of ``parts`` of ``root`` where mutants are written and tests run."""

    def __init__(self, root: Path, parts: Sequence[str], dest: Path) -> None:
        self.root = dest
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
        for part in parts:
            src = root / part
            if src.is_dir():
                shutil.copytree(src, dest / part, ignore=ignore)
            elif src.exists():
                (dest / part).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / part)

    def python(self, code: str) -> str:
        """The output of ``python -c code`` run in the copy."""
        cmd = [sys.executable, "-c", code]
        return subprocess.run(
            cmd, cwd=self.root, capture_output=True, text=True, check=True
        ).stdout.strip()

    def _drop_bytecode(self, module: str) -> None:
        path = self.root / module
        for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            pyc.unlink(missing_ok=True)

    def run(
        self, tests: Sequence[str], timeout: float, mutant: Mutant | None = None
    ) -> tuple[str, float]:
        """(outcome, seconds) of ``tests`` with ``mutant`` written over its module."""
        path = self.root / mutant.module if mutant is not None else None
        original = path.read_text() if path is not None else ""
        if path is not None and mutant is not None:
            path.write_text(mutant.apply(original))
            self._drop_bytecode(mutant.module)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=self.root, capture_output=True, timeout=timeout, check=False
            )
            outcome = SURVIVED if proc.returncode == 0 else KILLED
            if proc.returncode == 5:  # no tests collected: the table is wrong
                raise RuntimeError(f"no tests collected: {' '.join(tests)}")
        except subprocess.TimeoutExpired:
            outcome = TIMEOUT
        finally:
            if path is not None and mutant is not None:
                path.write_text(original)
                self._drop_bytecode(mutant.module)
        return outcome, time.monotonic() - start


@dataclass
class Score:
    module: str
    mutants: int
    killed: int
    timeouts: int
    equivalent: int
    survivors: list[tuple[Mutant, str, str]]  # and the original and mutated line

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.mutants if self.mutants else 100.0


def mutate_module(
    module: str, pool: queue.Queue[Workspace], jobs: int, limit: int | None, seed: int
) -> Score:
    source = (REPO / module).read_text()
    tests = [f"tests/unit/{name}" for name in TESTS[module]]
    # Sampled before the equivalent ones are set aside: the allow-list does not move the sample.
    everything = sample(generate(source, module), limit, seed)
    chosen = [m for m in everything if not is_equivalent(m, source)]
    ws = pool.get()
    try:
        clean, seconds = ws.run(tests, timeout=600)
    finally:
        pool.put(ws)
    if clean != SURVIVED:
        raise RuntimeError(f"{module}: the tests fail without a mutant: {' '.join(tests)}")
    timeout = max(10.0, 10 * seconds)

    def one(mutant: Mutant) -> str:
        ws = pool.get()
        try:
            return ws.run(tests, timeout, mutant)[0]
        finally:
            pool.put(ws)

    with ThreadPoolExecutor(max_workers=jobs) as executor:
        outcomes = list(executor.map(one, chosen))
    survivors = [m for m, o in zip(chosen, outcomes, strict=True) if o == SURVIVED]
    return Score(
        module,
        len(chosen),
        sum(o != SURVIVED for o in outcomes),
        outcomes.count(TIMEOUT),
        len(everything) - len(chosen),
        [(m, *m.lines(source)) for m in survivors],
    )


def report_lines(scores: Sequence[Score]) -> Iterator[str]:
    for score in scores:
        for m, original, mutated in score.survivors:
            yield f"{m.module}:{m.lineno}: {m.description}\n  - {original}\n  + {mutated}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--module", action="append", choices=sorted(TESTS), default=[])
    parser.add_argument("--max-mutants", type=int, default=None, help="per module")
    parser.add_argument("--report", type=Path, help="write the surviving mutants here")
    parser.add_argument("--threshold", type=float, default=90.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    modules: list[str] = args.module or list(TESTS)
    scores: list[Score] = []
    with tempfile.TemporaryDirectory(prefix="flaskrtc-mutate-") as tmp:
        pool: queue.Queue[Workspace] = queue.Queue()
        for i in range(args.jobs):
            ws = Workspace(REPO, (*COPY, *COPY_FILES), Path(tmp) / f"w{i}")
            found = ws.python("import flaskrtc; print(flaskrtc.__file__)")
            if not Path(found).resolve().is_relative_to(ws.root.resolve()):
                raise RuntimeError(f"the copy imports flaskrtc from {found}, not {ws.root}")
            pool.put(ws)
        print(f"{'module':32} {'mutants':>7} {'killed':>6} {'survived':>8} "
              f"{'timeouts':>8} {'equiv':>5} {'score':>6}")  # fmt: skip
        for module in modules:
            start = time.monotonic()
            s = mutate_module(module, pool, args.jobs, args.max_mutants, args.seed)
            scores.append(s)
            print(
                f"{module:32} {s.mutants:7} {s.killed:6} {len(s.survivors):8} {s.timeouts:8} "
                f"{s.equivalent:5} {s.percent:5.1f}%  ({time.monotonic() - start:.0f} s)",
                flush=True,
            )
    total = sum(s.mutants for s in scores)
    killed = sum(s.killed for s in scores)
    survived = sum(len(s.survivors) for s in scores)
    percent = 100.0 * killed / total if total else 100.0
    print(
        f"{'total':32} {total:7} {killed:6} {survived:8} {sum(s.timeouts for s in scores):8} "
        f"{sum(s.equivalent for s in scores):5} {percent:5.1f}%"
    )
    if args.report is not None:
        args.report.write_text("".join(line + "\n" for line in report_lines(scores)))
        print(f"surviving mutants: {args.report}")
    low = [s.module for s in scores if s.percent < args.threshold]
    if low:
        print(f"below {args.threshold:g}%: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
