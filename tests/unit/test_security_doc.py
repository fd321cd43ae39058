"""SECURITY.md names a test for every promise: each named test must exist, so the threat
model cannot drift from the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A backquoted test file, optionally with ::test_name; a bare `::test_name` refers to the
# file named last in the same row.
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(test_\w+))?`")


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_security_md_names_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    checked = 0
    for row in text.splitlines():
        if not row.startswith("| "):
            continue
        current: Path | None = None
        for found in REFERENCE.finditer(row):
            file, name = found.groups()
            if file is None and name is None:
                continue
            if file is not None:
                current = ROOT / file
                assert current.is_file(), f"SECURITY.md names a missing file: {file}"
            assert current is not None, f"a test name without a file: {found.group(0)}"
            if name is not None:
                assert name in defined_tests(current), f"{current.name} has no {name}"
            checked += 1
    assert checked >= 30, checked  # the table was read, not skipped
