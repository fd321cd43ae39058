"""The connection check (check.html) and calls that say why they cannot connect, in Debian's
headless Chromium against real flaskrtc servers on loopback.

Servers, all on 127.0.0.1 with TURN over UDP, TCP and TLS:
- ``healthy``: relays on 127.0.0.1 that may reach loopback peers;
- ``wrong``: ``[turn] public_ip = 127.0.0.2``, so its URIs point where nothing listens (still
  loopback: nothing leaves the machine).

WebRTC's TURN over TLS ignores Playwright's ``ignore_https_errors``; the browser is launched
trusting the healthy server's certificate by its key (``--ignore-certificate-errors-spki-list``),
and servers that reuse that certificate are trusted too, any other is refused, as in real life.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from tests.browser import CHROMIUM_FLAGS, WebPage, chromium_path, run_check, spki_pin
from tests.conftest import ServerProcess, free_port

NewPage = Callable[..., WebPage]
LOOPBACK = {"turn.allowed_peer_ip": "127.0.0.0/8"}  # relay candidates are on 127.0.0.1
RELAY = re.compile(r"127\.0\.0\.1:\d+")
# A call must say what failed within 15 s of starting to connect (the page says it at 10 s).
SAYS_WHY_S = 15


def turn_uris(server: ServerProcess) -> list[str]:
    """The URIs the server's /api/turn hands out (what the check must try, one row each)."""
    ports = (server.turn_port, server.turn_tls_port)
    return [
        f"turn:127.0.0.1:{ports[0]}?transport=udp",
        f"turn:127.0.0.1:{ports[0]}?transport=tcp",
        f"turns:127.0.0.1:{ports[1]}?transport=tcp",
    ]


def with_tls(**extra: str) -> dict[str, str]:
    return {**LOOPBACK, "turn.tls_port": str(free_port()), **extra}


