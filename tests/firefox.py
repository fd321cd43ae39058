"""Driving Debian's Firefox ESR through Marionette, its built-in remote protocol.

Playwright needs its own patched Firefox and geckodriver is not packaged by Debian, so the
tests speak Marionette directly: a TCP stream of ``<length>:<JSON>`` packets, each command
``[0, id, name, params]`` answered by ``[1, id, error, result]``. The commands used are the
WebDriver ones (``WebDriver:Navigate``, ``WebDriver:ExecuteScript``, …).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import require_tool

# Prefs for a test profile: fake camera and microphone with no prompt, no mDNS hiding of
# host candidates, loopback allowed for ICE (the test's TURN server is on 127.0.0.1, and
# Firefox otherwise gives up on it with error 701), and nothing that reaches for the network
# on its own.
PREFS: dict[str, Any] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.loopback": True,
    # ICE gathers on loopback only: no candidate, check or mDNS query on any other interface.
    "media.peerconnection.ice.force_interface": "lo",
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "app.update.disabledForTesting": True,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False,
    "browser.newtabpage.enabled": False,
    # Background fetches a fresh profile would start: remote settings, Normandy, the search
    # and region services, DNS prefetch and DNS over HTTPS, plugin and blocklist updates.
    "services.settings.server": "",
    "app.normandy.enabled": False,
    "browser.search.update": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.trr.mode": 5,
    "media.gmp-manager.url": "",
    "extensions.blocklist.enabled": False,
    "toolkit.telemetry.enabled": False,
    "browser.ping-centre.telemetry": False,
}


def firefox_path() -> str:
    """Debian's firefox-esr (skip without it; fail in CI)."""
    return require_tool("firefox-esr", "firefox", package="firefox-esr")


class MarionetteError(AssertionError):
    """An error answer from Firefox."""


class Firefox:
    """One headless Firefox with a fresh profile, and one WebDriver session in it."""

    def __init__(self, profile: Path, timeout: float = 30) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        prefs = {**PREFS, "marionette.port": port}
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
        )
        self.proc = subprocess.Popen(
            [
                firefox_path(),
                "--headless",
                "--marionette",
                "--no-remote",
                "--profile",
                str(profile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOZ_HEADLESS": "1"},
        )
        self.sock = self._connect(port, timeout)
        self.buffer = b""
        self.next_id = 0
        self._read()  # the server's hello
        self.command("WebDriver:NewSession", {"acceptInsecureCerts": True})

    def _connect(self, port: int, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=timeout)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # Firefox is still starting; nothing to poll but the port

    def _read(self) -> Any:
        while True:
            head, sep, rest = self.buffer.partition(b":")
            if sep:
                size = int(head)
                if len(rest) >= size:
                    self.buffer = rest[size:]
                    return json.loads(rest[:size])
            chunk = self.sock.recv(65536)
            if not chunk:
                raise MarionetteError("Firefox closed the Marionette connection")
            self.buffer += chunk

    def command(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """Send one command and return its result; raise on an error answer."""
        self.next_id += 1
        body = json.dumps([0, self.next_id, name, params or {}]).encode()
        self.sock.sendall(str(len(body)).encode() + b":" + body)
        while True:
            kind, msg_id, error, result = self._read()
            if kind == 1 and msg_id == self.next_id:
                if error:
                    raise MarionetteError(f"{name}: {error}")
                return result

    def navigate(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``); return its value."""
        return self.command("WebDriver:ExecuteScript", {"script": script, "args": list(args)})[
            "value"
        ]

    def wait(self, expression: str, what: str, timeout: float = 20) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(f"return ({expression});")
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"Firefox: timed out waiting for {what} ({expression})")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.command("WebDriver:TakeScreenshot", {"full": False})["value"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.command("WebDriver:DeleteSession")
            self.command("Marionette:Quit")
        except (OSError, MarionetteError):
            pass
        self.sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
