"""Fixtures of the NAT lab: the namespaces, flaskrtc in ``srv``, aiortc peers and Chromium in
the client namespaces. See netlab.py for the drawing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from tests.browser import CHROMIUM_FLAGS, WebPage, chromium_path
from tests.conftest import REPO, ServerProcess
from tests.lab.netlab import IPV6_ONLY, SERVER_IP, SERVER_IP6, NetLab, why_unavailable

HTTPS_PORT, TURN_PORT, TURNS_PORT = 8086, 19302, 5349


@pytest.fixture(scope="session")
def lab() -> Iterator[NetLab]:
    """The lab's namespaces, built once; removed at the end whatever happened."""
    reason = why_unavailable()
    if reason is not None:
        if os.environ.get("FLASKRTC_REQUIRE_INTEROP"):
            pytest.fail(f"NAT lab: {reason}; FLASKRTC_REQUIRE_INTEROP is set")
        pytest.skip(f"NAT lab: {reason}")
    built = NetLab()
    built.up()
    try:
        yield built
    finally:
        built.down()


@pytest.fixture
def nat(lab: NetLab) -> Iterator[NetLab]:
    """The lab with both NATs reset to plain symmetric NAT before and after the test."""
    for side in ("a", "b"):
        lab.set_nat(side)
    yield lab
    for side in ("a", "b"):
        lab.set_nat(side)


class LabServer(ServerProcess):
    """flaskrtc in the ``srv`` namespace on its default ports, TLS on, as deployed. It
    listens on IPv4 only unless told (``"general.bind": "::", "turn.bind": "::"``)."""

    def __init__(self, lab: NetLab, workdir: Path, **settings: str) -> None:
        extra = {
            "general.bind": "0.0.0.0",
            "general.port": str(HTTPS_PORT),
            "general.domain": SERVER_IP,
            "turn.bind": "0.0.0.0",
            "turn.port": str(TURN_PORT),
            "turn.tls_port": str(TURNS_PORT),
            "turn.public_ip": SERVER_IP,
        }
        extra.update(settings)
        super().__init__(workdir, extra=extra, wrap=lab.exec_argv("srv", []))
        self.base = f"https://{SERVER_IP}:{self.port}"
        self.base6 = f"https://[{SERVER_IP6}]:{self.port}"

    def base_for(self, side: str) -> str:
        """The URL client ``side`` reaches the server at: an IPv6-only one, its IPv6 address."""
        return self.base6 if side in IPV6_ONLY else self.base


@pytest.fixture
def lab_server(nat: NetLab, tmp_path: Path) -> Iterator[Callable[..., LabServer]]:
    """Start flaskrtc in ``srv`` with config overrides (``"turn.public_ip": ""``)."""
    started: list[LabServer] = []

    def start(**settings: str) -> LabServer:
        assert not started, "one server at a time: they share the ports"
        workdir = tmp_path / "srv"
        workdir.mkdir(exist_ok=True)  # a test may have put the certificate to use there
        started.append(LabServer(nat, workdir, **settings))
        return started[-1]

    yield start
    for server in started:
        assert server.stop() == 0, "\n".join(server.lines[-30:])


