"""IPv6 in Debian's headless Chromium: one flaskrtc with HTTP and TURN on ``::`` (as shipped, no
``[turn] public_ip``), a page opened on ``https://[::1]:PORT/`` and one on
``https://127.0.0.1:PORT/``, relay-only calls between them.

Each page's /api/turn names TURN in the family the page reached the server with: the [::1]
page reaches TURN over IPv6, the 127.0.0.1 page over IPv4. Chromium's Allocate requests carry
no REQUESTED-ADDRESS-FAMILY (nor ADDITIONAL-ADDRESS-FAMILY), so both get the default IPv4
relay (RFC 8656 §7.2); the [::1] page's is on 127.0.0.1 because it came over loopback
(addressing.py). That is RFC 6156's "IPv6 client, IPv4 peer": the call works through two IPv4
relays, one of them reached over IPv6. Chromium never asks for an IPv6 relay, so no call here
goes through one: tests/wire/test_turn_ipv6.py covers IPv6 relays with coturn's and aioice's
clients.

Chromium sends TURN over UDP from the host's own address of the family (the [::1] page from
the host's IPv6 address, the other from its IPv4 one; over TCP the kernel picks loopback),
still to loopback: nothing leaves the machine. It gathers only on the host's networks, not
on loopback, so these tests need an IPv6 address besides ::1 and are skipped without one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import RELAY_ONLY_BY_DEFAULT, WebPage
from tests.conftest import ServerProcess

V6, V4 = "[::1]", "127.0.0.1"  # the hosts the pages are opened on


def host_ipv6_address() -> bool:
    """Whether the host has a global-scope IPv6 address outside loopback (Linux's list)."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return False
    # address, interface index, prefix length, scope (00: global), flags, interface name
    return any(f[3] == "00" and f[5] != "lo" for f in (line.split() for line in lines))


pytestmark = pytest.mark.skipif(
    not host_ipv6_address(), reason="no IPv6 address besides ::1: Chromium cannot reach ::1"
)

# Keeps every RTCPeerConnection the page makes (the page does not expose its own), to read
# the stats of the call's connection.
KEEP_PEER_CONNECTIONS = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""

# The last connection's selected pair and every local candidate, from getStats().
SELECTED_PAIR = """
async () => {
  const stats = await window.__pcs[window.__pcs.length - 1].getStats();
  const candidate = (c) => ({type: c.candidateType, address: c.address, port: c.port,
                             relayProtocol: c.relayProtocol || null, url: c.url || null});
  let pair = null;
  const candidates = [];
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      pair = stats.get(r.selectedCandidatePairId);
    }
    if (r.type === "local-candidate") candidates.push(candidate(r));
  });
  if (!pair) return {local: null, remote: null, candidates};
  return {local: candidate(stats.get(pair.localCandidateId)),
          remote: candidate(stats.get(pair.remoteCandidateId)), candidates};
}
"""

# A connection of its own with the page's /api/turn credentials, relay only: its relay
# candidates once it has one per TURN transport in `want`, or when `waitMs` is over.
GATHER = """
async ({want, waitMs}) => {
  const turn = await (await fetch("/api/turn?service=turn&username=gather")).json();
  const pc = new RTCPeerConnection({iceTransportPolicy: "relay", iceServers: [
    {urls: turn.uris, username: turn.username, credential: turn.password}]});
  pc.createDataChannel("gather");
  await pc.setLocalDescription(await pc.createOffer());
  const deadline = Date.now() + waitMs;
  let relays = [];
  while (Date.now() < deadline) {
    const stats = await pc.getStats();
    relays = [];
    stats.forEach((r) => {
      if (r.type === "local-candidate" && r.candidateType === "relay") {
        relays.push({address: r.address, port: r.port, relayProtocol: r.relayProtocol,
                     url: r.url});
      }
    });
    if (want.every((p) => relays.some((r) => r.relayProtocol === p))) break;
    await new Promise((done) => setTimeout(done, 100));
  }
  pc.close();
  return {uris: turn.uris, relays};
}
"""

# flaskrtc/turn/core.py at DEBUG: "allocation ('IP', PORT) for EXPIRY:USER via ('IP', PORT)".
ALLOCATION = r"allocation \('{ip}', {port}\) for \d+:{user} via \('(?P<client>[^']+)', \d+\)"


def family(ip: str) -> int:
    return 6 if ":" in ip else 4


class Page(WebPage):
    """A demo page that keeps its peer connections and the /api/turn answers it was given."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        super().__init__(page, base, shots)
        self.turn_answers: list[Any] = []
        page.on(
            "response", lambda r: self.turn_answers.append(r) if "/api/turn?" in r.url else None
        )

    def turn_uris(self) -> list[str]:
        """The URIs of the last /api/turn answer the page read (from its own origin)."""
        assert self.turn_answers, "the page never fetched /api/turn"
        answer = self.turn_answers[-1]
        assert answer.url.startswith(self.base + "/api/turn?"), answer.url
        uris: list[str] = answer.json()["uris"]
        return uris

    def selected(self) -> dict[str, Any]:
        got: dict[str, Any] = self.page.evaluate(SELECTED_PAIR)
        return got


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """flaskrtc as shipped: HTTP and TURN on ::, relays on the address each client reached;
    loopback peers allowed (the relays the pages call each other through are there). DEBUG
    logs each allocation with the client's transport address."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("ipv6"),
        extra={
            "general.bind": "::",
            "turn.bind": "::",
            "turn.public_ip": "",
            "turn.allowed_peer_ip": "127.0.0.1, ::1",
            "general.log_level": "DEBUG",
        },
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def open_page(browser: Any, dual: ServerProcess, tmp_path: Path) -> Iterator[Callable[..., Page]]:
    """Open the demo at ``https://HOST:PORT/`` of the dual-stack server, each page in its own
    browser context (like two users), relay only."""
    contexts: list[Any] = []
    pages: list[Page] = []

    def make(host: str) -> Page:
        context = browser.new_context(ignore_https_errors=True)
        context.set_default_timeout(15000)
        context.add_init_script(RELAY_ONLY_BY_DEFAULT)
        context.add_init_script(KEEP_PEER_CONNECTIONS)
        contexts.append(context)
        page = Page(context.new_page(), f"https://{host}:{dual.port}", tmp_path)
        pages.append(page)
        page.open()
        return page

    yield make
    for context in contexts:
        context.close()
    errors = [err for page in pages for err in page.errors]
    assert errors == [], f"uncaught errors in the page: {errors}"


def expected_uris(host: str, srv: ServerProcess) -> list[str]:
    return [f"turn:{host}:{srv.turn_port}?transport={t}" for t in ("udp", "tcp")]


@pytest.mark.parametrize("caller", [V6, V4])
def test_relay_call_between_an_ipv6_and_an_ipv4_page(
    open_page: Callable[..., Page], dual: ServerProcess, caller: str
) -> None:
    pages = {V6: open_page(V6), V4: open_page(V4)}
    a, b = pages[caller], pages[V4 if caller == V6 else V6]
    a.wait_peer(b.id)
    b.wait_peer(a.id)  # one server, one peer list, whichever family a page came over
    a.call(b.id, "video")
    b.accept()
    for page in (a, b):
        page.wait_state("connected")
    b.wait_video_playing()
    a.wait_video_playing()

    seen: dict[str, dict[str, Any]] = {}
    for host, page in pages.items():
        # /api/turn names TURN only in the family this page reached the server with.
        assert page.turn_uris() == expected_uris(host, dual)
        got = page.selected()
        local, remote = got["local"], got["remote"]
        assert local is not None and remote is not None, got
        # Relay only: each side's end of the pair is its relay, the other's relay facing it.
        assert local["type"] == "relay" and remote["type"] == "relay", got
        assert local["url"] in expected_uris(host, dual), got
        assert local["address"] in {"127.0.0.1", "::1"}, got
        assert {c["type"] for c in got["candidates"]} == {"relay"}, got
        # The server allocated that relay for this page, over this page's family.
        found = dual.wait_for_log(
            ALLOCATION.format(ip=re.escape(local["address"]), port=local["port"], user=page.id)
        )
        assert family(found["client"]) == (6 if host == V6 else 4), found.group(0)
        seen[host] = {**local, "client": found["client"], "remote": remote}
    for host, other in ((V6, V4), (V4, V6)):
        facing = seen[host]["remote"]
        assert (facing["address"], facing["port"]) == (seen[other]["address"], seen[other]["port"])
    for host, info in seen.items():
        print(
            f"page on {host}: relay {info['address']}:{info['port']} (IPv{family(info['address'])})"
            f" via {info['relayProtocol']} from {info['client']} to {info['url']}"
        )

    a.hangup()
    a.wait_state("idle")
    b.wait_state("idle")


@pytest.mark.parametrize("host", [V6, V4])
def test_each_page_gets_udp_and_tcp_relays(
    open_page: Callable[..., Page], dual: ServerProcess, host: str
) -> None:
    """Chromium allocates over UDP and over TCP with the page's /api/turn URIs; both work."""
    page = open_page(host)
    got = page.page.evaluate(GATHER, {"want": ["udp", "tcp"], "waitMs": 5000})
    assert got["uris"] == expected_uris(host, dual)
    assert {r["relayProtocol"] for r in got["relays"]} == {"udp", "tcp"}, got
    for relay in got["relays"]:
        assert relay["url"] in got["uris"], got
        found = dual.wait_for_log(
            ALLOCATION.format(ip=re.escape(relay["address"]), port=relay["port"], user="gather")
        )
        assert family(found["client"]) == (6 if host == V6 else 4), found.group(0)
