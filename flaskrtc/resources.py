"""Data files flaskrtc carries beside its code: the web demo and the commented config template.

They have the same layout, ``web/`` and ``configs/config.ini``, under each of these roots,
searched in this order (:func:`data_roots`):

1. a one-file binary's bundle (``sys._MEIPASS``), where build/flaskrtc.spec puts them;
2. the installed package (``flaskrtc/`` in site-packages), where setup.py maps them in the
   wheel;
3. the source checkout holding the package (the folder with ``flaskrtc/`` and setup.py): the
   repository's own files, which ``python -m flaskrtc`` from the tree and an editable install
   (``pip install -e .``, whose package is the checkout's ``flaskrtc/``) read.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from flaskrtc.config import GeneralConfig

# Paths under each data root (build/flaskrtc.spec and setup.py's package_dir use the same).
WEB_DEMO = "web"
CONFIG_TEMPLATE = "configs/config.ini"

PACKAGE_DIR = Path(__file__).resolve().parent


def bundle_dir() -> Path | None:
    """The folder a one-file binary unpacked its data into (``sys._MEIPASS``); None from source."""
    unpacked = getattr(sys, "_MEIPASS", None)
    return Path(unpacked) if isinstance(unpacked, str) else None


def data_roots() -> list[Path]:
    """The folders that may hold flaskrtc's data files, in the order they are searched."""
    roots: list[Path] = []
    bundle = bundle_dir()
    if bundle is not None:
        roots.append(bundle)
    roots.append(PACKAGE_DIR)
    # setup.py marks a checkout: beside an installed package is site-packages, whose other
    # top-level folders (a "web" package, say) are not ours.
    if (PACKAGE_DIR.parent / "setup.py").is_file():
        roots.append(PACKAGE_DIR.parent)
    return roots


def find_data(relative: str, roots: Sequence[Path] | None = None) -> Path | None:
    """The first ``root / relative`` that exists among ``roots`` (default :func:`data_roots`)."""
    for root in data_roots() if roots is None else roots:
        path = root / relative
        if path.exists():
            return path.resolve()
    return None


def resolve_html_root(configured: str, roots: Sequence[Path] | None = None) -> Path:
    """The folder to serve at ``/``: ``configured``, or the demo flaskrtc carries.

    The carried copy (the first ``web`` folder among ``roots``, default :func:`data_roots`) is
    used only when ``configured`` is the default (``web``) and no such folder exists in the
    working directory, so a binary or an installed package started in any folder serves its
    demo while ``./web`` or a configured path wins.
    """
    path = Path(configured)
    if configured == GeneralConfig.html_root and not path.is_dir():
        carried = find_data(WEB_DEMO, roots)
        if carried is not None and carried.is_dir():
            return carried
    return path.resolve()


def config_template(roots: Sequence[Path] | None = None) -> bytes:
    """The commented configuration template (the source tree's configs/config.ini), as bytes:
    written out unchanged, it is byte for byte that file.

    Raises FileNotFoundError when no root holds it (an installation missing its data).
    """
    path = find_data(CONFIG_TEMPLATE, roots)
    if path is None or not path.is_file():
        searched = ", ".join(str(root) for root in (data_roots() if roots is None else roots))
        raise FileNotFoundError(f"{CONFIG_TEMPLATE} is not in this installation ({searched})")
    return path.read_bytes()
