"""``python -m flaskrtc``: flags, version, help and one-line configuration errors.

None of these start the server: each case exits before ``flaskrtc.server.run``.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flaskrtc import __version__
from flaskrtc.cli import build_parser, main
from flaskrtc.log import setup_logging

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Drop inherited FLASKRTC_* variables so the developer's shell cannot change results.
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLASKRTC_")}
    return subprocess.run(
        [sys.executable, "-m", "flaskrtc", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("config error: ")
    for word in words:
        assert word in lines[0]
    assert result.stdout == ""


def test_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"flaskrtc {__version__}"


def test_help(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    for flag in ("--config", "--bind", "--port", "--public-ip", "--turn-port", "--no-tls"):
        assert flag in result.stdout
    assert "--log-level" in result.stdout and "--version" in result.stdout


def test_bad_port_is_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--port", "abc")
    assert_one_line_error(result, "general.port", "'abc'")
    assert result.stderr.strip() == (
        "config error: general.port = 'abc': expected an integer from 0 to 65535"
    )


def test_bad_turn_port(tmp_path: Path) -> None:
    assert_one_line_error(run_cli(tmp_path, "--turn-port", "70000"), "turn.port", "'70000'")


def test_bad_env_value(tmp_path: Path) -> None:
    result = run_cli(tmp_path, env={"FLASKRTC_TURN_TTL": "5"})
    assert_one_line_error(result, "turn.ttl", "'5'", "FLASKRTC_TURN_TTL")


def test_flag_beats_bad_config_file(tmp_path: Path) -> None:
    # The file says port 1, the flag says "x": the flag's value is the one judged.
    (tmp_path / "c.ini").write_text("[general]\nport = 1\n")
    assert_one_line_error(run_cli(tmp_path, "--config", "c.ini", "--port", "x"), "'x'")


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--config", "missing.ini")
    assert_one_line_error(result, "missing.ini")


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    (tmp_path / "c.ini").write_text("[turn]\nrelam = x\n")
    assert_one_line_error(run_cli(tmp_path, "--config", "c.ini"), "turn.relam")


def test_unknown_flag_is_usage_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--prot", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--prot" in result.stderr


# --- in-process: how flags become overrides (server.run replaced, nothing listens) ----------


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[object]]:
    """Stand in for flaskrtc.server; collect the Config ``run`` would have been given."""
    calls: list[object] = []

    def fake_run(config: object, role: object = None, reload_config: Any = None) -> int:
        assert role is None  # not a worker of a parent
        # A reload reads the same sources: unchanged, they give the same config.
        assert reload_config is not None and reload_config() == config
        calls.append(config)
        return 7

    # A stand-in module: main() imports run from it, and gevent is never loaded.
    fake = types.ModuleType("flaskrtc.server")
    fake.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flaskrtc.server", fake)
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("FLASKRTC_"):
            monkeypatch.delenv(name)
    # main() configures logging; give the other tests their root logger back.
    root, noisy = logging.getLogger(), logging.getLogger("geventwebsocket.handler")
    handlers, level, noisy_level = root.handlers[:], root.level, noisy.level
    hangup = signal.getsignal(signal.SIGHUP)  # main() ignores it until the server serves
    yield calls
    signal.signal(signal.SIGHUP, hangup)
    root.handlers[:] = handlers
    root.setLevel(level)
    noisy.setLevel(noisy_level)


def test_flags_become_overrides(captured: list[object], tmp_path: Path) -> None:
    from flaskrtc.config import Config

    argv = [
        "--bind=127.0.0.1",
        "--port=0",
        "--public-ip=198.51.100.1",
        "--turn-port=3478",
        "--no-tls",
        "--log-level=warning",
    ]
    assert main(argv) == 7
    (config,) = captured
    assert isinstance(config, Config)
    assert config.general.bind == "127.0.0.1"
    assert config.general.port == 0
    assert config.turn.public_ip == "198.51.100.1"
    assert config.turn.port == 3478
    assert config.general.tls is False
    assert config.log_level == "WARNING"
    # The secret was generated beside the (absent) default config and handed on.
    assert config.turn.secret
    assert (tmp_path / "configs" / "turn_secret").read_text().strip() == config.turn.secret


def test_no_flags_keep_config_values(captured: list[object], tmp_path: Path) -> None:
    from flaskrtc.config import Config

    (tmp_path / "c.ini").write_text("[general]\ntls = true\nport = 1234\n[turn]\nsecret = s\n")
    assert main(["--config", "c.ini"]) == 7
    (config,) = captured
    assert isinstance(config, Config)
    assert config.general.tls is True and config.general.port == 1234
    assert config.turn.secret == "s"
    assert not (tmp_path / "turn_secret").exists()


def test_main_returns_status_for_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flaskrtc {__version__}"


def test_port_flags_are_strings() -> None:
    # Validation belongs to load_config, so argparse must not convert or reject them.
    args = build_parser().parse_args(["--port", "abc", "--turn-port", "x"])
    assert (args.port, args.turn_port) == ("abc", "x")


# --- logging ---------------------------------------------------------------------------------


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (setup_logging changes it)."""
    root = logging.getLogger()
    noisy = logging.getLogger("geventwebsocket.handler")
    saved = root.handlers[:], root.level, noisy.level
    root.handlers[:] = [h for h in root.handlers if type(h).__name__ != "_ConsoleHandler"]
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    noisy.setLevel(saved[2])