class LabPeer:
    """tests/lab/peer.py running in a client namespace; its JSON events, as they come."""

    def __init__(self, lab: NetLab, side: str, server: LabServer, peer_id: str, *args: str):
        self.id = peer_id
        argv = [
            sys.executable, "-m", "tests.lab.peer", "--base", server.base_for(side),
            "--cert", str(server.cert), "--id", peer_id, *args,
        ]  # fmt: skip
        self.proc = lab.popen(
            f"cli{side}",
            argv,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "SSL_CERT_FILE": str(server.cert)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def wait(self, event: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """The first event named ``event`` whose fields match; fails on an ``error`` event,
        on exit, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for found in self.events:
                    if found["event"] == "error":
                        raise AssertionError(f"peer {self.id}: {found['error']}")
                    if found["event"] == event and all(
                        found.get(k) == v for k, v in fields.items()
                    ):
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"peer {self.id}: no {event} {fields or ''} in {left + timeout:.0f} s; "
                        f"events: {self.events}; stderr: {self.stderr[-20:]}"
                    )
                self._cond.wait(min(left, 0.5))

    def states(self) -> list[str]:
        return [e["state"] for e in self.events if e["event"] == "state"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the peer's signal to hang up and exit
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def lab_peer(nat: NetLab) -> Iterator[Callable[..., LabPeer]]:
    """Start aiortc peers in ``clia``/``clib``/``clic``; stopped after the test."""
    peers: list[LabPeer] = []

    def start(side: str, server: LabServer, peer_id: str, *args: str) -> LabPeer:
        peers.append(LabPeer(nat, side, server, peer_id, *args))
        return peers[-1]

    yield start
    for peer in peers:
        peer.close()


# --- Chromium in the client namespaces ---------------------------------------------------


# Module scope, as in tests/browser: while a sync Playwright runs, the main thread has a
# running asyncio loop, and later tests' asyncio.run() would fail.
@pytest.fixture(scope="module")
def lab_playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as running:
        yield running


class Browsers(dict[str, Any]):
    """One headless Chromium per client namespace (started through ``ip netns exec``), on
    first use: ``browsers["a"]``."""

    def __init__(self, lab: NetLab, playwright: Any, folder: Path) -> None:
        super().__init__()
        self.lab, self.playwright, self.folder = lab, playwright, folder
        self.chromium = chromium_path()

    def __missing__(self, side: str) -> Any:
        wrapper = self.folder / f"chromium-cli{side}"
        wrapper.write_text(
            f'#!/bin/sh\nexec ip netns exec {self.lab.ns(f"cli{side}")} {self.chromium} "$@"\n'
        )
        wrapper.chmod(0o755)
        # The server's certificate is self-signed (the page, its WebSocket and turns:).
        self[side] = self.playwright.chromium.launch(
            executable_path=str(wrapper),
            args=[*CHROMIUM_FLAGS, "--ignore-certificate-errors"],
        )
        return self[side]


@pytest.fixture(scope="module")
def lab_browsers(
    lab: NetLab, lab_playwright: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browsers]:
    """The Chromiums of the client namespaces, each started when a test first needs it."""
    browsers = Browsers(lab, lab_playwright, tmp_path_factory.mktemp("chromium"))
    try:
        yield browsers
    finally:
        for browser in browsers.values():
            browser.close()


# Keeps every RTCPeerConnection the page makes, so a test can read its stats (which candidate
# pair ICE chose, the relay candidates' addresses) and the states it went through, without
# the page exposing them.
KEEP_PEER_CONNECTIONS = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.__states = []; // every connectionState any of them reached, in order
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.__pcs.push(pc);
    pc.addEventListener("connectionstatechange", () => window.__states.push(pc.connectionState));
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""

SELECTED_PAIR = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      pair = stats.get(r.selectedCandidatePairId);
    }
  });
  const candidate = (c) => ({type: c.candidateType, ip: c.address, port: c.port,
                             relayProtocol: c.relayProtocol || null});
  const candidates = [];
  stats.forEach((r) => { if (r.type === "local-candidate") candidates.push(candidate(r)); });
  if (!pair) return {local: null, remote: null, candidates};
  return {local: candidate(stats.get(pair.localCandidateId)),
          remote: candidate(stats.get(pair.remoteCandidateId)), candidates};
}
"""


@pytest.fixture
def lab_page(
    lab_browsers: Browsers, nat: NetLab, tmp_path: Path
) -> Iterator[Callable[..., WebPage]]:
    """Open the web demo in the Chromium of client namespace ``a``, ``b`` or ``c`` (at the
    server's IPv6 address). With ``stun_only``, the page's /api/turn answer is rewritten to
    the server's STUN alone."""
    contexts: list[Any] = []
    pages: list[WebPage] = []

    def open_page(
        side: str, server: LabServer, *, stun_only: bool = False, open_demo: bool = True
    ) -> WebPage:
        context = lab_browsers[side].new_context(ignore_https_errors=True)
        context.set_default_timeout(20000)
        contexts.append(context)
        context.add_init_script(KEEP_PEER_CONNECTIONS)
        if stun_only:

            def rewrite(route: Any) -> None:
                # Answered here, not fetched: Playwright's own requests would leave from the
                # root namespace. STUN needs no credential.
                uris = [f"stun:{SERVER_IP}:{TURN_PORT}"]
                body = {"username": "stun-only", "password": "-", "ttl": 86400, "uris": uris}
                route.fulfill(json=body, headers={"Access-Control-Allow-Origin": "*"})

            context.route("**/api/turn*", rewrite)
        page = WebPage(context.new_page(), server.base_for(side), tmp_path)
        pages.append(page)
        return page.open() if open_demo else page

    yield open_page
    for context in contexts:
        context.close()
    errors = [err for page in pages for err in page.errors]
    assert errors == [], f"uncaught errors in the page: {errors}"


def chat_call(caller: WebPage, callee: WebPage, there: str, back: str) -> None:
    """``caller`` places a data call to ``callee`` with ICE policy "all" (the lab's NATs and
    address families are what force the relay), ``callee`` accepts, and a chat text goes
    each way once both are connected."""
    caller.wait_peer(callee.id)
    caller.call(callee.id, "data", relay_only=False)
    callee.accept()
    for page in (caller, callee):
        page.wait_state("connected", timeout=45)
    caller.chat(there)
    callee.wait_chat(there)
    callee.chat(back)
    caller.wait_chat(back)
