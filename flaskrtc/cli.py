"""The ``flaskrtc`` command: parse flags, load the configuration, run the server.

``flaskrtc [flags]`` runs the server. A first argument naming a subcommand (``flaskrtc doctor
[flags]``) runs that instead: :data:`COMMANDS` maps each name to a function taking the rest of
the arguments and returning the exit status, so ``token`` and ``config`` sit beside ``doctor``
without touching the server's flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flaskrtc import __version__
from flaskrtc.config import (
    DEFAULT_CONFIG_PATH,
    SECRET_FILE_NAME,
    Config,
    ConfigError,
    ensure_turn_secret,
    load_config,
)
from flaskrtc.log import setup_logging

log = logging.getLogger("flaskrtc.server")

# Flag destination -> load_config override key. Values stay strings: load_config validates
# them, so a bad flag gets the same one-line error as a bad file or environment value.
_OVERRIDES = {
    "bind": "general.bind",
    "port": "general.port",
    "public_ip": "turn.public_ip",
    "turn_port": "turn.port",
    "log_level": "log_level",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override the configuration; the server and doctor share them."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="INI config file (default: configs/config.ini if it exists, else built-in defaults)",
    )
    parser.add_argument(
        "--bind", metavar="IP", help="IP address to listen on (overrides [general] bind)"
    )
    parser.add_argument(
        "--port", metavar="INT", help="HTTP(S)/WebSocket port (overrides [general] port)"
    )
    parser.add_argument(
        "--public-ip",
        metavar="IP",
        help="public IP address for TURN URIs (overrides [turn] public_ip)",
    )
    parser.add_argument(
        "--turn-port", metavar="INT", help="TURN relay port (overrides [turn] port)"
    )
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="serve plain HTTP/WS, not HTTPS/WSS (sets [general] tls = false)",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (overrides [general] log_level)",
    )


_PRECEDENCE = (
    "Precedence: built-in defaults < config file < FLASKRTC_<SECTION>_<KEY> "
    "environment variables (e.g. FLASKRTC_GENERAL_PORT) < these flags."
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of the server."""
    parser = argparse.ArgumentParser(
        prog="flaskrtc",
        description="WebRTC signaling server with a built-in TURN relay "
        "(compatible with flutter-webrtc-server).",
        epilog=_PRECEDENCE + " Commands: 'flaskrtc doctor [flags]' checks the setup "
        "(flaskrtc doctor --help); 'flaskrtc token ID --ttl 3600' prints an access token "
        "when [auth] secret is set (flaskrtc token --help); 'flaskrtc config -o "
        "configs/config.ini' writes the commented config template (flaskrtc config --help); "
        "'flaskrtc reload --pid-file PATH' makes a running server read its config again "
        "(SIGHUP; flaskrtc reload --help).",
    )
    _add_config_flags(parser)
    parser.add_argument(
        "--pid-file",
        metavar="PATH",
        help="write the server's process id to PATH while it runs (for 'flaskrtc reload')",
    )
    parser.add_argument("--version", action="version", version=f"flaskrtc {__version__}")
    # Given by the parent of [general] workers to each worker; not for people.
    parser.add_argument("--worker", metavar="I/N", help=argparse.SUPPRESS)
    parser.add_argument("--worker-table", metavar="PATH", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-fds", metavar="JSON", default="{}", help=argparse.SUPPRESS)
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], help=argparse.SUPPRESS
    )
    return parser


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError("expected seconds greater than 0 and at most 60")
    return value


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL: {text!r}")
    return text.rstrip("/")


