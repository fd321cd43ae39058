"""Driving the web demo in Debian's headless Chromium with Playwright (no browser download).

The flags keep Chromium off the network (this machine has none beyond loopback) and give it a
fake camera and microphone that need no permission prompt.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import require_tool

CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Host candidates as plain addresses, not mDNS names: no multicast query or announcement
    # leaves the machine (peers on this host reach each other through the kernel).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


# Pages in tests call relay only unless a test says otherwise: Chromium has no switch that
# keeps ICE on loopback, and with policy "all" its connectivity checks would go to this
# machine's other addresses. Relays are on 127.0.0.1; a user's later choice is kept.
RELAY_ONLY_BY_DEFAULT = """
try {
  if (localStorage.getItem("flaskrtc.relayOnly") === null) {
    localStorage.setItem("flaskrtc.relayOnly", "1");
  }
} catch (e) {}
"""


def chromium_path() -> str:
    """Debian's chromium (skip without it; fail in CI)."""
    return require_tool("chromium", "chromium-browser", package="chromium")


class WebPage:
    """One tab of the demo, with the steps a user takes and what a user sees."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.id = ""

    def record_sent_frames(self) -> None:
        """From the next load on, keep every frame the page sends in ``window.sentFrames``
        (the socket still delivers them); read them with :meth:`sent_frames`."""
        self.page.add_init_script(
            "window.sentFrames = []; const send = WebSocket.prototype.send;"
            " WebSocket.prototype.send = function (data) {"
            " window.sentFrames.push(JSON.parse(data)); return send.call(this, data); };"
        )

    def sent_frames(self) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = self.page.evaluate("window.sentFrames")
        return frames

    def open(self) -> WebPage:
        """Load the page and wait until it is registered; remember its id."""
        self.page.goto(self.base + "/")
        self.page.locator('#conn[data-state="open"]').wait_for()
        self.id = self.page.locator("#self-id").inner_text()
        self.wait_peer(self.id)
        return self

    def peer(self, peer_id: str) -> Any:
        return self.page.locator(f'#peers li[data-peer-id="{peer_id}"]')

    def wait_peer(self, peer_id: str, present: bool = True, timeout: float = 10) -> None:
        self.peer(peer_id).wait_for(
            state="attached" if present else "detached", timeout=timeout * 1000
        )

    def peer_ids(self) -> list[str]:
        return [
            str(x)
            for x in self.page.locator("#peers li").evaluate_all(
                "l => l.map(e => e.dataset.peerId)"
            )
        ]

    def call(self, peer_id: str, media: str = "video", relay_only: bool | None = None) -> None:
        """Call ``peer_id``; ``relay_only`` None keeps the page's setting (relay only in the
        browser tests, see RELAY_ONLY_BY_DEFAULT; policy "all" in the NAT lab)."""
        if relay_only is not None:
            self.page.locator("#relay-only").set_checked(relay_only)
        self.peer(peer_id).locator(f".call-{media}").click()

    def wait_incoming(self) -> str:
        self.page.locator("#incoming[open]").wait_for()
        return str(self.page.locator("#incoming-text").inner_text())

    def accept(self) -> None:
        self.wait_incoming()
        self.page.locator("#accept").click()

    def reject(self) -> None:
        self.wait_incoming()
        self.page.locator("#reject").click()

    def wait_state(self, state: str, timeout: float = 20) -> None:
        self.page.locator(f'#call-status[data-state="{state}"]').wait_for(timeout=timeout * 1000)

    def call_text(self) -> str:
        return str(self.page.locator("#call-text").inner_text())

    def pair(self, timeout: float = 10) -> tuple[str, str]:
        """The selected candidate pair's (local, remote) types, once the page shows them."""
        pair = self.page.locator("#pair")
        self.page.locator('#pair:not([data-local=""])').wait_for(timeout=timeout * 1000)
        return str(pair.get_attribute("data-local")), str(pair.get_attribute("data-remote"))

    def wait_video_playing(self, timeout: float = 15) -> tuple[int, int]:
        """Wait until the remote video has a size and its clock has moved on; return the size."""
        self.page.wait_for_function(
            """() => { const v = document.getElementById('remote-video');
                       return v.videoWidth > 0 && v.currentTime > 0.5 && !v.paused; }""",
            timeout=timeout * 1000,
        )
        before = self.page.evaluate("() => document.getElementById('remote-video').currentTime")
        self.page.wait_for_function(
            f"() => document.getElementById('remote-video').currentTime > {before}",
            timeout=timeout * 1000,
        )
        size = self.page.evaluate(
            "() => { const v = document.getElementById('remote-video');"
            " return [v.videoWidth, v.videoHeight]; }"
        )
        return int(size[0]), int(size[1])

    def chat(self, text: str) -> None:
        self.page.locator("#chat-input:enabled").wait_for()
        self.page.locator("#chat-input").fill(text)
        self.page.locator("#chat-send").click()

    def wait_chat(self, text: str, side: str = "theirs", timeout: float = 10) -> None:
        line = self.page.locator(f"#chat-log li.{side} .text", has_text=text)
        line.first.wait_for(timeout=timeout * 1000)

    def wait_message(self, text: str, timeout: float = 10) -> None:
        """Wait for a notice to the user containing ``text``."""
        self.page.locator("#messages .message", has_text=text).first.wait_for(
            timeout=timeout * 1000
        )

    def hangup(self) -> None:
        self.page.locator("#hangup").click()

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


def spki_pin(cert: Path) -> str:
    """Chromium's --ignore-certificate-errors-spki-list value for ``cert`` (base64 SHA-256 of
    its SubjectPublicKeyInfo). WebRTC's TURN over TLS does not take Playwright's
    ignore_https_errors: a browser launched with this pin trusts exactly that certificate."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


CHECK_RESULT = """() => {
  const verdict = document.getElementById('verdict');
  return {
    verdict: { ...verdict.dataset },
    title: document.getElementById('verdict-title').textContent,
    text: document.getElementById('verdict-text').textContent,
    notes: [...document.querySelectorAll('#verdict-notes li')].map(
      (li) => ({ code: li.dataset.code, text: li.textContent })),
    rows: [...document.querySelectorAll('#rows li')].map((li) => ({
      ...li.dataset,
      gather: li.querySelector('.step-gather').textContent,
      relayStep: li.querySelector('.step-relay').textContent,
    })),
  };
}"""


def run_check(page: Any, url: str, timeout: float = 40) -> dict[str, Any]:
    """Open the connection check at ``url``, wait until it has a verdict, return what it shows:
    {verdict: #verdict's data-*, title, text, notes, rows: each row's data-* and step texts}."""
    page.goto(url)
    page.locator("#verdict[data-verdict]").wait_for(timeout=timeout * 1000)
    result: dict[str, Any] = page.evaluate(CHECK_RESULT)
    return result
