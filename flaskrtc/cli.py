"""The ``flaskrtc`` command: parse flags, load the configuration, run the server."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flaskrtc import __version__
from flaskrtc.config import (
    DEFAULT_CONFIG_PATH,
    SECRET_FILE_NAME,
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


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="flaskrtc",
        description="WebRTC signaling server with a built-in TURN relay "
        "(compatible with flutter-webrtc-server).",
        epilog="Precedence: built-in defaults < config file < FLASKRTC_<SECTION>_<KEY> "
        "environment variables (e.g. FLASKRTC_GENERAL_PORT) < these flags.",
    )
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
    parser.add_argument("--version", action="version", version=f"flaskrtc {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run flaskrtc with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        # --help, --version and usage errors; report their status instead of raising.
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    overrides = {
        key: value for dest, key in _OVERRIDES.items() if (value := getattr(args, dest)) is not None
    }
    if args.no_tls:
        overrides["general.tls"] = "false"
    try:
        config = load_config(args.config, os.environ, overrides)
        setup_logging(config.log_level)
        config, generated = ensure_turn_secret(config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    if config.config_path is not None:
        log.info("config: %s", config.config_path)
    else:
        log.info("config: built-in defaults (no %s)", DEFAULT_CONFIG_PATH)
    if generated:
        log.info("generated a TURN secret and saved it in %s", config.config_dir / SECRET_FILE_NAME)

    from flaskrtc.server import run  # imported late: it pulls in gevent, Flask and the app

    return run(config)
