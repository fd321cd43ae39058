"""tools/mutate.py: the mutants it generates, and that its runner tells killed from survived."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flaskrtc_mutate", REPO / "tools" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutate = load_tool()

SAMPLE = '''"""A docstring: 7 is not mutated."""
from typing import TYPE_CHECKING
import logging

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    LIMIT = 99


def check(a: int, b: int = 3) -> bool:
    """Nor here: 5."""
    log.debug("a=%d", a + 1)
    if a == b and not a < 10:
        return True
    x = a * b
    x += 2
    if a in (1, 2):
        raise ValueError(a)
    return x is None


class Ports(Protocol):
    def open(self, even: bool = False) -> int:
        """A stub: its default never runs."""
        ...


class Point:
    def __repr__(self) -> str:
        return "x" if 1 > 2 else "y"
'''


def mutated_lines() -> list[tuple[int, str, str]]:
    return [
        (m.lineno, m.description, m.lines(SAMPLE)[1]) for m in mutate.generate(SAMPLE, "sample.py")
    ]


def test_operators_and_their_mutants() -> None:
    got = {(desc, line) for _, desc, line in mutated_lines()}
    expected = {
        ("Eq -> NotEq", "if (a != b) and not a < 10:"),
        ("and -> or", "if (a == b or not a < 10):"),
        ("not x -> x", "if a == b and (a < 10):"),
        ("Lt -> LtE", "if a == b and not (a <= 10):"),
        ("10 -> 11", "if a == b and not a < 11:"),
        ("True -> False", "return False"),
        ("Mult -> FloorDiv", "x = (a // b)"),
        ("Add= -> Sub=", "x -= 2"),
        ("2 -> 3", "x += 3"),
        ("In -> NotIn", "if (a not in (1, 2)):"),
        ("raise -> pass", "pass"),
        ("return X -> return None", "return None"),
        ("Is -> IsNot", "return (x is not None)"),
        ("3 -> 4", "def check(a: int, b: int = 4) -> bool:"),
    }
    assert expected <= got, expected - got


def test_docstrings_annotations_type_checking_logging_and_repr_are_skipped() -> None:
    lines = {lineno for lineno, _, _ in mutated_lines()}
    assert not lines & {1, 7, 8, 12, 13}  # docstrings, TYPE_CHECKING, the log call
    assert max(lines) < 24  # nothing in the Protocol stub nor in __repr__
    # The annotation ``int`` is never touched, and no mutant of a string.
    assert all("7" not in line and "5" not in line for _, _, line in mutated_lines())


def test_every_mutant_compiles_and_keeps_the_line_numbers() -> None:
    for mutant in mutate.generate(SAMPLE):
        text = mutant.apply(SAMPLE)
        compile(text, "sample.py", "exec")
        assert len(text.splitlines()) == len(SAMPLE.splitlines())


def test_a_multiline_expression_keeps_its_line_count() -> None:
    source = "ok = (\n    a == 1\n    and b == 2\n)\n"
    (flip,) = [m for m in mutate.generate(source) if m.description == "and -> or"]
    text = flip.apply(source)
    compile(text, "m.py", "exec")
    assert text.count("\n") == source.count("\n") and " or " in text


def test_sampling_is_even_and_repeatable() -> None:
    mutants = mutate.generate(SAMPLE)
    first = mutate.sample(mutants, 5, 0)
    assert first == mutate.sample(mutants, 5, 0) and len(set(first)) == 5
    assert mutate.sample(mutants, 1000, 0) == mutants
    step = len(mutants) / 5
    for i, m in enumerate(first):  # one from each fifth, in order
        assert i * step - 1 <= mutants.index(m) < (i + 1) * step


TOY = """def add(a, b):
    return a + b


def clamp(x):
    if x > 100:
        return 100
    return x
"""
TOY_TEST = """from toy import add, clamp


def test_add():
    assert add(2, 3) == 5


def test_clamp_small():
    assert clamp(5) == 5
"""


def test_runner_marks_killed_and_survived(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "toy.py").write_text(TOY)
    (src / "test_toy.py").write_text(TOY_TEST)
    ws = mutate.Workspace(src, ["toy.py", "test_toy.py"], tmp_path / "ws")
    mutants = {m.description: m for m in mutate.generate(TOY, "toy.py")}
    tests = ["test_toy.py"]
    assert ws.run(tests, 30)[0] == mutate.SURVIVED  # the clean run passes
    # add() is tested: a - b is caught. clamp() above 100 is not: > vs >= survives.
    assert ws.run(tests, 30, mutants["Add -> Sub"])[0] == mutate.KILLED
    assert ws.run(tests, 30, mutants["Gt -> GtE"])[0] == mutate.SURVIVED
    # The copy is restored after each mutant; the source folder is never written.
    assert (tmp_path / "ws" / "toy.py").read_text() == TOY == (src / "toy.py").read_text()


def test_every_equivalent_entry_names_a_current_mutant() -> None:
    # The allow-list must not outlive the code it excuses.
    for (module, original, mutated), reason in mutate.EQUIVALENT.items():
        source = (REPO / module).read_text()
        found = {m.lines(source) for m in mutate.generate(source, module)}
        assert (original, mutated) in found, (module, original, reason)
