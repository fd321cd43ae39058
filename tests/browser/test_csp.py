"""The web demo under the server's Content-Security-Policy, and with an access token in its
URL, in Debian's headless Chromium.

Every page records ``securitypolicyviolation`` events (an init script, before the page's own
code) and Chromium's console reports of refused content: a call, the chat and the connection
check must raise none. A page opened as ``/?id=ID&token=TOKEN`` on a server with
``[auth] secret`` registers as ID and uses the token for /ws and /api/turn.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flaskrtc.auth import make_token
from tests.browser import WebPage, run_check
from tests.conftest import ServerProcess

SECRET = "browser-test-auth-secret-42"
LOOPBACK = {"turn.allowed_peer_ip": "127.0.0.0/8"}  # relay candidates are on 127.0.0.1
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


class WatchedPage(WebPage):
    """A demo page whose CSP violations are collected (events and console reports)."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        super().__init__(page, base, shots)
        self.console: list[str] = []
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        text = str(msg.text)
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.console.append(text)

    def violations(self) -> list[str]:
        """What the current document recorded, plus every console report so far."""
        events = self.page.evaluate("() => window.__csp || []")
        return [*map(str, events), *self.console]

    def open_url(self, path: str) -> WatchedPage:
        self.page.goto(self.base + path)
        self.page.locator('#conn[data-state="open"]').wait_for()
        self.id = self.page.locator("#self-id").inner_text()
        self.wait_peer(self.id)
        return self


NewPage = Callable[..., WatchedPage]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("csp"), extra=LOOPBACK)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLASKRTC_AUTH_SECRET", SECRET)
        srv = ServerProcess(tmp_path_factory.mktemp("authed"), extra=LOOPBACK)
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def new_page(browser: Any, tmp_path: Path) -> Iterator[NewPage]:
    contexts: list[Any] = []
    pages: list[WatchedPage] = []

    def make(server: ServerProcess) -> WatchedPage:
        context = browser.new_context(ignore_https_errors=True)
        context.set_default_timeout(15000)
        context.add_init_script(script=WATCH_CSP)
        contexts.append(context)
        page = WatchedPage(context.new_page(), server.base, tmp_path)
        pages.append(page)
        return page

    yield make
    for context in contexts:
        context.close()
    errors = [err for page in pages for err in page.errors]
    assert errors == [], f"uncaught errors in the page: {errors}"


def relay_call_with_chat(a: WebPage, b: WebPage) -> None:
    a.wait_peer(b.id)
    a.call(b.id, "video", relay_only=True)
    b.accept()
    for page in (a, b):
        page.wait_state("connected")
    assert a.pair()[0] == "relay"  # TURN credentials from /api/turn were used
    b.wait_video_playing()
    a.chat("csp hello")
    b.wait_chat("csp hello")
    a.hangup()
    b.wait_state("idle")


def test_demo_and_check_pages_raise_no_csp_violation(
    new_page: NewPage, plain: ServerProcess
) -> None:
    a, b = new_page(plain).open_url("/"), new_page(plain).open_url("/")
    relay_call_with_chat(a, b)
    for page in (a, b):
        assert page.violations() == [], page.violations()
    got = run_check(a.page, plain.base + "/check.html")
    assert got["verdict"]["verdict"] == "udp", got
    assert a.violations() == []
    assert a.page.evaluate("() => Array.isArray(window.__csp)")  # the watch ran there too


def test_the_watch_catches_inline_code_and_styles(new_page: NewPage, plain: ServerProcess) -> None:
    # Proof that the test above can fail: content the policy forbids is reported.
    page = new_page(plain).open_url("/")
    page.page.evaluate(
        """() => {
          const s = document.createElement("script");
          s.textContent = "window.__inline = 1";
          document.body.append(s);
          const d = document.createElement("div");
          d.setAttribute("style", "color: red");
          document.body.append(d);
        }"""
    )
    page.page.wait_for_function("() => window.__csp.length >= 2")
    seen = " ".join(page.violations())
    assert "script-src" in seen and "style-src" in seen, seen
    assert page.page.evaluate("() => window.__inline") is None  # and it did not run


def token_path(peer_id: str, ttl: int = 600) -> str:
    token = make_token(SECRET, peer_id, time.time(), ttl)
    return "/?" + urllib.parse.urlencode({"id": peer_id, "token": token})


def test_page_with_a_token_in_its_url_registers_that_id(
    new_page: NewPage, authed: ServerProcess
) -> None:
    a = new_page(authed).open_url(token_path("web-a"))
    b = new_page(authed).open_url(token_path("web-b"))
    assert (a.id, b.id) == ("web-a", "web-b")
    relay_call_with_chat(a, b)  # /api/turn accepted the token: the relay worked
    # The connection check gets the token too (its link carries it).
    href = str(a.page.locator("#check-link").get_attribute("href"))
    assert "id=web-a" in href and "token=" in href
    a.page.locator("#check-link").click()
    a.page.wait_for_url("**/check.html?*")
    a.page.locator("#verdict[data-verdict]").wait_for(timeout=40000)
    assert a.page.locator("#verdict").get_attribute("data-verdict") == "udp"
    assert not any("refused" in line for line in authed.lines), authed.lines
    assert a.violations() == [] and b.violations() == []


def test_page_with_a_bad_token_says_so_and_stops(new_page: NewPage, authed: ServerProcess) -> None:
    page = new_page(authed)
    page.page.goto(authed.base + "/?id=web-x&token=123.bad")
    page.page.locator('#conn[data-state="stopped"]').wait_for()
    page.wait_message("access token")
    assert page.page.locator("#self-id").inner_text() == "web-x"
    authed.wait_for_log(r"/ws refused: malformed token \(id 'web-x'\)")
    # No reconnect loop against a server that said no: the first retry would come in 0.5 s.
    time.sleep(2)
    assert sum("/ws refused" in line and "web-x" in line for line in authed.lines) == 1
