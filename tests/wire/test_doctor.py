"""``python -m flaskrtc doctor`` as a user runs it, against real servers on loopback: a healthy
one, one whose ``[turn] public_ip`` is wrong, none at all, and ports another program holds."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ServerProcess, free_port

RTT = re.compile(r"relayed both ways via 127\.0\.0\.1:\d+ and 127\.0\.0\.1:\d+, RTT (\d+\.\d) ms$")


def doctor(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # Without the developer's FLASKRTC_* variables: the config file and flags decide.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKRTC_")}
    return subprocess.run(
        [sys.executable, "-m", "flaskrtc", "doctor", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(out: str) -> dict[str, tuple[str, str]]:
    """name -> (result, detail) of each row of the table."""
    found = {}
    for line in out.splitlines():
        match = re.match(r"(\S.*?)\s+(ok|warn|FAIL|skip)\s{2,}(.*)$", line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3))
    return found


def fixes(out: str) -> dict[str, str]:
    """name -> fix, from the lines after "To fix:"."""
    lines = out.splitlines()
    found = {}
    for line in lines[lines.index("To fix:") + 1 :] if "To fix:" in lines else []:
        match = re.match(r"  (.+?) \((?:warn|FAIL)\): (.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def against(server: ServerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    """doctor with the server's config, URL and the ports it really got (its config says 0)."""
    return doctor(
        server.workdir,
        "--config",
        str(server.config),
        "--url",
        server.base,
        "--port",
        str(server.port),
        "--turn-port",
        str(server.turn_port),
        *extra,
    )


def turn_server(workdir: Path, public_ip: str) -> ServerProcess:
    return ServerProcess(
        workdir, extra={"turn.tls_port": str(free_port()), "turn.public_ip": public_ip}
    )


@pytest.fixture
def healthy(tmp_path: Path) -> Iterator[ServerProcess]:
    server = turn_server(tmp_path, "127.0.0.1")
    yield server
    server.stop()


@pytest.fixture
def misaddressed(tmp_path: Path) -> Iterator[ServerProcess]:
    # 127.0.0.2 stays on loopback, and nothing of this server listens there.
    server = turn_server(tmp_path, "127.0.0.2")
    yield server
    server.stop()


def test_healthy_server_passes_with_an_rtt_per_transport(healthy: ServerProcess) -> None:
    before = sorted(p.relative_to(healthy.workdir) for p in healthy.workdir.rglob("*"))
    result = against(healthy)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    table = rows(result.stdout)
    for link in ("udp", "tcp", "tls"):
        status, detail = table[f"turn {link}"]
        assert status == "ok", detail
        assert RTT.search(detail), detail
    port = healthy.turn_tls_port
    assert table["turn tls"][1].startswith(f"127.0.0.1:{port}: ")
    for name, number in (
        ("https port", healthy.port),
        ("turn udp port", healthy.turn_port),
        ("turn tcp port", healthy.turn_port),
        ("turn tls port", healthy.turn_tls_port),
    ):
        assert table[name][0] == "ok" and table[name][1].startswith(f"{number}/"), table[name]
        assert "in use by flaskrtc" in table[name][1]
    assert table["server"][0] == table["clock"][0] == table["certificate"][0] == "ok"
    assert table["public ip"][0] == "warn"  # loopback: fine for this test, not for clients
    assert "FAIL" not in {status for status, _ in table.values()}
    # Read-only: doctor wrote nothing into the server's folder.
    assert sorted(p.relative_to(healthy.workdir) for p in healthy.workdir.rglob("*")) == before


def test_wrong_public_ip_fails_each_transport_with_the_fix(misaddressed: ServerProcess) -> None:
    started = time.monotonic()
    result = against(misaddressed, "--timeout", "2")
    took = time.monotonic() - started
    print(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    table, fix = rows(result.stdout), fixes(result.stdout)
    ports = {"udp": misaddressed.turn_port, "tcp": misaddressed.turn_port}
    ports["tls"] = misaddressed.turn_tls_port
    for link, port in ports.items():
        status, detail = table[f"turn {link}"]
        assert status == "FAIL"
        assert detail.startswith(f"127.0.0.2:{port}: failed at "), detail
        assert f"answers at 127.0.0.1:{port} but not at 127.0.0.2:{port}" in fix[f"turn {link}"]
        assert "set [turn] public_ip" in fix[f"turn {link}"]
    # The server itself is fine: /api/turn answered, and the ports are flaskrtc's.
    assert table["server"][0] == table["clock"][0] == "ok"
    assert table["turn udp port"][0] == "ok"
    assert table["public ip"][0] == "warn" and "127.0.0.2 is loopback" in table["public ip"][1]
    assert took < 20, f"a broken setup took {took:.1f} s"


def test_no_server_running(tmp_path: Path) -> None:
    port, turn_port = free_port(), free_port(socket.SOCK_DGRAM)
    config = tmp_path / "config.ini"
    config.write_text(
        "[general]\nbind = 127.0.0.1\n"
        f"port = {port}\ncert = {tmp_path}/certs/cert.pem\nkey = {tmp_path}/certs/key.pem\n"
        f"[turn]\nbind = 127.0.0.1\nport = {turn_port}\ntls_port = 0\n"
    )
    result = doctor(tmp_path, "--config", str(config), "--timeout", "2")
    print(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    table = rows(result.stdout)
    url = f"https://127.0.0.1:{port}"
    assert table["server"] == ("FAIL", f"no server at {url}: connection refused")
    assert f"`flaskrtc --config {config}`" in fixes(result.stdout)["server"]
    assert "--url" in fixes(result.stdout)["server"]
    for name in ("clock", "turn udp", "turn tcp"):
        assert table[name] == ("skip", f"skipped: no server at {url}")
    assert "turn tls" not in table  # tls_port = 0
    assert table["certificate"][0] == "ok" and "will be generated" in table["certificate"][1]
    assert table["https port"] == ("ok", f"{port}/tcp on 127.0.0.1: free")
    # Read-only: no certificate and no TURN secret were generated.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.ini"]


def test_ports_held_by_another_program_fail(tmp_path: Path) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
    ):
        udp.bind(("127.0.0.1", 0))  # answers nothing, as a program that is not STUN would
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)  # accepts, and never answers HTTP
        udp_port, tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
        config = tmp_path / "config.ini"
        config.write_text(
            "[general]\nbind = 127.0.0.1\ntls = false\n"
            "[turn]\nbind = 127.0.0.1\ntls_port = 0\nsecret = x\n"
        )
        args = ["--config", str(config), "--port", str(tcp_port), "--turn-port", str(udp_port)]
        result = doctor(tmp_path, *args, "--timeout", "1")
    print(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    table, fix = rows(result.stdout), fixes(result.stdout)
    assert table["turn udp port"] == ("FAIL", f"port {udp_port}/udp is used by another program")
    assert table["http port"] == ("FAIL", f"port {tcp_port}/tcp is used by another program")
    assert "[turn] port" in fix["turn udp port"] and "[general] port" in fix["http port"]
