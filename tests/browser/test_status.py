"""The status page in headless Chromium: it loads under the demo's Content-Security-Policy
(no inline script or style), shows the live numbers of a call, plots its series as SVG and
refreshes by itself. FLASKRTC_SCREENSHOTS=DIR keeps its screenshot (the README's)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.wire.test_metrics import TOKEN, allocate_and_bind, relay_both_ways
from tests.wire.test_turn_wire import TurnProcess


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnProcess]:
    proc = TurnProcess(
        tmp_path_factory.mktemp("status-page"),
        allowed_peer_ip="127.0.0.1",
        general={"rate_limit": "0"},
        metrics={"enabled": "true", "token": TOKEN},
    )
    yield proc
    proc.stop()


def test_the_status_page_shows_a_call_and_refreshes(
    browser: Any, shown: TurnProcess, tmp_path: Path
) -> None:
    a, b = shown.connect(), shown.connect()
    a.register("page-a")
    a.expect_peers(["page-a"])
    b.register("page-b")
    b.expect_peers(["page-a", "page-b"])
    a.send("offer", {"to": "page-b", "session_id": "page-a-page-b", "description": {}})
    b.expect("offer")
    b.send("answer", {"to": "page-a", "session_id": "page-a-page-b", "description": {}})
    a.expect("answer")
    creds = shown.credentials("page")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    client = allocate_and_bind(shown, creds, peer.getsockname(), tcp=False)
    relay_both_ways(client, peer, b"u" * 1000, b"d" * 500)

    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 760})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(f"{shown.base}/status?token={TOKEN}")
        page.wait_for_selector("body[data-loaded='1']", timeout=15000)
        assert page.text_content("#peers") == "2"
        assert page.text_content("#calls") == "1"
        assert page.text_content("#allocations") == "1"
        assert "udp 1" in (page.text_content("#by-transport") or "")
        assert "1.0 kB in" in (page.text_content("#totals") or "")
        series = page.eval_on_selector_all(
            "svg polyline", "nodes => nodes.map(n => n.dataset.series)"
        )
        assert series == ["peers", "calls", "allocations", "in", "out"]
        # It refreshes by itself: the call ends and the page follows, with no reload.
        a.send("bye", {"session_id": "page-a-page-b"})
        a.expect("bye")
        page.wait_for_selector("#calls:text-is('0')", timeout=15000)
        assert problems == [], problems  # the CSP let everything run, nothing failed
        keep = os.environ.get("FLASKRTC_SCREENSHOTS")
        page.screenshot(path=str(Path(keep) / "status.png" if keep else tmp_path / "status.png"))
    finally:
        context.close()
        client.close()
        peer.close()
        a.close()
        b.close()
