"""The data flaskrtc carries (web demo, config template) and when the demo is served instead of
a folder: from a frozen binary's bundle, an installed package, or the source checkout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flaskrtc import resources
from flaskrtc.app import create_app
from flaskrtc.cli import main
from flaskrtc.config import load_config
from flaskrtc.signal.server import SignalServer

REPO = Path(__file__).resolve().parents[2]


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
    assert resources.resolve_html_root("web", [bundle]) == (bundle / "web").resolve()


def test_local_web_folder_wins_over_bundle(workdir: Path, bundle: Path) -> None:
    (workdir / "web").mkdir()
    assert resources.resolve_html_root("web", [bundle]) == (workdir / "web").resolve()


def test_configured_root_is_never_replaced(workdir: Path, bundle: Path) -> None:
    # A path the user chose is served as given, even when missing: no silent substitute.
    assert resources.resolve_html_root("site", [bundle]) == (workdir / "site").resolve()
    assert resources.resolve_html_root("./web", [bundle]) == (workdir / "web").resolve()


def test_no_carried_copy_keeps_default_root(workdir: Path, tmp_path: Path) -> None:
    assert resources.resolve_html_root("web", []) == (workdir / "web").resolve()
    # A root without a web folder is no fallback either.
    assert resources.resolve_html_root("web", [tmp_path / "empty"]) == (workdir / "web").resolve()


def test_first_root_holding_web_wins(workdir: Path, bundle: Path, tmp_path: Path) -> None:
    installed = tmp_path / "site-packages" / "flaskrtc"
    (installed / "web").mkdir(parents=True)
    assert resources.resolve_html_root("web", [tmp_path / "empty", installed, bundle]) == (
        installed / "web"
    )
    assert resources.resolve_html_root("web", [bundle, installed]) == bundle / "web"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """flaskrtc as a wheel installs it: site-packages/flaskrtc with web/ and configs/ inside."""
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)
    package = tmp_path / "site-packages" / "flaskrtc"
    (package / "web").mkdir(parents=True)
    (package / "web" / "index.html").write_text("installed demo")
    (package / "configs").mkdir()
    (package / "configs" / "config.ini").write_text("[general]\n")
    # Another distribution's top-level "web" package beside it must not be taken for ours.
    (tmp_path / "site-packages" / "web").mkdir()
    monkeypatch.setattr(resources, "PACKAGE_DIR", package)
    return package


def test_installed_package_serves_its_copy(workdir: Path, installed: Path) -> None:
    assert resources.data_roots() == [installed]
    assert resources.resolve_html_root("web") == installed / "web"
    assert resources.config_template() == b"[general]\n"
    (workdir / "web").mkdir()
    assert resources.resolve_html_root("web") == (workdir / "web").resolve()


def test_roots_are_bundle_then_package_then_checkout(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)
    package = Path(resources.__file__).resolve().parent
    # These tests run from the source tree (or an editable install of it).
    assert resources.data_roots() == [package, REPO]
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    assert resources.data_roots() == [bundle, package, REPO]


def test_checkout_serves_its_web_from_any_folder(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `python -m flaskrtc` from the tree, or an editable install, started elsewhere.
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)
    assert resources.resolve_html_root("web") == REPO / "web"


def test_config_template_is_configs_config_ini() -> None:
    # From a source tree it is that very file; tests/release/test_wheel.py checks the wheel's.
    assert resources.config_template() == (REPO / "configs" / "config.ini").read_bytes()


def test_config_template_missing_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"configs/config\.ini is not in this installation"):
        resources.config_template([tmp_path])


def test_config_command_prints_the_template(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["config"]) == 0
    assert capsysbinary.readouterr().out == (REPO / "configs" / "config.ini").read_bytes()


def test_config_command_writes_a_file_once(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = Path("configs") / "config.ini"
    assert main(["config", "-o", str(target)]) == 0
    assert (workdir / target).read_bytes() == (REPO / "configs" / "config.ini").read_bytes()
    assert capsys.readouterr().out == f"wrote {target}\n"
    # An existing file may hold a secret: it is left alone.
    (workdir / target).write_text("[auth]\nsecret = mine-mine-mine-mine\n")
    assert main(["config", "-o", str(target)]) == 2
    assert "exists; not overwritten" in capsys.readouterr().err
    assert (workdir / target).read_text() == "[auth]\nsecret = mine-mine-mine-mine\n"


def test_config_command_without_template_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(resources, "data_roots", lambda: [tmp_path])
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flaskrtc config: configs/config.ini is not in this installation")
    assert err.count("\n") == 1


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
