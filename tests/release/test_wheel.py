"""The wheel and sdist of ``python -m build``: their contents, ``twine check``, and the wheel
installed into a fresh venv and run from an empty folder, as a ``pip install flaskrtc`` user
would.

Marked slow: about 20 s here (building 6 s, then installing the wheel and its dependencies
from PyPI into a plain venv, no system site-packages, the honest test, 11 s; pip's cache
made little difference on this network). ``make test`` (and so CI) runs it; without the
``build`` and ``twine`` modules (the test extra) it skips, unless FLASKRTC_REQUIRE_INTEROP=1
(set by .ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskrtc import __version__
from flaskrtc.turn.client import DataIndication, Request, Retry, Success, TurnClient
from tests.conftest import REPO, StandaloneProcess, require_module
from tests.release.test_release_zip import release_zip
from tests.wire.test_ws import new_id

pytestmark = pytest.mark.slow

BUILD_TIMEOUT = 600  # seconds; build isolation installs setuptools from PyPI first
INSTALL_TIMEOUT = 600  # seconds; gevent, Flask and cryptography from PyPI, cold cache
NAME = f"flaskrtc-{__version__}"
TEMPLATE = REPO / "configs" / "config.ini"
# What the sdist must hold to build and test flaskrtc (make test), named one by one.
SDIST_MUST_HOLD = [
    "README.md",
    "SECURITY.md",
    "LICENSE",
    "Makefile",
    "MANIFEST.in",
    "pyproject.toml",
    "setup.py",
    "tests/conftest.py",
    "tests/release/test_wheel.py",
    "web/index.html",
    "configs/config.ini",
    "docs/protocol.md",
    "benchmarks/signal_bench.py",
    "tools/mutate.py",
    "build/flaskrtc.spec",
    "flaskrtc/__init__.py",
]


def clean_env() -> dict[str, str]:
    """The environment without FLASKRTC_* and PYTHON*: nothing may point at the checkout."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("FLASKRTC_", "PYTHON"))}