def build_doctor_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``flaskrtc doctor``."""
    parser = argparse.ArgumentParser(
        prog="flaskrtc doctor",
        description="Check a flaskrtc setup without changing it: the config, the certificate, "
        "the ports, the relay port range, the open-files limit, [turn] public_ip, and, "
        "against the running server, /api/turn, the clock and a TURN relay self-test over "
        "each transport. Prints one row per check (ok, warn, FAIL or skip) and the fix for "
        "each warning and failure.",
        epilog="Exit status: 0 when no check failed (warnings do not fail), 1 when one did. "
        "It reads the config exactly as the server does; " + _PRECEDENCE,
    )
    _add_config_flags(parser)
    parser.add_argument(
        "--url",
        metavar="URL",
        type=_url,
        help="base URL of the running server (default: from the config, e.g. "
        "https://127.0.0.1:8086; TLS certificates are not verified here, the certificate "
        "has its own check)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=3.0,
        help="time each network step may take (default: 3)",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides = {
        key: value for dest, key in _OVERRIDES.items() if (value := getattr(args, dest)) is not None
    }
    if args.no_tls:
        overrides["general.tls"] = "false"
    return overrides


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        # --help, --version and usage errors; report their status instead of raising.
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)


def _server_command(args: argparse.Namespace) -> str:
    """The command line that starts the server doctor checks, for its "start it" fix."""
    # The one-file binary is not called flaskrtc: name it as the user ran it.
    parts = [sys.argv[0] if getattr(sys, "frozen", False) else "flaskrtc"]
    for flag, dest in (
        ("--config", "config"),
        *((f"--{d.replace('_', '-')}", d) for d in _OVERRIDES),
    ):
        value = getattr(args, dest)
        if value is not None:
            parts += [flag, value]
    if args.no_tls:
        parts.append("--no-tls")
    return shlex.join(parts)


def doctor(argv: list[str]) -> int:
    """``flaskrtc doctor [flags]``: check the setup; 0 unless a check failed."""
    args = _parse(build_doctor_parser(), argv)
    if isinstance(args, int):
        return args
    from flaskrtc.doctor import run_doctor  # imported late: the server does not need it

    return run_doctor(args.config, os.environ, _overrides(args), url=args.url, timeout=args.timeout)


def _ttl(text: str) -> int:
    from flaskrtc.auth import MAX_TTL

    if not text.isdigit() or not 1 <= int(text) <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"expected whole seconds from 1 to {MAX_TTL}: {text!r}")
    return int(text)


def build_token_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``flaskrtc token``."""
    parser = argparse.ArgumentParser(
        prog="flaskrtc token",
        description="Print an access token for peer ID, signed with [auth] secret: with it, "
        "a client may use /ws?id=ID&token=TOKEN (and register as ID only) and "
        "/api/turn?...&id=ID&token=TOKEN. The web demo takes both in its URL: "
        "https://HOST:8086/?id=ID&token=TOKEN.",
        epilog="Exit status: 0 with the token on stdout; 2 on a config error or when "
        "[auth] secret is not set. It reads the config as the server does; " + _PRECEDENCE,
    )
    parser.add_argument("id", metavar="ID", help="the peer id the token is for")
    parser.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=_ttl,
        default=3600,
        help="how long the token is valid (default: 3600)",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="INI config file (default: configs/config.ini if it exists, else built-in defaults)",
    )
    return parser


def token(argv: list[str]) -> int:
    """``flaskrtc token ID [--ttl S]``: print a token for ID; 2 without ``[auth] secret``."""
    args = _parse(build_token_parser(), argv)
    if isinstance(args, int):
        return args
    from flaskrtc.auth import make_token

    try:
        config = load_config(args.config, os.environ, {})
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    if not config.auth.secret:
        print(
            "flaskrtc token: [auth] secret is not set (in the config or FLASKRTC_AUTH_SECRET): "
            "authentication is off and no token is needed",
            file=sys.stderr,
        )
        return 2
    try:
        print(make_token(config.auth.secret, args.id, time.time(), args.ttl))
    except ValueError as err:
        print(f"flaskrtc token: {err}", file=sys.stderr)
        return 2
    return 0


def build_config_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``flaskrtc config``."""
    parser = argparse.ArgumentParser(
        prog="flaskrtc config",
        description="Print the commented configuration template: every key with its default "
        "and what it does, the configs/config.ini of the source tree. Start a config from it: "
        "'flaskrtc config -o configs/config.ini', the file flaskrtc reads from the folder it "
        "is started in.",
        epilog="Exit status: 0 when written; 2 when FILE exists (it is never overwritten) or "
        "cannot be written, or when this installation lacks the template.",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the template to FILE, creating its folder, instead of to stdout "
        "(Windows PowerShell's '>' would write UTF-16)",
    )
    return parser


def config_command(argv: list[str]) -> int:
    """``flaskrtc config [-o FILE]``: write the commented config template."""
    args = _parse(build_config_parser(), argv)
    if isinstance(args, int):
        return args
    from flaskrtc.resources import config_template

    try:
        template = config_template()
    except FileNotFoundError as err:
        print(f"flaskrtc config: {err}", file=sys.stderr)
        return 2
    if args.output is None:
        # Bytes, not text: the copy is byte for byte the template, also where stdout would
        # translate newlines (Windows).
        sys.stdout.flush()
        sys.stdout.buffer.write(template)
        sys.stdout.buffer.flush()
        return 0
    path = Path(args.output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": an existing config may hold a secret or hand-made settings; never replace it.
        with path.open("xb") as out:
            out.write(template)
    except FileExistsError:
        print(f"flaskrtc config: {path} exists; not overwritten", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"flaskrtc config: cannot write {path}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def build_reload_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``flaskrtc reload``."""
    parser = argparse.ArgumentParser(
        prog="flaskrtc reload",
        description="Make a running flaskrtc read its config again, without dropping a call: "
        "it sends the server SIGHUP (as 'kill -HUP PID' or 'systemctl reload' would). The "
        "server's log says what was reloaded and which changed keys need a restart. "
        "Windows has no SIGHUP: there, set [general] reload_watch (seconds) and the server "
        "reloads by itself when its config file, certificate or key changes.",
        epilog="Exit status: 0 when the signal was sent (the server's log has the outcome); "
        "2 when there is no such process, the pid file cannot be read, or on Windows.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", metavar="PID", type=int, help="the server's process id")
    which.add_argument(
        "--pid-file",
        metavar="PATH",
        help="the file the server was started with (flaskrtc --pid-file PATH)",
    )
    return parser


