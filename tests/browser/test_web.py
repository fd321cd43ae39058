"""The web demo at / in a real browser (Debian's headless Chromium), calling over flaskrtc.

Two tabs of one browser are two users. Each test gets a fresh browser context (no shared
storage), and pages on one module-wide flaskrtc whose TURN relay may reach loopback peers.
Screenshots of the main screens go to $FLASKRTC_SCREENSHOTS (the README's come from there),
else to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from tests.aiortc_peer import AiortcPeer
from tests.browser import CHROMIUM_FLAGS, RELAY_ONLY_BY_DEFAULT, WebPage, chromium_path
from tests.conftest import Client, ServerProcess
from tests.firefox import Firefox

NewPage = Callable[..., WebPage]


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Relay candidates are on 127.0.0.1, which the default peer policy refuses.
    srv = ServerProcess(
        tmp_path_factory.mktemp("web"), extra={"turn.allowed_peer_ip": "127.0.0.0/8"}
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    # One Playwright per module: a second sync instance cannot run beside the first.
    with sync_api.sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def two_camera_browser(playwright: Any) -> Iterator[Any]:
    """A Chromium whose fake media has two cameras."""
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--use-fake-device")]
    flags.append("--use-fake-device-for-media-stream=device-count=2")
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=flags)
    yield launched
    launched.close()


@pytest.fixture
def server_client(web_server: ServerProcess) -> Iterator[Callable[[], Client]]:
    """Plain WebSocket clients on the test server, closed after the test."""
    clients: list[Client] = []

    def make() -> Client:
        clients.append(web_server.connect())
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def aiortc_peer(web_server: ServerProcess) -> Iterator[Callable[[str, str], AiortcPeer]]:
    """aiortc peers on the test server (a Flutter app's stand-in), closed after the test."""
    peers: list[AiortcPeer] = []

    def make(peer_id: str, name: str) -> AiortcPeer:
        peers.append(AiortcPeer(web_server, peer_id, name, loopback_only=True))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("FLASKRTC_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        return Path(target)
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def new_page(browser: Any, web_server: ServerProcess, shots: Path) -> Iterator[NewPage]:
    """Open demo pages, each in its own browser context (its own storage, like two users)."""
    contexts: list[Any] = []
    pages: list[WebPage] = []

    def make(open_now: bool = True, in_browser: Any = None, **context_args: Any) -> WebPage:
        context = (in_browser or browser).new_context(ignore_https_errors=True, **context_args)
        context.set_default_timeout(15000)
        context.add_init_script(RELAY_ONLY_BY_DEFAULT)
        contexts.append(context)
        page = WebPage(context.new_page(), web_server.base, shots)
        pages.append(page)
        return page.open() if open_now else page

    yield make
    for context in contexts:
        context.close()
    errors = [err for page in pages for err in page.errors]
    assert errors == [], f"uncaught errors in the page: {errors}"


def test_relay_video_call_with_chat_and_hang_up(new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    a.wait_peer(b.id)
    b.wait_peer(a.id)
    for page, name in ((a, "Alice"), (b, "Bob")):
        page.page.locator("#name").fill(name)
        page.page.locator("#name").press("Enter")
    b.peer(a.id).locator(".peer-name", has_text="Alice").wait_for()
    a.peer(b.id).locator(".peer-name", has_text="Bob").wait_for()
    assert "you" in a.peer(a.id).inner_text() and "you" not in a.peer(b.id).inner_text()
    a.screenshot("peers")

    a.call(b.id, "video", relay_only=True)
    a.wait_state("calling")
    assert "Alice" in b.wait_incoming() and "video call" in b.wait_incoming()
    b.screenshot("incoming-call")
    b.accept()
    for page in (a, b):
        page.wait_state("connected")
    # A forced TURN: its side of the selected pair is a relay candidate, and B sees it so.
    assert a.pair()[0] == "relay"
    assert b.pair()[1] == "relay"
    assert "via TURN" in a.page.locator("#pair").inner_text()
    width, height = b.wait_video_playing()
    assert width > 0 and height > 0
    a.wait_video_playing()

    a.chat("hello from A")
    b.wait_chat("hello from A")
    b.chat("hi A, B here")
    a.wait_chat("hi A, B here")
    a.wait_chat("hello from A", side="mine")
    a.screenshot("call")

    a.page.locator("#mute").click()
    assert a.page.locator("#mute").get_attribute("aria-pressed") == "true"
    assert (
        a.page.evaluate(
            "() => document.getElementById('local-video').srcObject.getAudioTracks()[0].enabled"
        )
        is False
    )
    a.page.locator("#camera").click()
    assert (
        a.page.evaluate(
            "() => document.getElementById('local-video').srcObject.getVideoTracks()[0].enabled"
        )
        is False
    )
    # One fake camera: nothing to switch to, so the button stays hidden.
    assert a.page.locator("#switch").is_hidden()

    a.hangup()
    a.wait_state("idle")
    b.wait_state("idle")
    assert "hung up" in b.call_text()
    assert b.page.evaluate("() => document.getElementById('remote-video').srcObject") is None
    assert a.page.locator("#mute").is_disabled() and a.page.locator("#hangup").is_disabled()
    # Idle again: the peers can call again.
    assert a.peer(b.id).locator(".call-video").is_enabled()


def test_rejected_call(new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    a.wait_peer(b.id)
    a.call(b.id, "video")
    b.reject()
    b.wait_state("idle")
    a.wait_state("idle")
    assert "declined" in a.call_text()
    assert a.page.locator("#hangup").is_disabled()


def test_caller_gives_up_while_ringing(new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    a.wait_peer(b.id)
    a.call(b.id, "data")
    b.wait_incoming()
    a.hangup()
    b.page.locator("#incoming[open]").wait_for(state="detached")
    b.wait_state("idle")
    assert "cancelled" in b.call_text()


def test_callee_leaves_while_ringing(new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    a.wait_peer(b.id)
    a.call(b.id, "video")
    b.wait_incoming()
    b.page.close()
    a.wait_state("idle")
    assert "left" in a.call_text()
    a.wait_peer(b.id, present=False)


def test_calling_a_peer_that_already_left(new_page: NewPage) -> None:
    """A still lists B (it missed the news), calls, and the server's error ends the call."""
    a = new_page(open_now=False)
    deaf = {"on": False}

    def relay(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if deaf["on"] and json.loads(message).get("type") in ("peers", "leave"):
                return  # A does not hear that B left
            ws.send(message)

        server.on_message(from_server)

    a.page.route_web_socket(re.compile(r"/ws$"), relay)
    a.open()
    b = new_page()
    a.wait_peer(b.id)
    deaf["on"] = True
    b.page.close()
    a.call(b.id, "video")
    a.wait_state("idle")
    assert "no longer online" in a.call_text()
    a.screenshot("peer-gone")


def test_reload_updates_the_other_list(new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    a.wait_peer(b.id)
    old = b.id
    b.open()  # a reload: a fresh page gets a fresh id
    assert b.id != old
    a.wait_peer(old, present=False)
    a.wait_peer(b.id)
    assert a.peer_ids().count(b.id) == 1 and old not in a.peer_ids()


def test_data_only_call(new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    a.wait_peer(b.id)
    a.call(b.id, "data")
    assert "data call" in b.wait_incoming()
    b.accept()
    for page in (a, b):
        page.wait_state("connected")
        assert page.page.locator("#videos").get_attribute("data-media") == "data"
        # No camera for a data call: nothing to mute.
        assert page.page.locator("#mute").is_disabled()
    b.chat("data only, from B")
    a.wait_chat("data only, from B")
    a.chat("and back")
    b.wait_chat("and back")
    a.screenshot("data-call")
    b.hangup()
    a.wait_state("idle")
    b.wait_state("idle")


def test_camera_denied_still_receives(new_page: NewPage) -> None:
    a = new_page()
    b = new_page(open_now=False)
    b.page.add_init_script(
        "navigator.mediaDevices.getUserMedia = () =>"
        " Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"
    )
    b.open()
    a.wait_peer(b.id)
    a.call(b.id, "video")
    b.accept()
    b.wait_message("access was denied")
    b.wait_state("connected")
    b.wait_video_playing()  # B sends nothing but still sees A
    assert b.page.locator("#camera").is_disabled()
    b.hangup()
    a.wait_state("idle")


def test_reconnects_after_a_drop_and_keeps_its_id(new_page: NewPage) -> None:
    a = new_page(open_now=False)
    connections: list[Any] = []

    def relay(ws: Any) -> None:
        connections.append(ws)
        server = ws.connect_to_server()
        server.on_message(ws.send)
        ws.on_message(server.send)

    a.page.route_web_socket(re.compile(r"/ws$"), relay)
    a.open()
    b = new_page()
    a.wait_peer(b.id)
    connections[0].close(code=1011, reason="test drop")
    a.page.locator('#conn[data-state="reconnecting"]').wait_for()
    a.wait_message("Reconnecting with the same id")
    a.page.locator('#conn[data-state="open"]').wait_for()
    assert len(connections) == 2
    assert a.page.locator("#self-id").inner_text() == a.id
    b.wait_peer(a.id)
    a.wait_peer(b.id)


def test_switch_camera(new_page: NewPage, two_camera_browser: Any) -> None:
    a, b = new_page(in_browser=two_camera_browser), new_page()
    a.wait_peer(b.id)
    a.call(b.id, "video")
    b.accept()
    a.wait_state("connected")
    b.wait_video_playing()
    label = "() => document.getElementById('local-video').srcObject.getVideoTracks()[0].label"
    first = a.page.evaluate(label)
    switch = a.page.locator("#switch")
    switch.wait_for()  # shown: there are two cameras
    switch.click()
    a.wait_message("Camera: ")
    second = a.page.evaluate(label)
    assert first != second and second.startswith("fake_device")
    # The peer keeps receiving video from the new camera (the sender's track was replaced).
    b.wait_video_playing()
    a.hangup()
    b.wait_state("idle")


def test_server_setting_is_remembered(new_page: NewPage, web_server: ServerProcess) -> None:
    a = new_page()
    a.page.locator("#settings summary").click()
    a.page.locator("#server").fill(f"127.0.0.1:{web_server.port}")
    a.page.locator("#server-form button").click()
    a.page.locator('#conn[data-state="open"]').wait_for()
    a.page.reload()
    assert a.page.locator("#server").input_value() == f"127.0.0.1:{web_server.port}"
    a.page.locator('#conn[data-state="open"]').wait_for()
    assert f"127.0.0.1:{web_server.port}" in a.page.locator("#conn-text").inner_text()


def test_points_at_another_flaskrtc(new_page: NewPage, tmp_path: Path) -> None:
    """The server field moves the page to another server (its /ws and its /api/turn)."""
    other = ServerProcess(tmp_path, extra={"turn.allowed_peer_ip": "127.0.0.0/8"})
    try:
        there = other.connect()
        there.register("777777", "only on the other server")
        a = new_page()
        a.page.locator("#settings summary").click()
        a.page.locator("#server").fill(f"https://127.0.0.1:{other.port}")
        a.page.locator("#server-form button").click()
        a.wait_peer("777777")
        a.wait_peer(a.id)
        there.expect_peers(["777777", a.id])
        # Calls use the other server's TURN credentials (fetched cross-origin, CORS allows it).
        a.call("777777", "data", relay_only=True)
        offer = there.expect("offer")["data"]
        assert offer["from"] == a.id and offer["media"] == "data"
        other.wait_for_log(r'"GET /api/turn\?service=turn&username=' + a.id)
        there.close()
    finally:
        assert other.stop() == 0


def test_plain_http_page_uses_ws(browser: Any, tmp_path: Path) -> None:
    """Served over plain HTTP (tls = false), the page connects with ws:// to the same host."""
    plain = ServerProcess(tmp_path, tls=False)
    context = browser.new_context()
    try:
        page = context.new_page()
        urls: list[str] = []
        page.on("websocket", lambda ws: urls.append(ws.url))
        page.goto(plain.base + "/")
        page.locator('#conn[data-state="open"]').wait_for()
        assert urls == [f"ws://127.0.0.1:{plain.port}/ws"]
        plain.wait_for_log(r"peer \d{6}: registered")
    finally:
        context.close()
        assert plain.stop() == 0


def test_messages_the_page_sends_follow_the_protocol(
    new_page: NewPage, server_client: Callable[[], Client]
) -> None:
    """What the page puts on the wire: the shapes ../shared/PROTOCOL.md and the apps use."""
    a = new_page(open_now=False)
    a.record_sent_frames()
    a.open()
    b = server_client()
    hostile = '<img src=x onerror="window.pwned = 1">'
    b.register("313131", hostile, "flutter-webrtc/android-plugin 0.0.1")
    a.wait_peer("313131")
    # Names from the network are text, never markup.
    assert a.peer("313131").locator(".peer-name").inner_text() == hostile
    assert a.page.evaluate("window.pwned") is None
    a.call("313131", "video")
    offer = b.expect("offer")["data"]
    candidate = b.expect("candidate")["data"]
    a.hangup()
    bye = b.expect("bye")["data"]
    sent = a.sent_frames()
    assert sent[0] == {
        "type": "new",
        "data": {
            "id": a.id,
            "name": sent[0]["data"]["name"],
            "user_agent": sent[0]["data"]["user_agent"],
        },
    }
    assert "Chrome" in sent[0]["data"]["user_agent"] and sent[0]["data"]["name"]
    session = f"{a.id}-313131"
    assert offer["to"] == "313131" and offer["from"] == a.id and offer["session_id"] == session
    assert offer["media"] == "video" and offer["description"]["type"] == "offer"
    assert (
        "m=video" in offer["description"]["sdp"] and "m=application" in offer["description"]["sdp"]
    )
    assert candidate["session_id"] == session and candidate["to"] == "313131"
    assert set(candidate["candidate"]) == {"sdpMLineIndex", "sdpMid", "candidate"}
    assert candidate["candidate"]["candidate"].startswith("candidate:")
    assert bye == {"session_id": session, "to": "313131"}
    page_bye = [m for m in sent if m["type"] == "bye"]
    assert page_bye == [{"type": "bye", "data": {"session_id": session, "from": a.id}}]


def test_phone_screen(new_page: NewPage) -> None:
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
    a, b = new_page(**phone), new_page(**phone)
    a.wait_peer(b.id)
    overflow = "() => document.documentElement.scrollWidth <= window.innerWidth"
    assert a.page.evaluate(overflow)
    assert a.peer(b.id).locator(".call-video").is_visible()
    a.call(b.id, "video")
    b.accept()
    a.wait_state("connected")
    a.wait_video_playing()
    assert a.page.evaluate(overflow)
    assert a.page.locator("#hangup").is_visible()
    a.screenshot("phone")
    a.hangup()
    b.wait_state("idle")


def test_browser_calls_a_python_aiortc_peer_over_turn(
    new_page: NewPage, aiortc_peer: Callable[[str, str], AiortcPeer]
) -> None:
    """The path a Flutter app takes: a non-browser peer answers the page's call via TURN.

    Every candidate either side offers is on loopback (the page relays through 127.0.0.1,
    aiortc gathers on loopback only): no check goes to the machine's other addresses."""
    peer = aiortc_peer("424242", "aiortc")
    a = new_page(open_now=False)
    a.record_sent_frames()
    a.open()
    a.wait_peer(peer.id)
    assert "Flutter" in a.peer(peer.id).inner_text()
    a.call(peer.id, "video")  # the tests' default: relay only
    a.wait_state("connected")
    assert a.pair()[0] == "relay"
    sent = a.sent_frames()
    page_candidates = [
        m["data"]["candidate"]["candidate"] for m in sent if m["type"] == "candidate"
    ]
    page_candidates += [
        line[2:] for m in sent if m["type"] == "offer"
        for line in m["data"]["description"]["sdp"].splitlines() if line.startswith("a=candidate:")
    ]  # fmt: skip
    assert peer.pc is not None and peer.pc.localDescription is not None
    peer_candidates = [
        line[2:]
        for line in peer.pc.localDescription.sdp.splitlines()
        if line.startswith("a=candidate:")
    ]
    assert page_candidates and peer_candidates
    for candidate in page_candidates + peer_candidates:
        assert candidate.split()[4] in {"127.0.0.1", "::1"}, candidate
    peer.wait(lambda: peer.state == "connected", "aiortc's side of the connection")
    a.wait_video_playing()  # aiortc's generated video arrives in the page
    peer.wait(lambda: peer.frames["video"] > 10, "video frames from the page")
    a.chat("hello python")
    a.wait_chat("echo: hello python")
    assert peer.chat == ["hello python"]
    assert peer.session_id == f"{a.id}-{peer.id}" and peer.media == "video"
    a.hangup()
    peer.wait(lambda: peer.session_id in peer.byes, "the bye")
    a.wait_state("idle")


def test_python_aiortc_peer_calls_the_browser(
    new_page: NewPage, aiortc_peer: Callable[[str, str], AiortcPeer]
) -> None:
    """A Flutter-style caller (candidates inside its SDP, no trickle) reaching the page."""
    peer = aiortc_peer("525252", "aiortc caller")
    a = new_page()
    a.page.locator("#relay-only").set_checked(True)
    a.wait_peer(peer.id)
    peer.call(a.id, "video")
    assert "aiortc caller" in a.wait_incoming()
    a.accept()
    a.wait_state("connected")
    assert a.pair()[0] == "relay"
    a.wait_video_playing()
    peer.wait(lambda: peer.frames["video"] > 10, "video frames from the page")
    a.chat("hello caller")
    a.wait_chat("echo: hello caller")
    peer.send("bye", {"session_id": peer.session_id, "from": peer.id})
    a.wait_state("idle")
    assert "hung up" in a.call_text()


HELPER_CASES = """async () => {
  const { resolveServer, backoffDelay } = await import("/js/signaling.js");
  const { describeAgent, describePair, randomId } = await import("/js/format.js");
  const { selectedPair, describeMediaError } = await import("/js/call.js");
  const https = { protocol: "https:", host: "h:8086" };
  const http = { protocol: "http:", host: "h:8086" };
  let refused = null;
  try { resolveServer("ftp://x", https); } catch (err) { refused = err.message; }
  const stats = (reports) => new Map(reports.map((r) => [r.id, r]));
  const candidates = [
    { id: "L", type: "local-candidate", candidateType: "relay", protocol: "udp",
      relayProtocol: "tcp" },
    { id: "R", type: "remote-candidate", candidateType: "host", protocol: "udp" },
  ];
  const pair = { id: "P", type: "candidate-pair", localCandidateId: "L",
                 remoteCandidateId: "R" };
  return {
    here: resolveServer("", https),
    herePlain: resolveServer("  ", http),
    hostPort: resolveServer("example.org:9000", https),
    httpUrl: resolveServer("http://example.org:9000/", https),
    wsUrl: resolveServer("wss://example.org/custom", http),
    refused,
    delays: [backoffDelay(0, () => 0.5), backoffDelay(1, () => 0.5), backoffDelay(9, () => 0.5),
             backoffDelay(0, () => 0), backoffDelay(0, () => 1)],
    agents: [describeAgent("flutter-webrtc/android-plugin 0.0.1"),
             describeAgent("Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0"),
             describeAgent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605"
                           + " (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"),
             describeAgent("")],
    ids: [randomId(() => 0), randomId(() => 899999), randomId(() => 900000), randomId()],
    chromiumPair: selectedPair(stats([...candidates, pair,
      { id: "T", type: "transport", selectedCandidatePairId: "P" }])),
    firefoxPair: selectedPair(stats([...candidates, { ...pair, selected: true }])),
    noPair: selectedPair(stats([...candidates, pair])),
    pairTexts: [describePair({ local: "relay", remote: "host", protocol: "udp",
                               relayProtocol: "tcp" }),
                describePair({ local: "host", remote: "srflx", protocol: "udp",
                               relayProtocol: null })],
    mediaErrors: ["NotAllowedError", "NotFoundError", "NotReadableError"].map(
      (name) => describeMediaError({ name })),
  };
}"""


def test_page_helpers(new_page: NewPage) -> None:
    """The page's pure helpers, run as the browser runs them (no Node.js needed)."""
    got = new_page().page.evaluate(HELPER_CASES)
    assert got["here"] == {"wsUrl": "wss://h:8086/ws", "httpBase": "https://h:8086"}
    assert got["herePlain"] == {"wsUrl": "ws://h:8086/ws", "httpBase": "http://h:8086"}
    assert got["hostPort"] == {
        "wsUrl": "wss://example.org:9000/ws",
        "httpBase": "https://example.org:9000",
    }
    assert got["httpUrl"] == {
        "wsUrl": "ws://example.org:9000/ws",
        "httpBase": "http://example.org:9000",
    }
    assert got["wsUrl"] == {"wsUrl": "wss://example.org/custom", "httpBase": "https://example.org"}
    assert got["refused"] == "unsupported scheme ftp:"
    assert got["delays"] == [500, 1000, 10000, 375, 625]
    assert got["agents"] == [
        "Flutter · android",
        "Firefox · Windows",
        "Safari · iOS",
        "unknown device",
    ]
    assert got["ids"][:3] == ["100000", "999999", "100000"]
    assert re.fullmatch(r"[1-9]\d{5}", got["ids"][3])
    expected_pair = {"local": "relay", "remote": "host", "protocol": "udp", "relayProtocol": "tcp"}
    assert got["chromiumPair"] == expected_pair
    assert got["firefoxPair"] == expected_pair
    assert got["noPair"] is None
    assert got["pairTexts"] == [
        "relay ↔ host · udp, TURN over tcp — via TURN",
        "host ↔ srflx · udp",
    ]
    assert "denied" in got["mediaErrors"][0] and "No camera" in got["mediaErrors"][1]
    assert "in use" in got["mediaErrors"][2]


def test_flutter_style_video_call_without_data_channel(
    new_page: NewPage, aiortc_peer: Callable[[str, str], AiortcPeer]
) -> None:
    """The Flutter demo's video calls carry no data channel: media flows, the page says no chat."""
    peer = aiortc_peer("535353", "flutter-like")
    a = new_page()
    a.wait_peer(peer.id)
    peer.call(a.id, "video", channel=False)
    a.accept()
    a.wait_state("connected")
    a.wait_video_playing()
    chat = a.page.locator("#chat-input")
    assert chat.is_disabled() and "no data channel" in str(chat.get_attribute("placeholder"))
    a.hangup()
    peer.wait(lambda: peer.session_id in peer.byes, "the bye")


@pytest.fixture(scope="module")
def firefox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Firefox]:
    browser = Firefox(tmp_path_factory.mktemp("firefox-profile"))
    yield browser
    browser.close()


def test_firefox_and_chromium_call_each_other(
    firefox: Firefox, new_page: NewPage, web_server: ServerProcess, shots: Path
) -> None:
    """The page in Firefox ESR (driven over Marionette) calls Chromium, then the reverse."""
    ff = firefox
    ff.navigate(web_server.base + "/")
    ff_id = ff.wait(
        "document.getElementById('conn').dataset.state === 'open'"
        " && document.getElementById('self-id').textContent",
        "registration",
    )
    b = new_page()
    b.wait_peer(ff_id)
    assert "Firefox" in b.peer(ff_id).inner_text()
    peer_button = f"document.querySelector('#peers li[data-peer-id=\"{b.id}\"] .call-%s')"
    ff.wait(peer_button % "video", "Chromium in Firefox's list")

    # Firefox calls with relay only; Chromium answers.
    ff.run("const box = document.getElementById('relay-only'); if (!box.checked) box.click();")
    ff.run(f"{peer_button % 'video'}.click();")
    b.accept()
    b.wait_state("connected")
    ff.wait("document.getElementById('call-status').dataset.state === 'connected'", "connected")
    # Firefox reports the selected pair with its own getStats() shape.
    local = ff.wait("document.getElementById('pair').dataset.local", "the selected pair")
    assert local == "relay"
    b.wait_video_playing()  # Firefox's fake camera, seen in Chromium
    ff.wait(
        "(v => v.videoWidth > 0 && v.currentTime > 0.5)(document.getElementById('remote-video'))",
        "Chromium's video playing in Firefox",
    )
    ff.run(
        "document.getElementById('chat-input').value = arguments[0];"
        " document.getElementById('chat-send').click();",
        "from Firefox",
    )
    b.wait_chat("from Firefox")
    b.chat("from Chromium")
    ff.wait(
        "[...document.querySelectorAll('#chat-log li.theirs .text')]"
        ".some(e => e.textContent === 'from Chromium')",
        "Chromium's chat line in Firefox",
    )
    ff.screenshot(shots / "firefox-call.png")
    ff.run("document.getElementById('hangup').click();")
    b.wait_state("idle")
    ff.wait("document.getElementById('call-status').dataset.state === 'idle'", "idle")

    # Chromium calls Firefox for a data-only call; Firefox accepts from its dialog.
    b.call(ff_id, "data")
    ff.wait("document.getElementById('incoming').open", "the incoming call dialog")
    ff.run("document.getElementById('accept').click();")
    b.wait_state("connected")
    b.chat("data to Firefox")
    ff.wait(
        "[...document.querySelectorAll('#chat-log li.theirs .text')]"
        ".some(e => e.textContent === 'data to Firefox')",
        "the data call's chat line in Firefox",
    )
    b.hangup()
    ff.wait("document.getElementById('call-status').dataset.state === 'idle'", "idle")