def server_reusing_cert(workdir: Path, cert_of: ServerProcess, extra: dict[str, str]) -> Any:
    """A server that uses ``cert_of``'s certificate and key (one the test browser trusts)."""
    certs = workdir / "certs"
    certs.mkdir(parents=True)
    for name in ("cert.pem", "key.pem"):
        shutil.copy(cert_of.cert.parent / name, certs / name)
    return ServerProcess(workdir, extra=extra)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("healthy"), extra=with_tls())
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def wrong(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("wrong"), extra=with_tls(**{"turn.public_ip": "127.0.0.2"})
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def browser(healthy: ServerProcess) -> Iterator[Any]:
    with sync_api.sync_playwright() as running:
        pin = f"--ignore-certificate-errors-spki-list={spki_pin(healthy.cert)}"
        launched = running.chromium.launch(
            executable_path=chromium_path(), args=[*CHROMIUM_FLAGS, pin]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("FLASKRTC_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        return Path(target)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def new_page(browser: Any, healthy: ServerProcess, shots: Path) -> Iterator[NewPage]:
    """Pages, each in a browser context of its own (its own storage, like two users)."""
    contexts: list[Any] = []
    pages: list[WebPage] = []

    def make(server: ServerProcess = healthy, open_now: bool = True, **args: Any) -> WebPage:
        context = browser.new_context(ignore_https_errors=True, **args)
        context.set_default_timeout(15000)
        contexts.append(context)
        page = WebPage(context.new_page(), server.base, shots)
        pages.append(page)
        return page.open() if open_now else page

    yield make
    for context in contexts:
        context.close()
    errors = [err for page in pages for err in page.errors]
    assert errors == [], f"uncaught errors in the page: {errors}"


# ---------- the check page against real servers ----------


def test_check_healthy_server_every_uri_relays(new_page: NewPage, healthy: ServerProcess) -> None:
    page = new_page(open_now=False, viewport={"width": 900, "height": 900})
    started = time.monotonic()
    got = run_check(page.page, healthy.base + "/check.html")
    assert time.monotonic() - started < 30  # each step has its own timeout; here none is hit
    assert [row["uri"] for row in got["rows"]] == turn_uris(healthy)
    assert [row["transport"] for row in got["rows"]] == ["udp", "tcp", "tls"]
    for row in got["rows"]:
        assert row["state"] == "ok", row
        assert row["cause"] == ""
        assert RELAY.fullmatch(row["relay"]), row  # the relay address the server handed out
        assert int(row["gatherMs"]) >= 0 and int(row["relayMs"]) > 0
        assert row["relay"] in row["gather"] and "there and back" in row["relayStep"]
    assert got["verdict"]["verdict"] == "udp" and got["verdict"]["cause"] == ""
    assert "over UDP" in got["title"] and got["notes"] == []
    # One username per URI: the relays of three URIs at once stay clear of [turn] user_quota.
    for index in range(3):
        healthy.wait_for_log(rf"GET /api/turn\?service=turn&username=check-\d{{6}}-{index} ")
    page.screenshot("check")


def test_check_wrong_turn_address_fails_every_uri(new_page: NewPage, wrong: ServerProcess) -> None:
    page = new_page(wrong, open_now=False)
    started = time.monotonic()
    got = run_check(page.page, wrong.base + "/check.html")
    # The UDP row waits out its gathering timeout (8 s): nothing answers, nothing refuses.
    assert time.monotonic() - started < 25
    assert [row["uri"].split(":")[1] for row in got["rows"]] == ["127.0.0.2"] * 3
    for row in got["rows"]:
        assert row["state"] == "fail" and row["cause"] == "unreachable", row
        assert "relay" not in row and row["relayStep"] == "not tried"
    assert got["verdict"]["verdict"] == "none"
    assert got["verdict"]["cause"] == "unreachable"
    assert f"127.0.0.2:{wrong.turn_port}" in got["text"] and "public_ip" in got["text"]


def test_check_uses_the_remembered_server_setting(
    new_page: NewPage, healthy: ServerProcess, wrong: ServerProcess
) -> None:
    """Served by the healthy server, the check tries the server the call page is set to."""
    a = new_page()
    a.page.locator("#settings summary").click()
    a.page.locator("#server").fill(f"127.0.0.1:{wrong.port}")
    a.page.locator("#server-form button").click()
    a.page.locator('#conn[data-state="open"]').wait_for()
    a.page.locator("#check-link").click()
    a.page.wait_for_url("**/check.html")
    a.page.locator("#verdict[data-verdict]").wait_for(timeout=40000)
    assert a.page.locator("#check-server").inner_text() == wrong.base
    rows = a.page.locator("#rows li").evaluate_all("l => l.map(e => e.dataset.uri)")
    assert rows[0] == f"turn:127.0.0.2:{wrong.turn_port}?transport=udp"
    assert a.page.locator("#verdict").get_attribute("data-verdict") == "none"

    # A server setting where nothing listens: /api/turn fails, and the check says so.
    a.page.evaluate(
        "port => localStorage.setItem('flaskrtc.server', `127.0.0.1:${port}`)", free_port()
    )
    got = run_check(a.page, healthy.base + "/check.html")
    assert got["rows"] == []
    assert got["verdict"]["verdict"] == "none" and got["verdict"]["cause"] == "api"
    assert "/api/turn" in got["text"]


def test_check_only_tls_reaches_the_server(
    new_page: NewPage, healthy: ServerProcess, tmp_path: Path
) -> None:
    """UDP and TCP go to 127.0.0.2 (nothing there), the turns: URI names the real host: the
    browser sees UDP fail and TLS relay, as behind a firewall that lets only TCP 5349 out."""
    srv = server_reusing_cert(
        tmp_path,
        healthy,
        with_tls(**{"turn.public_ip": "127.0.0.2", "general.domain": "127.0.0.1"}),
    )
    try:
        got = run_check(new_page(srv, open_now=False).page, srv.base + "/check.html")
        states = {row["transport"]: (row["state"], row["cause"]) for row in got["rows"]}
        assert states == {
            "udp": ("fail", "unreachable"),
            "tcp": ("fail", "unreachable"),
            "tls": ("ok", ""),
        }
        assert got["verdict"]["verdict"] == "tcp-only"
        assert "UDP is blocked" in got["title"] and "TLS" in got["text"]
        assert [note["code"] for note in got["notes"]] == ["partial"]
    finally:
        assert srv.stop() == 0


def test_check_tls_refused_while_tcp_works(new_page: NewPage, tmp_path: Path) -> None:
    """A server whose certificate the browser does not trust: TURN over TLS fails, UDP and TCP
    relay, and the verdict says the certificate is the likely cause."""
    srv = ServerProcess(tmp_path, extra=with_tls())
    try:
        got = run_check(new_page(srv, open_now=False).page, srv.base + "/check.html")
        states = [(row["transport"], row["state"]) for row in got["rows"]]
        assert states == [("udp", "ok"), ("tcp", "ok"), ("tls", "fail")]
        assert got["verdict"]["verdict"] == "udp"
        assert got["verdict"]["notes"] == "tls-cert"
        assert "certificate" in got["notes"][0]["text"]
        srv.wait_for_log("TLS handshake failed")  # the server saw the browser refuse it
    finally:
        assert srv.stop() == 0


# ---------- the decisions, case by case (pure functions, run in the browser) ----------

VERDICT_CASES = """async () => {
  const L = await import("/js/checklogic.js");
  const ok = (ms = 5) => ({ ok: true, ms, relay: "203.0.113.7:50000", errors: [] });
  const dead = (code = 701) => ({ ok: false, errors: code ? [{ code, text: "x" }] : [] });
  const row = (transport, gather, relay) => ({
    uri: transport === "tls" ? "turns:h.example:5349?transport=tcp"
                             : `turn:198.51.100.9:3478?transport=${transport}`,
    transport, host: transport === "tls" ? "h.example" : "198.51.100.9",
    port: transport === "tls" ? 5349 : 3478, gather,
    relay: relay === undefined ? (gather && gather.ok ? { ok: true, ms: 9 } : null) : relay,
  });
  const v = (rows, extra = {}) =>
    L.checkVerdict({ server: "https://h.example:8086", rows, ...extra });
  const stuck = { ok: false, error: "timeout" };
  const base = { peer: "Bob (123456)", relayOnly: true,
    uris: ["turn:198.51.100.9:3478?transport=udp", "turn:198.51.100.9:3478?transport=tcp"],
    gathering: "gathering", localCandidates: 0,
    localRelays: 0, remoteCandidates: 0, errors: [], ice: "new", connected: false,
    failed: false, dtls: "new", elapsedMs: 0 };
  const d = (fields) => L.diagnoseCall({ ...base, ...fields });
  return {
    all: v([row("udp", ok()), row("tcp", ok()), row("tls", ok())]),
    udpBlocked: v([row("udp", dead(0)), row("tcp", ok()), row("tls", ok())]),
    udpBlockedTlsRefused: v([row("udp", dead(0)), row("tcp", ok()), row("tls", dead())]),
    udpTlsRefused: v([row("udp", ok()), row("tcp", ok()), row("tls", dead())]),
    tlsOnly: v([row("udp", dead(0)), row("tcp", dead()), row("tls", ok())]),
    unreachable: v([row("udp", dead(0)), row("tcp", dead()), row("tls", dead())]),
    relayUnreachable: v(
      [row("udp", ok(), stuck), row("tcp", ok(), stuck), row("tls", ok(), stuck)]),
    relayAndTls: v([row("udp", ok(), stuck), row("tcp", ok(), stuck), row("tls", dead())]),
    auth: v([row("udp", dead(401)), row("tcp", dead(401))]),
    quota: v([row("udp", dead(486))]),
    api: v([], { apiError: "Failed to fetch" }),
    noUris: v([]),
    rowApi: v([{ ...row("udp", null), api: "HTTP 500" }, row("tcp", ok())]),
    causes: [row("udp", dead(0)), row("udp", dead(401)), row("udp", ok(), stuck), row("udp", ok()),
             { ...row("udp", null), api: "x" }].map(L.rowCause),
    uris: ["turn:198.51.100.9:3478?transport=udp", "turn:h.example",
           "turns:h.example:443?transport=tcp", "turn:[2001:db8::1]:19302?transport=tcp",
           "stun:h.example:3478", ""].map(L.parseTurnUri),
    candidates: [
      L.parseCandidate("candidate:1 1 udp 25042943 203.0.113.7 54561 typ relay"
                       + " raddr 0.0.0.0 rport 0 generation 0"),
      L.parseCandidate("a=candidate:2 1 UDP 2122260223 192.0.2.10 50000 typ host"),
      L.parseCandidate("not a candidate"),
    ],
    sdpCount: [L.sdpCandidateCount("v=0\\r\\na=candidate:1 1 udp 1 192.0.2.1 1 typ host\\r\\n"
                                   + "a=candidate:2 1 udp 1 192.0.2.1 2 typ relay\\r\\n"
                                   + "a=end-of-candidates\\r\\n"),
               L.sdpCandidateCount(""), L.sdpCandidateCount(undefined)],
    calls: {
      early: d({}),
      connected: d({ connected: true, elapsedMs: 60000, ice: "failed" }),
      relayOnlyComplete: d({ gathering: "complete", localCandidates: 0,
        errors: [{ url: base.uris[1], code: 701, text: "Failed to establish connection" }] }),
      notRelayOnlyComplete: d({ relayOnly: false, gathering: "complete", localCandidates: 2 }),
      notRelayOnlyLate: d({ relayOnly: false, gathering: "complete", localCandidates: 2,
        remoteCandidates: 3, elapsedMs: 10000 }),
      stillGatheringLate: d({ elapsedMs: 10000 }),
      noTurn: d({ uris: [], gathering: "complete" }),
      noRemote: d({ localCandidates: 2, localRelays: 2, elapsedMs: 9999 }),
      noRemoteLate: d({ localCandidates: 2, localRelays: 2, elapsedMs: 10000 }),
      remoteInSdpLate: d({ localCandidates: 2, localRelays: 2, remoteCandidates: 1,
        ice: "checking", elapsedMs: 12000 }),
      iceFailed: d({ localCandidates: 2, localRelays: 2, remoteCandidates: 2, ice: "failed",
        elapsedMs: 100 }),
      iceFailedNoRemote: d({ localCandidates: 2, localRelays: 2, ice: "failed" }),
      dtls: d({ localRelays: 1, remoteCandidates: 1, ice: "connected", failed: true,
        dtls: "failed" }),
      iceLagging: d({ localRelays: 1, remoteCandidates: 1, ice: "disconnected", failed: true,
        dtls: "new" }),
    },
  };
}"""


def test_verdict_and_diagnosis_logic(new_page: NewPage) -> None:
    """checklogic.js, every case, as the browser runs it (no Node.js needed)."""
    got = new_page().page.evaluate(VERDICT_CASES)

    def verdict(name: str) -> tuple[str, str | None, list[str]]:
        case = got[name]
        return case["verdict"], case["cause"], [n["code"] for n in case["notes"]]

    assert verdict("all") == ("udp", None, [])
    assert verdict("udpBlocked") == ("tcp-only", None, ["partial"])
    assert "UDP is blocked" in got["udpBlocked"]["title"]
    assert "198.51.100.9:3478" in got["udpBlocked"]["text"]
    assert "TCP and TLS" in got["udpBlocked"]["text"]
    assert verdict("udpBlockedTlsRefused") == ("tcp-only", None, ["tls-cert", "partial"])
    assert "over TCP" in got["udpBlockedTlsRefused"]["text"]
    assert "certificate" in got["udpBlockedTlsRefused"]["notes"][0]["text"]
    # The partial note lists the UDP URI; the TLS one is already explained by tls-cert.
    partial = got["udpBlockedTlsRefused"]["notes"][1]["text"]
    assert "transport=udp" in partial and "turns:" not in partial
    assert verdict("udpTlsRefused") == ("udp", None, ["tls-cert"])
    assert verdict("tlsOnly") == ("tcp-only", None, ["partial"])  # TCP itself fails: no cert note
    assert verdict("unreachable") == ("none", "unreachable", [])
    text = got["unreachable"]["text"]
    assert "198.51.100.9:3478" in text and "h.example:5349" in text and "public_ip" in text
    assert verdict("relayUnreachable") == ("none", "relay-unreachable", [])
    assert "203.0.113.7:50000" in got["relayUnreachable"]["text"]
    assert "public_ip" in got["relayUnreachable"]["text"]
    # TCP answers and TLS does not: still the relay address first, the certificate as a note.
    assert verdict("relayAndTls") == ("none", "relay-unreachable", ["tls-cert"])
    assert verdict("auth") == ("none", "auth", [])
    assert verdict("quota") == ("none", "quota", [])
    assert verdict("api") == ("none", "api", [])
    assert "Failed to fetch" in got["api"]["text"] and "/api/turn" in got["api"]["title"]
    assert verdict("noUris") == ("none", "no-uris", [])
    assert verdict("rowApi") == ("tcp-only", None, ["partial"])
    assert got["causes"] == ["unreachable", "auth", "relay-unreachable", None, "api"]

    uris = got["uris"]
    assert {k: uris[0][k] for k in ("scheme", "host", "port", "transport")} == {
        "scheme": "turn",
        "host": "198.51.100.9",
        "port": 3478,
        "transport": "udp",
    }
    assert (uris[1]["port"], uris[1]["transport"]) == (3478, "udp")  # RFC 7065 defaults
    assert (uris[2]["scheme"], uris[2]["port"], uris[2]["transport"]) == ("turns", 443, "tls")
    assert (uris[3]["host"], uris[3]["port"], uris[3]["transport"]) == (
        "[2001:db8::1]",
        19302,
        "tcp",
    )
    assert uris[4] is None and uris[5] is None
    relay, host, junk = got["candidates"]
    assert relay == {
        "protocol": "udp",
        "address": "203.0.113.7",
        "port": 54561,
        "type": "relay",
        "relatedAddress": "0.0.0.0",
        "relatedPort": 0,
    }
    assert (host["type"], host["protocol"], host["relatedAddress"]) == ("host", "udp", None)
    assert junk is None
    assert got["sdpCount"] == [2, 0, 0]

    calls = got["calls"]
    assert calls["early"] is None and calls["connected"] is None
    # Relay only and gathering over without a relay: said at once, naming each URI's error.
    assert calls["relayOnlyComplete"]["reason"] == "no-relay"
    said = calls["relayOnlyComplete"]["text"]
    assert "transport=udp: no answer;" in said
    assert "transport=tcp: no answer (Failed to establish connection)" in said
    # Without relay only, host candidates may still connect: wait for the deadline.
    assert calls["notRelayOnlyComplete"] is None
    assert calls["notRelayOnlyLate"]["reason"] == "no-relay"
    assert calls["stillGatheringLate"]["reason"] == "no-relay"
    assert "/api/turn" in calls["noTurn"]["text"]
    assert calls["noRemote"] is None
    assert calls["noRemoteLate"]["reason"] == "no-remote"
    assert "never arrived" in calls["noRemoteLate"]["text"]
    assert "Bob (123456)" in calls["noRemoteLate"]["text"]
    assert calls["remoteInSdpLate"]["reason"] == "no-path"
    assert "ICE checking" in calls["remoteInSdpLate"]["text"]
    assert calls["iceFailed"]["reason"] == "ice-failed"  # at once, long before the deadline
    assert "no candidate pair" in calls["iceFailed"]["text"]
    assert "none of Bob (123456)'s candidates" in calls["iceFailedNoRemote"]["text"]
    assert calls["dtls"]["reason"] == "failed" and "DTLS" in calls["dtls"]["text"]
    assert calls["iceLagging"]["reason"] == "ice-failed"


# ---------- calls that cannot connect say why ----------


def call_and_accept(a: WebPage, b: WebPage) -> float:
    """A calls B with relay only on both sides; B accepts. Returns when B accepted."""
    b.page.locator("#relay-only").set_checked(True)
    a.wait_peer(b.id)
    a.call(b.id, "data", relay_only=True)
    b.wait_incoming()
    accepted = time.monotonic()
    b.page.locator("#accept").click()
    return accepted


def wait_problem(page: WebPage, reason: str, timeout: float) -> str:
    """Wait until the call bar says why the call does not connect; return the text."""
    box = page.page.locator(f'#call-problem[data-reason="{reason}"]')
    box.wait_for(state="visible", timeout=timeout * 1000)
    link = box.locator("a.check-link")
    assert link.get_attribute("href") == "check.html" and link.is_visible()
    return str(box.inner_text())


def test_call_without_relay_says_why(new_page: NewPage, wrong: ServerProcess) -> None:
    """Relay only with a TURN address where nothing listens: within 15 s both sides say no
    relay candidate came, name the URIs, and link the check; the call is still up."""
    a, b = new_page(wrong), new_page(wrong)
    accepted = call_and_accept(a, b)
    for page in (b, a):
        text = wait_problem(page, "no-relay", SAYS_WHY_S - (time.monotonic() - accepted))
        assert "no relay candidate" in text and f"turn:127.0.0.2:{wrong.turn_port}" in text
        assert "public_ip" in text
        assert page.page.locator("#call-status").get_attribute("data-state") == "connecting"
    a.screenshot("call-no-relay")
    # The link opens the check in a new tab, so the call is not lost.
    assert a.page.locator("#call-problem a").get_attribute("target") == "_blank"
    a.hangup()
    for page in (a, b):
        page.wait_state("idle")
        assert page.page.locator("#call-problem").is_hidden()  # a hang-up is no failure


# Holds the page's outgoing "candidate" messages (wrapping WebSocket.prototype.send) until
# window.releaseCandidates() sends them: the peer sees a caller whose candidates are lost.
HOLD_CANDIDATES = """
const send = WebSocket.prototype.send;
window.heldCandidates = [];
window.releaseCandidates = () => {
  window.holding = false;
  for (const [ws, data] of window.heldCandidates.splice(0)) send.call(ws, data);
};
window.holding = true;
WebSocket.prototype.send = function (data) {
  if (window.holding && JSON.parse(data).type === "candidate") {
    window.heldCandidates.push([this, data]);
    return;
  }
  return send.call(this, data);
};
"""


def holding_page(new_page: NewPage) -> WebPage:
    page = new_page(open_now=False)
    page.page.add_init_script(HOLD_CANDIDATES)
    return page.open()


def test_call_whose_candidates_never_arrive_says_why(new_page: NewPage) -> None:
    """A's candidates never leave A: B says so within 15 s. A has B's candidates, but its
    checks reach no permission on B's relay: A says ICE failed as soon as it does, and ends."""
    a, b = holding_page(new_page), new_page()
    accepted = call_and_accept(a, b)
    text = wait_problem(b, "no-remote", SAYS_WHY_S - (time.monotonic() - accepted))
    assert a.id in text and "never arrived" in text
    assert a.page.evaluate("window.heldCandidates.length") > 0
    # A's ICE gives up on its own (no sleep: wait for the page to say it), then A hangs up.
    a.page.locator('#call-status[data-state="idle"]').wait_for(timeout=60000)
    failed = wait_problem(a, "ice-failed", 1)
    assert "ICE failed" in failed and "relay only" in failed.lower()
    b.wait_state("idle")


def test_call_that_connects_late_drops_the_message(new_page: NewPage) -> None:
    """The peer's candidates come late (after the page said they never arrived): the call
    connects, and the message goes away."""
    a, b = holding_page(new_page), new_page()
    accepted = call_and_accept(a, b)
    wait_problem(b, "no-remote", SAYS_WHY_S - (time.monotonic() - accepted))
    a.page.evaluate("window.releaseCandidates()")
    for page in (a, b):
        page.wait_state("connected")
    b.page.locator("#call-problem").wait_for(state="hidden")
    assert a.page.locator("#call-problem").is_hidden()
    assert b.pair()[0] == "relay"
    b.chat("late but here")
    a.wait_chat("late but here")
    a.hangup()
    b.wait_state("idle")


def test_check_survives_uris_the_browser_refuses(new_page: NewPage, healthy: ServerProcess) -> None:
    """/api/turn answering with a URI RTCPeerConnection refuses: that row fails, the others
    are still checked, and the check ends with a verdict."""
    page = new_page(open_now=False)
    good = turn_uris(healthy)[0]

    def bad_turn(route: Any) -> None:
        body = {"username": "1:u", "password": "p", "ttl": 60, "uris": ["turn:", good]}
        route.fulfill(json=body)

    page.page.route(re.compile(r"/api/turn\?"), bad_turn)
    got = run_check(page.page, healthy.base + "/check.html")
    states = [(row["uri"], row["state"]) for row in got["rows"]]
    assert states == [("turn:", "fail"), (good, "fail")]  # the made-up password is refused
    assert got["rows"][0]["transport"] == "unknown" and got["rows"][0]["gather"]
    assert got["verdict"]["verdict"] == "none"
    assert got["verdict"]["cause"] == "auth", got  # 401 from the real server, said as such