def run(
    argv: list[str], timeout: float, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; fail with its output unless it exits 0."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, sdist) built from the checkout by ``python -m build``: the sdist first, then
    the wheel from the unpacked sdist, so the wheel proves the sdist is complete enough."""
    require_module("build", "build")
    require_module("twine", "twine")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], BUILD_TIMEOUT)
    wheel = out / f"{NAME}-py3-none-any.whl"
    sdist = out / f"{NAME}.tar.gz"
    assert sorted(p.name for p in out.iterdir()) == sorted([wheel.name, sdist.name])
    return wheel, sdist


@pytest.fixture(scope="module")
def venv(dists: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ (Scripts\\ on Windows) of a fresh venv with the wheel pip-installed."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(root)], 120)
    scripts = root / ("Scripts" if os.name == "nt" else "bin")
    pip = [str(scripts / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "install", str(dists[0])], INSTALL_TIMEOUT, env=clean_env())
    return scripts


@pytest.fixture(scope="module")
def running(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneProcess]:
    """The installed ``flaskrtc`` script, started in an empty folder."""
    proc = StandaloneProcess(tmp_path_factory.mktemp("empty"), [str(venv / "flaskrtc")])
    yield proc
    proc.stop()


def test_twine_check_passes(dists: tuple[Path, Path]) -> None:
    # --strict: a warning (say, a README PyPI cannot render) fails the release too.
    done = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)], 120)
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_wheel_carries_web_demo_template_and_license(dists: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(dists[0]) as wheel:
        names = set(wheel.namelist())
        web = sorted(p for p in (REPO / "web").rglob("*") if p.is_file())
        assert web, "no web demo in the checkout"
        for path in web:
            packed = "flaskrtc/web/" + path.relative_to(REPO / "web").as_posix()
            assert wheel.read(packed) == path.read_bytes(), packed
        assert wheel.read("flaskrtc/configs/config.ini") == TEMPLATE.read_bytes()
        licenses = [n for n in names if n.startswith(f"{NAME}.dist-info/") and "LICENSE" in n]
        assert len(licenses) == 1, names
        assert wheel.read(licenses[0]) == (REPO / "LICENSE").read_bytes()
        assert "License-File: LICENSE" in wheel.read(f"{NAME}.dist-info/METADATA").decode()
    # The package and its metadata, nothing else: no tests, no generated secrets.
    assert {n.split("/")[0] for n in names} == {"flaskrtc", f"{NAME}.dist-info"}
    assert not [n for n in names if release_zip.is_secret(n)]
    assert [n for n in names if n.startswith("flaskrtc/configs/")] == [
        "flaskrtc/configs/config.ini"
    ]


def test_sdist_holds_everything_to_build_and_test(dists: tuple[Path, Path]) -> None:
    with tarfile.open(dists[1]) as sdist:
        names = {n.removeprefix(f"{NAME}/") for n in sdist.getnames()}
    missing = [n for n in SDIST_MUST_HOLD if n not in names]
    assert not missing, missing
    git = shutil.which("git")
    if git is not None and (REPO / ".git").exists():
        # Every file of the checkout, except git's own ignore list.
        tracked = run([git, "ls-files"], 60, cwd=REPO).stdout.split()
        lacking = [n for n in tracked if n not in names and n != ".gitignore"]
        assert not lacking, lacking
    # The release zip's rule: no key, certificate or secret, whatever made one in the tree.
    assert not [n for n in names if release_zip.is_secret(n) or n.endswith(".pyc")]


def test_installed_package_is_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    done = run(
        [str(venv / "python"), "-c", "import flaskrtc; print(flaskrtc.__file__)"],
        60,
        cwd=tmp_path,
        env=clean_env(),
    )
    installed = Path(done.stdout.strip()).resolve()
    assert installed.is_relative_to(venv.parent.resolve()), installed
    done = run([str(venv / "flaskrtc"), "--version"], 60, cwd=tmp_path, env=clean_env())
    assert done.stdout.strip() == f"flaskrtc {__version__}"


def test_config_command_prints_the_template(venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(venv / "flaskrtc"), "config"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == TEMPLATE.read_bytes()
    # -o writes the same bytes where the server looks for its config.
    run(
        [str(venv / "flaskrtc"), "config", "-o", "configs/config.ini"],
        60,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert (tmp_path / "configs" / "config.ini").read_bytes() == TEMPLATE.read_bytes()


def test_serves_the_packaged_web_demo(running: StandaloneProcess, venv: Path) -> None:
    assert sorted(p.name for p in running.workdir.iterdir()) == ["configs"]
    assert running.get("/") == (REPO / "web" / "index.html").read_bytes()
    assert running.get("/js/app.js") == (REPO / "web" / "js" / "app.js").read_bytes()
    served = running.wait_for_log(r"web demo files: (.+) \(no \./web here\)").group(1)
    assert Path(served).is_relative_to(venv.parent.resolve()), served


def test_websocket_registration(running: StandaloneProcess) -> None:
    peer_id = new_id()
    client = running.connect()
    try:
        client.register(peer_id, name="wheel")
        assert client.expect_peers([peer_id])[0]["name"] == "wheel"
    finally:
        client.close()


def test_api_turn_over_https(running: StandaloneProcess) -> None:
    creds = json.loads(running.get("/api/turn?service=turn&username=wheel"))
    assert creds["username"].endswith(":wheel") and creds["password"]
    assert creds["uris"][0] == f"turn:127.0.0.1:{running.turn_port}?transport=udp"


def transact(sock: socket.socket, client: TurnClient, request: Request) -> Success:
    """Send ``request`` over the connected UDP ``sock``, answering the 401 challenge."""
    sock.send(request.data)
    while True:
        event = client.receive(sock.recv(2048))
        if isinstance(event, Retry):
            sock.send(event.request.data)
        elif isinstance(event, Success):
            return event


def test_turn_allocation_relays_both_ways(running: StandaloneProcess) -> None:
    """flaskrtc's own TURN client allocates on the installed server and relays each way."""
    creds = json.loads(running.get("/api/turn?service=turn&username=relay"))
    client = TurnClient(creds["username"], creds["password"])
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
    ):
        sock.settimeout(10)
        peer.settimeout(10)
        sock.connect(("127.0.0.1", running.turn_port))
        peer.bind(("127.0.0.1", 0))
        peer_addr = peer.getsockname()
        transact(sock, client, client.allocate())
        assert client.relayed is not None and client.relayed[0] == "127.0.0.1"
        transact(sock, client, client.create_permission(peer_addr))
        sock.send(client.send_indication(peer_addr, b"to peer"))
        data, source = peer.recvfrom(2048)
        assert (data, source) == (b"to peer", client.relayed)
        peer.sendto(b"to client", source)
        assert client.receive(sock.recv(2048)) == DataIndication(peer_addr, b"to client")
        transact(sock, client, client.refresh(0))


def test_sigterm_exits_cleanly(running: StandaloneProcess) -> None:
    # Last in the module: stops the shared process.
    assert running.stop(signal.SIGTERM) == 0
    log = "\n".join(running.lines)
    assert "stopped" in log and "Traceback" not in log
