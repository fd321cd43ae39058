"""The one-file release binary (build/flaskrtc.spec), built here and run alone in an empty folder.

Marked slow: PyInstaller takes about half a minute. ``make test`` (and so CI) runs it; on a
host without PyInstaller it skips, unless FLASKRTC_REQUIRE_INTEROP=1 (set by .ci/run).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskrtc import __version__
from flaskrtc.turn.stun import Attr, Class, Message, Method, parse, serialize
from tests.conftest import REPO, StandaloneProcess
from tests.wire.test_turn_wire import RawTurn, assert_no_loss, uclient
from tests.wire.test_ws import new_id

pytestmark = pytest.mark.slow

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
BUILD_TIMEOUT = 600  # seconds; a cold PyInstaller build on 2 cores takes about 30


def require_pyinstaller() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the Linux binary builds on Linux only")
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        reason = "PyInstaller not installed (pip install '.[build]')"
        if os.environ.get("FLASKRTC_REQUIRE_INTEROP"):
            pytest.fail(reason + "; FLASKRTC_REQUIRE_INTEROP is set")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/flaskrtc-linux-<arch>, built from the spec into a temporary folder."""
    require_pyinstaller()
    out = tmp_path_factory.mktemp("pyinstaller")
    name = f"flaskrtc-linux-{ARCH}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--distpath",
            str(out / "dist"),
            "--workpath",
            str(out / "work"),
            str(REPO / "build" / "flaskrtc.spec"),
        ],
        env={**os.environ, "FLASKRTC_BIN_NAME": name},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "dist" / name


class BinaryProcess(StandaloneProcess):
    """The binary copied alone into ``workdir`` and started there with flags and env only."""

    def __init__(self, workdir: Path, binary: Path) -> None:
        self.binary = workdir / binary.name
        shutil.copy2(binary, self.binary)
        assert sorted(p.name for p in workdir.iterdir()) == [binary.name]
        # A one-file binary unpacks itself before Python starts: allow more than the usual 20 s.
        super().__init__(workdir, [str(self.binary)], timeout=60)


@pytest.fixture(scope="module")
def running(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BinaryProcess]:
    proc = BinaryProcess(tmp_path_factory.mktemp("alone"), binary)
    yield proc
    proc.stop()


def test_version_flag_prints_package_version(binary: Path) -> None:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"flaskrtc {__version__}"


def test_generates_certificate_and_secret_in_its_folder(running: BinaryProcess) -> None:
    running.wait_for_log(r"config: built-in defaults")
    for name in ("configs/certs/cert.pem", "configs/certs/key.pem", "configs/turn_secret"):
        assert (running.workdir / name).is_file(), name
    assert (running.workdir / "configs" / "certs" / "key.pem").stat().st_mode & 0o077 == 0


def test_serves_built_in_web_demo(running: BinaryProcess) -> None:
    assert not (running.workdir / "web").exists()
    assert running.get("/") == (REPO / "web" / "index.html").read_bytes()


def test_config_subcommand_prints_built_in_template(running: BinaryProcess) -> None:
    # In the binary's own folder, where no configs/config.ini exists to be read instead.
    assert not (running.workdir / "configs" / "config.ini").exists()
    done = subprocess.run(
        [str(running.binary), "config"], cwd=running.workdir, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (REPO / "configs" / "config.ini").read_bytes()


def test_api_turn_over_https(running: BinaryProcess) -> None:
    creds = json.loads(running.get("/api/turn?service=turn&username=bin"))
    assert creds["username"].endswith(":bin")
    assert creds["uris"] == [
        f"turn:127.0.0.1:{running.turn_port}?transport=udp",
        f"turn:127.0.0.1:{running.turn_port}?transport=tcp",
        f"turns:127.0.0.1:{running.turn_tls_port}?transport=tcp",
    ]


def test_websocket_registration(running: BinaryProcess) -> None:
    peer_id = new_id()
    client = running.connect()
    try:
        client.register(peer_id, name="binary")
        peers = client.expect_peers([peer_id])
        assert peers[0]["name"] == "binary"
    finally:
        client.close()


def test_turn_allocation_relays_both_ways(running: BinaryProcess) -> None:
    creds = json.loads(running.get("/api/turn?service=turn&username=relay"))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(10)
    client = RawTurn(running.turn_port, creds["username"], creds["password"])
    try:
        allocated = client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert allocated.cls == Class.SUCCESS, allocated
        relay = allocated.attributes[Attr.XOR_RELAYED_ADDRESS]
        peer_addr = peer.getsockname()
        permit = client.request(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: peer_addr})
        assert permit.cls == Class.SUCCESS, permit
        send = Message(
            Method.SEND,
            Class.INDICATION,
            attributes={Attr.XOR_PEER_ADDRESS: peer_addr, Attr.DATA: b"to peer"},
        )
        client.sock.sendto(serialize(send), client.server)
        data, source = peer.recvfrom(2048)
        assert (data, source) == (b"to peer", (relay[0], relay[1]))
        peer.sendto(b"to client", source)
        indication = parse(client.sock.recvfrom(2048)[0])
        assert (indication.method, indication.cls) == (Method.DATA, Class.INDICATION)
        assert indication.attributes[Attr.DATA] == b"to client"
        assert indication.attributes[Attr.XOR_PEER_ADDRESS][:2] == peer_addr
    finally:
        client.close()
        peer.close()


@pytest.mark.parametrize("flags", [["-t"], ["-t", "-S"]], ids=["tcp", "tls"])
def test_turn_over_tcp_and_tls_with_coturn_client(
    running: BinaryProcess, udp_peer: int, flags: list[str]
) -> None:
    """coturn's client relays through the binary over TURN/TCP and TURN/TLS without loss."""
    secret = (running.workdir / "configs" / "turn_secret").read_text().strip()
    port = running.turn_tls_port if "-S" in flags else running.turn_port
    assert port, "the binary should listen for TURN over TLS"
    peer = ["-e", "127.0.0.1", "-r", str(udp_peer)]
    assert_no_loss(uclient(running, *flags, *peer, port=port, secret=secret))


def test_doctor_subcommand_passes_against_the_running_binary(running: BinaryProcess) -> None:
    # The running binary's flags and environment, with the ports it got for its port 0s.
    flags = ["--bind", "127.0.0.1", "--public-ip", "127.0.0.1", "--url", running.base]
    flags += ["--port", str(running.port), "--turn-port", str(running.turn_port)]
    done = subprocess.run(
        [str(running.binary), "doctor", *flags],
        cwd=running.workdir,
        env=running.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for link in ("udp", "tcp", "tls"):
        assert re.search(rf"^turn {link} +ok .* RTT [0-9.]+ ms$", done.stdout, re.M), done.stdout


def test_sigterm_exits_cleanly(running: BinaryProcess) -> None:
    # Last in the module: stops the shared process. The one-file bootloader forwards the
    # signal to the Python process it started and exits with its status.
    assert running.stop(signal.SIGTERM) == 0
    log = "\n".join(running.lines)
    assert "stopped" in log and "Traceback" not in log
