"""Console logging: ``2026-11-28 03:40:01 INFO  signal  peer 123456 registered``."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-5s %(component)-6s  %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Libraries that log every connection at INFO/DEBUG; their warnings still show.
NOISY_LOGGERS = ("geventwebsocket.handler",)
_PREFIX = "flaskrtc."


class ComponentFormatter(logging.Formatter):
    """Adds ``component``: the logger name without ``flaskrtc.`` (``flaskrtc.turn`` -> turn),
    after ``tag/`` when one is set (a worker's: ``w2/turn``)."""

    tag = ""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        component = name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
        record.component = f"{self.tag}/{component}" if self.tag else component
        return super().format(record)


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler flaskrtc installed, so a second setup replaces nothing twice."""


def setup_logging(level: str, tag: str = "") -> None:
    """Log to stderr at ``level`` (DEBUG, INFO, WARNING or ERROR); safe to call again.
    ``tag`` goes before each line's component (a worker's number)."""
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _ConsoleHandler)), None)
    if handler is None:
        handler = _ConsoleHandler(sys.stderr)
        root.addHandler(handler)
    formatter = ComponentFormatter(FORMAT, DATE_FORMAT)
    formatter.tag = tag
    handler.setFormatter(formatter)
    # The root logger, not just "flaskrtc", so library warnings share the format.
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
