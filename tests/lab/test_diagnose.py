"""Saying what is wrong, in the lab: the web demo's connection check from a client behind a
NAT, a call that cannot connect, and ``flaskrtc doctor`` run on the server host."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browser import WebPage, run_check
from tests.conftest import REPO
from tests.lab.conftest import TURN_PORT, LabServer
from tests.lab.netlab import SERVER_IP, NetLab

pytestmark = pytest.mark.lab

StartServer = Callable[..., LabServer]
OpenPage = Callable[..., WebPage]
# No host of the lab has this address: packets to it stay on the lab's segment, unanswered.
WRONG_IP = "198.18.0.99"


def check_from(
    open_page: OpenPage, side: str, server: LabServer, shot: str = ""
) -> dict[str, object]:
    page = open_page(side, server, open_demo=False)
    got = run_check(page.page, server.base + "/check.html")
    folder = os.environ.get("FLASKRTC_SCREENSHOTS")
    if shot and folder:  # the README's picture of a verdict from behind a NAT
        page.page.screenshot(path=str(Path(folder) / f"{shot}.png"))
    return got


def test_check_all_green_when_healthy(lab_server: StartServer, lab_page: OpenPage) -> None:
    got = check_from(lab_page, "a", lab_server())
    rows = got["rows"]
    assert isinstance(rows, list) and len(rows) == 3
    for row in rows:
        assert row["state"] == "ok", row
        assert row["relay"].startswith(f"{SERVER_IP}:"), row
    assert got["verdict"]["verdict"] == "udp"  # type: ignore[index]


def test_check_says_udp_is_blocked_but_tcp_works(
    nat: NetLab, lab_server: StartServer, lab_page: OpenPage
) -> None:
    nat.set_nat("a", drop_udp=True)
    got = check_from(lab_page, "a", lab_server(), shot="check-udp-blocked")
    states = {row["transport"]: row["state"] for row in got["rows"]}  # type: ignore[attr-defined]
    assert states == {"udp": "fail", "tcp": "ok", "tls": "ok"}, got
    assert got["verdict"]["verdict"] == "tcp-only"  # type: ignore[index]


def test_check_fails_with_a_wrong_public_ip(lab_server: StartServer, lab_page: OpenPage) -> None:
    # The turn: URIs name the wrong address; turns: names [general] domain (right), so that
    # allocation works, but its relay is advertised at the wrong address: nobody reaches it.
    server = lab_server(**{"turn.public_ip": WRONG_IP})
    got = check_from(lab_page, "a", server)
    causes = {row["transport"]: row["cause"] for row in got["rows"]}  # type: ignore[attr-defined]
    assert causes == {"udp": "unreachable", "tcp": "unreachable", "tls": "relay-unreachable"}
    assert got["verdict"]["verdict"] == "none"  # type: ignore[index]
    assert WRONG_IP in str(got["text"]) and "public_ip" in str(got["text"])


def test_a_call_that_cannot_connect_says_why(lab_server: StartServer, lab_page: OpenPage) -> None:
    """No TURN (STUN only) across two symmetric NATs: within 15 s both users read why, with a
    link to the connection check, instead of "Connecting" for ever."""
    server = lab_server()
    a = lab_page("a", server, stun_only=True)
    b = lab_page("b", server, stun_only=True)
    a.wait_peer(b.id)
    a.call(b.id, "data", relay_only=False)  # ICE policy "all": the NATs are what fails
    b.accept()
    for page in (a, b):
        problem = page.page.locator("#call-problem:not([hidden])")
        problem.wait_for(timeout=15000)
        assert problem.get_attribute("data-reason"), problem.inner_text()
        assert problem.locator('a[href="check.html"]').count() == 1


def row(output: str, name: str) -> str:
    """The table row of check ``name`` (``turn udp``, not ``turn udp port``)."""
    pattern = re.compile(rf"{name}\s+(ok|warn|FAIL|skip)\s")
    return next(line for line in output.splitlines() if pattern.match(line))


def doctor(lab: NetLab, server: LabServer) -> subprocess.CompletedProcess[str]:
    """``flaskrtc doctor`` on the server host, with the server's own config."""
    argv = [sys.executable, "-m", "flaskrtc", "doctor", "--config", str(server.config)]
    return subprocess.run(
        lab.exec_argv("srv", argv), capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_doctor_healthy(nat: NetLab, lab_server: StartServer) -> None:
    done = doctor(nat, lab_server())
    assert done.returncode == 0, done.stdout + done.stderr
    for transport in ("udp", "tcp", "tls"):
        line = row(done.stdout, f"turn {transport}")
        assert " ok " in line and f"via {SERVER_IP}:" in line and "RTT" in line, done.stdout
    print(done.stdout)  # the README's example


def test_doctor_names_a_wrong_public_ip(nat: NetLab, lab_server: StartServer) -> None:
    done = doctor(nat, lab_server(**{"turn.public_ip": WRONG_IP}))
    assert done.returncode == 1, done.stdout + done.stderr
    assert " warn " in row(done.stdout, "public ip"), done.stdout
    for transport in ("udp", "tcp"):
        line = row(done.stdout, f"turn {transport}")
        assert " FAIL " in line and f"{WRONG_IP}:{TURN_PORT}" in line, done.stdout
    # turns: names [general] domain, which is right: it allocates, but its relay does not
    # answer at the advertised (wrong) address.
    assert " FAIL " in row(done.stdout, "turn tls") and "relay" in row(done.stdout, "turn tls")
    assert "public_ip" in done.stdout.split("To fix:")[1]
    print(done.stdout)
