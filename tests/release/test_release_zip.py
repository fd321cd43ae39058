"""build/release_zip.py: what the release zip holds, and that secrets never get in."""

from __future__ import annotations

import importlib.util
import shutil
import stat
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_release_zip() -> ModuleType:
    # build/ is no package (and "build" is also a PyPI package's name): load the file itself.
    spec = importlib.util.spec_from_file_location("release_zip", REPO / "build" / "release_zip.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


release_zip = load_release_zip()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the repository's release inputs, with a fake binary and generated secrets."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("README.md", "LICENSE"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "web", root / "web")
    shutil.copytree(REPO / "docs", root / "docs")
    (root / "configs" / "certs").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "config.ini", root / "configs" / "config.ini")
    # What a first start leaves beside the config: none of it may ship.
    (root / "configs" / "certs" / "key.pem").write_text("PRIVATE KEY")
    (root / "configs" / "certs" / "cert.pem").write_text("CERTIFICATE")
    (root / "configs" / "turn_secret").write_text("secret\n")
    (root / "configs" / "other.ini").write_text("[turn]\nsecret = mine\n")
    (root / "bin").mkdir()
    (root / "bin" / "flaskrtc-linux-amd64").write_bytes(b"\x7fELF")
    (root / "bin" / "flaskrtc-windows-amd64.exe").write_bytes(b"MZ")
    return root


def test_zip_holds_binaries_example_config_web_docs_readme_license(tree: Path) -> None:
    out = tree / "flaskrtc-bin-9.9.9.zip"
    release_zip.write_zip(tree, out)
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        infos = {info.filename: info for info in archive.infolist()}
        assert (
            archive.read("flaskrtc-bin-9.9.9/configs/config.ini")
            == (REPO / "configs" / "config.ini").read_bytes()
        )
    top = "flaskrtc-bin-9.9.9/"
    assert all(name.startswith(top) for name in names)
    inside = {name[len(top) :] for name in names}
    # docs/ too: the README links to docs/protocol.md and shows docs/screenshots/.
    web = {
        p.relative_to(REPO).as_posix()
        for folder in ("web", "docs")
        for p in (REPO / folder).rglob("*")
        if p.is_file()
    }
    assert inside == {
        "bin/flaskrtc-linux-amd64",
        "bin/flaskrtc-windows-amd64.exe",
        "configs/config.ini",
        "README.md",
        "LICENSE",
        *web,
    }
    binary = infos[top + "bin/flaskrtc-linux-amd64"]
    assert stat.S_IMODE(binary.external_attr >> 16) == 0o755


def test_zip_never_holds_key_cert_or_secret(tree: Path) -> None:
    names = release_zip.write_zip(tree, tree / "r.zip")
    for name in names:
        assert not name.endswith((".pem", ".key", "turn_secret")), name
        assert "/certs/" not in name, name
    with zipfile.ZipFile(tree / "r.zip") as archive:
        for info in archive.infolist():
            assert b"PRIVATE KEY" not in archive.read(info), info.filename


def test_secret_in_web_folder_is_refused(tree: Path) -> None:
    (tree / "web" / "key.pem").write_text("PRIVATE KEY")
    with pytest.raises(release_zip.ReleaseError, match=r"key\.pem"):
        release_zip.write_zip(tree, tree / "r.zip")
    assert not (tree / "r.zip").exists()


def test_no_binaries_is_an_error(tree: Path) -> None:
    shutil.rmtree(tree / "bin")
    with pytest.raises(release_zip.ReleaseError, match="make linux"):
        release_zip.release_files(tree)


def test_repository_has_license_and_example_config() -> None:
    assert "MIT License" in (REPO / "LICENSE").read_text()
    assert not release_zip.is_secret("configs/config.ini")
    assert release_zip.is_secret("configs/certs/anything")
