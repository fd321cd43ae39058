"""Version of the build, for the spec file and the Makefile: flaskrtc.__version__.

Read from the source text rather than imported, so it works before flaskrtc is installed.
``python build/version.py`` prints it (the Makefile's VERSION); release tags are ``v<it>``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def version() -> str:
    """The package version, e.g. ``0.1.0``."""
    text = (ROOT / "flaskrtc" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if found is None:
        raise SystemExit("flaskrtc/__init__.py has no __version__")
    return found.group(1)


def version_tuple() -> tuple[int, int, int, int]:
    """The leading numbers of the version, padded to four (Windows version resources)."""
    numbers = [int(part) for part in re.findall(r"\d+", version())[:4]]
    padded = (*numbers, 0, 0, 0, 0)[:4]
    return (padded[0], padded[1], padded[2], padded[3])


def windows_version_info() -> Any:
    """The version resource of the Windows .exe (what Explorer's Properties show)."""
    # pefile, which this module needs, is installed with PyInstaller on Windows only.
    from PyInstaller.utils.win32 import versioninfo as vi

    numbers = version_tuple()
    strings = [
        vi.StringStruct("CompanyName", "flaskrtc"),
        vi.StringStruct("FileDescription", "flaskrtc WebRTC signaling server with TURN relay"),
        vi.StringStruct("FileVersion", version()),
        vi.StringStruct("InternalName", "flaskrtc"),
        vi.StringStruct("LegalCopyright", "MIT License"),
        vi.StringStruct("OriginalFilename", "flaskrtc.exe"),
        vi.StringStruct("ProductName", "flaskrtc"),
        vi.StringStruct("ProductVersion", version()),
    ]
    return vi.VSVersionInfo(
        ffi=vi.FixedFileInfo(filevers=numbers, prodvers=numbers),
        kids=[
            vi.StringFileInfo([vi.StringTable("040904B0", strings)]),
            vi.VarFileInfo([vi.VarStruct("Translation", [0x0409, 1200])]),
        ],
    )


if __name__ == "__main__":
    sys.stdout.write(version() + "\n")
