"""The Makefile's release targets refuse other systems at once (PyInstaller cannot cross-build)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("make") is None,
    reason="checks the messages a Linux host with make gives",
)


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("target", "where"), [("darwin", "macOS"), ("windows", "Windows")])
def test_foreign_target_stops_at_once_saying_where_it_builds(
    target: str, where: str, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    done = make(target, f"VENV={venv}")
    assert done.returncode != 0
    assert f"make {target}: cannot build bin/flaskrtc-{target}-" in done.stderr
    assert f"build it on {where}" in done.stderr
    # Stopped before any work: not even the venv was created.
    assert not venv.exists()


def test_all_names_the_targets_it_cannot_build() -> None:
    done = make("-n", "all")
    assert done.returncode == 0, done.stderr
    assert "pyinstaller" in done.stdout.lower()
    assert "darwin builds on macOS, windows builds on Windows" in done.stdout


def test_release_zip_is_named_after_the_package_version() -> None:
    from flaskrtc import __version__

    done = make("-n", "zip")
    assert f"release_zip.py flaskrtc-bin-{__version__}.zip" in done.stdout
