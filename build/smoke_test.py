"""Smoke test of a release binary, as the release workflow runs it on each OS.

``python build/smoke_test.py bin/flaskrtc-<os>-<arch>[.exe]``: checks ``--version``, then
copies the binary alone into an empty folder, checks that ``config`` prints the built-in
config template there, starts it (HTTPS with the certificate it generates, TURN on free
ports, loopback only), fetches ``/api/turn`` and the built-in web demo, and stops it. Exits
non-zero with a message on the first failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from version import version  # noqa: E402  (build/version.py)

START_TIMEOUT = 60.0  # seconds; a one-file binary unpacks itself first


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str, context: ssl.SSLContext | None) -> bytes:
    """The body of a GET that must answer 200."""
    with urllib.request.urlopen(url, context=context, timeout=10) as reply:
        if reply.status != 200:
            raise AssertionError(f"GET {url}: HTTP {reply.status}")
        return bytes(reply.read())


def smoke(binary: Path) -> None:
    """Raise AssertionError unless ``binary`` passes the smoke test."""
    shown = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=START_TIMEOUT
    )
    expected = f"flaskrtc {version()}"
    if shown.returncode != 0 or shown.stdout.strip() != expected:
        raise AssertionError(f"--version: {shown.returncode} {shown.stdout!r}, want {expected!r}")
    print(f"ok: --version says {expected}")

    # ignore_cleanup_errors: on Windows a just-killed process may hold its files a moment.
    with tempfile.TemporaryDirectory(prefix="flaskrtc-smoke-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        alone = work / binary.name
        shutil.copy2(binary, alone)
        check_config_template(alone, work)
        port = free_port()
        env = {
            **os.environ,
            "FLASKRTC_TURN_BIND": "127.0.0.1",
            "FLASKRTC_TURN_TLS_PORT": str(free_port()),
        }
        cmd = [str(alone), "--bind", "127.0.0.1", "--port", str(port), "--turn-port", "0"]
        log = (work / "server.log").open("w")
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            check_running(work, port, proc)
        finally:
            stop(proc)
            log.close()
            print((work / "server.log").read_text(errors="replace"))
        if os.name == "posix" and proc.returncode != 0:
            raise AssertionError(f"exit status {proc.returncode} after SIGTERM, want 0")


def check_config_template(binary: Path, work: Path) -> None:
    """``BINARY config`` in ``work`` prints the configs/config.ini built into it."""
    shown = subprocess.run(
        [str(binary), "config"], cwd=work, capture_output=True, timeout=START_TIMEOUT
    )
    if shown.returncode != 0 or shown.stdout != (ROOT / "configs" / "config.ini").read_bytes():
        raise AssertionError(f"config: status {shown.returncode}, not configs/config.ini")
    print("ok: config prints the built-in configs/config.ini")


def check_running(work: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Poll until /api/turn answers, then check it and the built-in web demo."""
    url = f"https://127.0.0.1:{port}"
    cert = work / "configs" / "certs" / "cert.pem"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer on {url} within {START_TIMEOUT:.0f} s")
        try:
            # The certificate the binary generated on this start is the one to trust.
            context = ssl.create_default_context(cafile=str(cert))
            body = fetch(f"{url}/api/turn?service=turn&username=smoke", context)
            break
        except (OSError, ssl.SSLError):  # not listening yet, or cert not written yet
            time.sleep(0.2)
    creds = json.loads(body)
    if not creds.get("password") or not str(creds.get("uris", [""])[0]).startswith("turn:"):
        raise AssertionError(f"/api/turn: {creds}")
    print(f"ok: /api/turn answered {creds['uris']}")
    page = fetch(f"{url}/", context)
    if page != (ROOT / "web" / "index.html").read_bytes():
        raise AssertionError("/ is not the web demo built into the binary")
    print("ok: / serves the built-in web demo")
    for name in ("configs/certs/cert.pem", "configs/certs/key.pem", "configs/turn_secret"):
        if not (work / name).is_file():
            raise AssertionError(f"{name} was not generated beside the binary")
    print("ok: certificate and TURN secret generated in ./configs")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (on Windows Python maps it to TerminateProcess), then wait; kill if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the server did not stop within 20 s of SIGTERM") from None


def main(argv: list[str]) -> int:
    """Command line: ``smoke_test.py BINARY``."""
    if len(argv) != 1:
        print("usage: smoke_test.py bin/flaskrtc-<os>-<arch>[.exe]", file=sys.stderr)
        return 2
    try:
        smoke(Path(argv[0]).resolve())
    except AssertionError as err:
        print(f"smoke test FAILED: {err}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
