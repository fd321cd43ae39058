"""The web demo built into a frozen binary, and when it is served instead of a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flaskrtc import resources
from flaskrtc.app import create_app
from flaskrtc.config import load_config
from flaskrtc.signal.server import SignalServer


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A fake unpacked one-file bundle holding a web demo."""
    web = tmp_path / "bundle" / "web"
    web.mkdir(parents=True)
    (web / "index.html").write_text("bundled demo")
    return tmp_path / "bundle"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, as where a downloaded binary is started."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_bundle_dir_is_meipass_when_frozen(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)
    assert resources.bundle_dir() is None
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    assert resources.bundle_dir() == bundle


def test_default_root_falls_back_to_bundled_web(workdir: Path, bundle: Path) -> None:
    assert resources.resolve_html_root("web", bundle) == (bundle / "web").resolve()


def test_local_web_folder_wins_over_bundle(workdir: Path, bundle: Path) -> None:
    (workdir / "web").mkdir()
    assert resources.resolve_html_root("web", bundle) == (workdir / "web").resolve()


def test_configured_root_is_never_replaced(workdir: Path, bundle: Path) -> None:
    # A path the user chose is served as given, even when missing: no silent substitute.
    assert resources.resolve_html_root("site", bundle) == (workdir / "site").resolve()
    assert resources.resolve_html_root("./web", bundle) == (workdir / "web").resolve()


def test_no_bundle_keeps_default_root(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)
    assert resources.resolve_html_root("web") == (workdir / "web").resolve()
    # A bundle without a web folder is no fallback either.
    assert resources.resolve_html_root("web", tmp_path / "empty") == (workdir / "web").resolve()


def test_app_serves_bundled_demo_from_empty_folder(
    workdir: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    config = load_config(None, {}, {"turn.secret": "s"})
    app = create_app(config, SignalServer(keepalive=5, max_message_size=1 << 20))
    reply = app.test_client().get("/")
    assert reply.status_code == 200
    assert reply.data == b"bundled demo"
    (workdir / "web").mkdir()
    (workdir / "web" / "index.html").write_text("local demo")
    app = create_app(config, SignalServer(keepalive=5, max_message_size=1 << 20))
    assert app.test_client().get("/").data == b"local demo"