def reload_command(argv: list[str]) -> int:
    """``flaskrtc reload --pid PID | --pid-file PATH``: SIGHUP to a running server."""
    args = _parse(build_reload_parser(), argv)
    if isinstance(args, int):
        return args
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        print(
            "flaskrtc reload: this OS (Windows) has no SIGHUP: set [general] reload_watch "
            "(seconds) and the server reloads by itself when its config file, certificate or "
            "key changes",
            file=sys.stderr,
        )
        return 2
    pid = args.pid
    if args.pid_file is not None:
        try:
            text = Path(args.pid_file).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            print(f"flaskrtc reload: cannot read {args.pid_file}: {reason}", file=sys.stderr)
            return 2
        if not text.isdigit():
            print(f"flaskrtc reload: {args.pid_file} holds no process id", file=sys.stderr)
            return 2
        pid = int(text)
    if pid <= 0:  # 0 and negative pids signal process groups: never that
        print(f"flaskrtc reload: not a process id: {pid}", file=sys.stderr)
        return 2
    try:
        os.kill(pid, hangup)
    except OSError as err:
        print(f"flaskrtc reload: pid {pid}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"sent SIGHUP to pid {pid}: its log says what was reloaded")
    return 0


# Subcommands: ``flaskrtc NAME [flags]`` calls COMMANDS[NAME](flags) for its exit status.
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "doctor": doctor,
    "token": token,
    "config": config_command,
    "reload": reload_command,
}


class _PidFile:
    """The server's pid in a file while it runs (removed at exit, if still ours)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None

    def __enter__(self) -> _PidFile:
        if self.path is not None:
            self.path.write_text(f"{os.getpid()}\n", encoding="ascii")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.path is None:
            return
        try:
            if self.path.read_text(encoding="ascii").strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    """Run flaskrtc with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = _parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None:
        # Until the server has set its reload handler, a SIGHUP (systemctl reload right
        # after the start) would kill it: ignored now, handled once it serves.
        signal.signal(hangup, signal.SIG_IGN)
    overrides = _overrides(args)
    role = None
    try:
        for item in args.set:
            key, equals, value = item.partition("=")
            if not equals:
                raise ConfigError("--set", item, "KEY=VALUE")
            overrides[key] = value
        if args.worker is not None:
            from flaskrtc.workers import parse_role

            try:
                role = parse_role(args.worker, args.worker_table, args.worker_fds)
            except ValueError as err:
                raise ConfigError("--worker", args.worker, str(err)) from None
        config = load_config(args.config, os.environ, overrides)
        setup_logging(
            config.log_level,
            tag=f"w{role.index}" if role else "",
            log_format=config.general.log_format,
            worker=role.index if role else None,
        )
        config, generated = ensure_turn_secret(config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    if role is not None:
        from flaskrtc.workers import worker_share

        config = worker_share(config, role.count)

    def reload_config() -> Config:
        """The config from the same sources as now (SIGHUP); ConfigError if bad."""
        fresh, _ = ensure_turn_secret(load_config(args.config, os.environ, overrides))
        if role is not None:
            from flaskrtc.workers import worker_share

            fresh = worker_share(fresh, role.count)
        return fresh

    if config.config_path is not None:
        log.info("config: %s", config.config_path)
    else:
        log.info("config: built-in defaults (no %s)", DEFAULT_CONFIG_PATH)
    if generated:
        log.info("generated a TURN secret and saved it in %s", config.config_dir / SECRET_FILE_NAME)

    # Workers get the parent's flags: only the parent writes the pid file.
    with _PidFile(args.pid_file if role is None else None):
        if role is None and config.general.workers > 1:
            from flaskrtc.workers import supervise

            return supervise(config, argv, reload_config)
        from flaskrtc.server import run  # imported late: it pulls in gevent, Flask and the app

        return run(config, role, reload_config)