def test_log_format(clean_root: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    logging.getLogger("flaskrtc.signal").info("peer %s registered", "123456")
    logging.getLogger("flaskrtc.turn").debug("hidden at INFO")
    logging.getLogger("flaskrtc.http").warning("slow")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO  signal  peer 123456 registered", lines[0]
    )
    assert re.fullmatch(r"\S+ \S+ WARNING http    slow", lines[1])


def test_setup_logging_is_idempotent(
    clean_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("INFO")
    count = len(clean_root.handlers)
    setup_logging("DEBUG")
    assert len(clean_root.handlers) == count
    logging.getLogger("flaskrtc.server").debug("once")
    assert capsys.readouterr().err.count("once") == 1


def test_noisy_library_quieted(
    clean_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("DEBUG")
    noisy = logging.getLogger("geventwebsocket.handler")
    noisy.info("every request")
    noisy.warning("a real problem")
    err = capsys.readouterr().err
    assert "every request" not in err
    assert "geventwebsocket.handler  a real problem" in err


def test_bad_log_level_rejected(clean_root: logging.Logger) -> None:
    with pytest.raises(ValueError):
        setup_logging("LOUD")


# -- flaskrtc token ----------------------------------------------------------------------


def test_token_prints_one_for_the_configured_secret(tmp_path: Path) -> None:
    import time

    from flaskrtc.auth import verify_token

    secret = "a-secret-for-the-cli-test"
    (tmp_path / "c.ini").write_text(f"[auth]\nsecret = {secret}\n")
    before = int(time.time())
    result = run_cli(tmp_path, "token", "123456", "--ttl", "600", "--config", "c.ini")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and result.stderr == ""
    expiry = verify_token(secret, "123456", token, time.time())
    assert before + 600 <= expiry <= int(time.time()) + 600
    # The same secret from the environment; the default ttl is an hour.
    result = run_cli(tmp_path, "token", "abc", env={"FLASKRTC_AUTH_SECRET": secret})
    assert result.returncode == 0, result.stderr
    expiry = verify_token(secret, "abc", result.stdout.strip(), time.time())
    assert before + 3600 <= expiry <= int(time.time()) + 3600


def test_token_without_a_secret_says_so(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "token", "123456")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "[auth] secret is not set" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["token"], ["token", "x", "--ttl", "0"], ["token", "x", "--ttl", "1h"], ["token", "x", "-q"]],
)
def test_token_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(tmp_path, *args, env={"FLASKRTC_AUTH_SECRET": "0123456789abcdef"})
    assert result.returncode == 2
    assert result.stdout == "" and "usage: flaskrtc token" in result.stderr


def test_token_bad_id_and_short_secret_are_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "token", "x" * 129, env={"FLASKRTC_AUTH_SECRET": "0123456789abcdef"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["flaskrtc token: peer id longer than 128 characters"]
    result = run_cli(tmp_path, "token", "x", env={"FLASKRTC_AUTH_SECRET": "short"})
    assert_one_line_error(result, "auth.secret", "at least 16 characters")
    assert "short" not in result.stderr  # a secret is never printed back


def test_help_names_the_token_command(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "token", "--help")
    assert result.returncode == 0 and "--ttl" in result.stdout
    wrapped = " ".join(run_cli(tmp_path, "--help").stdout.split())
    assert "'flaskrtc token ID --ttl 3600' prints an access token" in wrapped
