"""Shared fixtures: a real flaskrtc process on 127.0.0.1 port 0, and WebSocket clients."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

REPO = Path(__file__).resolve().parent.parent
LISTEN_RE = re.compile(r"listening on (https?)://([^ ]+):(\d+)")
TURN_RE = re.compile(r"turn: listening on udp and tcp [^ ]+:(\d+)(?:, tls [^ ]+:(\d+))?")


def require_tool(*names: str, package: str) -> str:
    """The first of ``names`` on PATH; else skip, or fail under FLASKRTC_REQUIRE_INTEROP=1
    (set by .ci/run), where every interop and browser test must run."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    reason = f"{names[0]} not installed (Debian package '{package}')"
    if os.environ.get("FLASKRTC_REQUIRE_INTEROP"):
        pytest.fail(reason + "; FLASKRTC_REQUIRE_INTEROP is set")
    pytest.skip(reason)


def require_module(name: str, package: str) -> Any:
    """Import ``name``; else skip, or fail under FLASKRTC_REQUIRE_INTEROP=1 like require_tool."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"{name} cannot be imported ({exc}); pip package '{package}'"
        if os.environ.get("FLASKRTC_REQUIRE_INTEROP"):
            pytest.fail(reason + "; FLASKRTC_REQUIRE_INTEROP is set")
        pytest.skip(reason)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now (for settings where 0 means "off", not "any")."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m flaskrtc`` in a temporary folder, with its log captured."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = True,
        extra: dict[str, str] | None = None,
        wrap: list[str] | None = None,
        args: list[str] | None = None,
    ):
        """``extra`` overrides config keys (``"turn.port": "0"``); ``wrap`` is put before the
        command (the NAT lab runs the server with ``ip netns exec NS``); ``args`` after it."""
        self.workdir = workdir
        self.tls = tls
        settings = {
            "general": {
                "bind": "127.0.0.1",
                "port": "0",
                "tls": "true" if tls else "false",
                "cert": str(workdir / "certs" / "cert.pem"),
                "key": str(workdir / "certs" / "key.pem"),
                "html_root": str(REPO / "web"),
            },
            # Port 0: every test server gets free ports; TURN over TLS off unless asked for.
            "turn": {
                "secret": "test-secret",
                "public_ip": "127.0.0.1",
                "bind": "127.0.0.1",
                "port": "0",
                "tls_port": "0",
            },
        }
        for key, value in (extra or {}).items():
            section, name = key.split(".")
            settings.setdefault(section, {})[name] = value
        self.config = workdir / "config.ini"
        self.config.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                for section, values in settings.items()
            )
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.cert = workdir / "certs" / "cert.pem"
        argv = [*(wrap or []), sys.executable, "-m", "flaskrtc", "--config", str(self.config)]
        argv += args or []
        self._launch(argv, env)

    def _launch(self, argv: list[str], env: dict[str, str], timeout: float = 20) -> None:
        """Start ``argv`` in ``self.workdir`` and wait for its listening lines."""
        self.proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        match = self.wait_for_log(LISTEN_RE, timeout=timeout)
        self.scheme = match.group(1)
        self.port = int(match.group(3))
        self.base = f"{self.scheme}://127.0.0.1:{self.port}"
        self.ws_url = f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ws"
        turn = self.wait_for_log(TURN_RE)
        self.turn_port = int(turn.group(1))
        self.turn_tls_port = int(turn.group(2)) if turn.group(2) else 0

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_log(self, pattern: re.Pattern[str] | str, timeout: float = 10) -> re.Match[str]:
        """Block until a log line matches ``pattern`` (polled on each new line)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    raise AssertionError(
                        f"no log line matching {regex.pattern!r}; log:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.5))

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's generated certificate."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx

    def sslopt(self) -> dict[str, Any]:
        return {"ca_certs": str(self.cert)} if self.tls else {}

    def connect(self, **kwargs: Any) -> Client:
        ws = websocket.create_connection(self.ws_url, timeout=10, sslopt=self.sslopt(), **kwargs)
        return Client(ws)

    def raw_socket(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if self.tls:
            return self.ssl_context().wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


class StandaloneProcess(ServerProcess):
    """A ``flaskrtc`` command a user runs (the release binary, an installed wheel's script),
    started in ``workdir`` with flags and environment only: no config file, no PYTHONPATH, so
    it uses its built-in defaults and generates its certificate and secret in ./configs."""

    def __init__(self, workdir: Path, command: list[str], *, timeout: float = 20) -> None:
        """``command`` is the program to run; ``timeout`` how long its start may take."""
        self.workdir = workdir
        self.tls = True
        # Where it generates its certificate: ./configs/certs, as the source tree does.
        self.cert = workdir / "configs" / "certs" / "cert.pem"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASKRTC_", "PYTHON"))}
        env.update(
            FLASKRTC_TURN_BIND="127.0.0.1",
            FLASKRTC_TURN_TLS_PORT=str(free_port()),
            # The tests' UDP peers are on loopback, which the default policy refuses.
            FLASKRTC_TURN_ALLOWED_PEER_IP="127.0.0.1",
            FLASKRTC_TURN_MIN_PORT="40000",
            FLASKRTC_TURN_MAX_PORT="60000",
        )
        argv = [*command, "--bind", "127.0.0.1", "--port", "0", "--turn-port", "0"]
        argv += ["--public-ip", "127.0.0.1"]
        self.env = env  # for running its subcommands (doctor, config) the same way
        self._launch(argv, env, timeout=timeout)

    def get(self, path: str) -> bytes:
        """The body of an HTTPS GET of ``path`` that must answer 200."""
        with urllib.request.urlopen(
            self.base + path, context=self.ssl_context(), timeout=10
        ) as reply:
            assert reply.status == 200
            return bytes(reply.read())


class Client:
    """A websocket-client connection that reads JSON messages, skipping ``{}`` keepalives."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.keepalives = 0

    def send(self, type_: str, data: Any = None) -> None:
        self.ws.send(json.dumps({"type": type_, "data": data}))

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        """The next message that is not a bare ``{}``."""
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(0.01, deadline - time.monotonic()))
            text = self.ws.recv()
            msg = json.loads(text)
            if msg == {}:
                self.keepalives += 1
                continue
            return msg  # type: ignore[no-any-return]

    def expect(self, type_: str, timeout: float = 10) -> dict[str, Any]:
        """Read until a message of ``type_``; fail on an unexpected ``error``."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg.get("type") == type_:
                return msg
            if msg.get("type") == "error" and type_ != "error":
                raise AssertionError(f"unexpected error: {msg}")

    def expect_peers(self, ids: list[str], timeout: float = 10) -> list[dict[str, Any]]:
        """Read peers lists until one holds exactly ``ids`` in that order."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.expect("peers", max(0.01, deadline - time.monotonic()))
            if [p["id"] for p in msg["data"]] == ids:
                return msg["data"]  # type: ignore[no-any-return]

    def register(self, peer_id: str, name: str = "", user_agent: str = "test") -> None:
        self.send("new", {"id": peer_id, "name": name, "user_agent": user_agent})

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One TLS server for a test module (tests use distinct peer ids)."""
    proc = ServerProcess(tmp_path_factory.mktemp("srv"))
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A TLS server of the test's own, for tests that inspect the whole peer list."""
    proc = ServerProcess(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def udp_peer() -> Iterator[int]:
    """turnutils_peer: a UDP echo peer on 127.0.0.1."""
    yield from _echo_peer("127.0.0.1")


@pytest.fixture
def udp_peer6() -> Iterator[int]:
    """turnutils_peer: a UDP echo peer on ::1."""
    yield from _echo_peer("::1")


def _echo_peer(host: str) -> Iterator[int]:
    """coturn's turnutils_peer echoing UDP on ``host``; its port, while the fixture lives."""
    peer = require_tool("turnutils_peer", package="coturn")
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [peer, "-L", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield port
    proc.terminate()
    proc.wait(10)


class RedisProcess:
    """A throw-away ``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout: float = 10) -> None:
        """Start it (again, on the same port) and wait until it answers PING."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of the test's own (the Debian package; CI installs it)."""
    binary = require_tool("redis-server", package="redis-server")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    proc = RedisProcess(workdir, binary)
    try:
        yield proc
    finally:
        proc.stop()
