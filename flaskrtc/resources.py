"""Data files built into a frozen (PyInstaller) flaskrtc binary: the web demo."""

from __future__ import annotations

import sys
from pathlib import Path

from flaskrtc.config import GeneralConfig

# The folder the spec file (build/flaskrtc.spec) puts the web demo in, inside the bundle.
BUNDLED_WEB = "web"


def bundle_dir() -> Path | None:
    """The folder a one-file binary unpacked its data into (``sys._MEIPASS``); None from source."""
    unpacked = getattr(sys, "_MEIPASS", None)
    return Path(unpacked) if isinstance(unpacked, str) else None


def resolve_html_root(configured: str, bundle: Path | None = None) -> Path:
    """The folder to serve at ``/``: ``configured``, or the demo built into the binary.

    The built-in copy is used only when ``configured`` is the default (``web``), no such folder
    exists in the working directory and ``bundle`` (default :func:`bundle_dir`) holds one, so a
    binary started in any folder serves its demo while ``./web`` or a configured path wins.
    """
    path = Path(configured)
    if configured == GeneralConfig.html_root and not path.is_dir():
        bundle = bundle if bundle is not None else bundle_dir()
        if bundle is not None and (bundle / BUNDLED_WEB).is_dir():
            return (bundle / BUNDLED_WEB).resolve()
    return path.resolve()
