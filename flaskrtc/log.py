"""Console logging: ``2026-11-28 03:40:01 INFO  signal  peer 123456 registered``.

``[general] log_format = json`` prints one JSON object per line instead (same stream):
``time``, ``level``, ``logger``, ``message``, ``worker`` with workers, ``exc`` for an
exception, and whatever a log call passed as ``extra={...}`` (``peer``, ``client``, ``user``,
``transport``, ...). The text format prints the message alone, as before: the fail2ban
filter and the tests read it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMAT = "%(asctime)s %(levelname)-5s %(component)-6s  %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Libraries that log every connection at INFO/DEBUG; their warnings still show.
NOISY_LOGGERS = ("geventwebsocket.handler",)
_PREFIX = "flaskrtc."
# The attributes every LogRecord has (and those formatters add): anything else on a record
# came from ``extra=`` and is a structured field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "component",
    "taskName",
}


def _component(name: str, tag: str) -> str:
    component = name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
    return f"{tag}/{component}" if tag else component


class ComponentFormatter(logging.Formatter):
    """Adds ``component``: the logger name without ``flaskrtc.`` (``flaskrtc.turn`` -> turn),
    after ``tag/`` when one is set (a worker's: ``w2/turn``)."""

    tag = ""

    def format(self, record: logging.LogRecord) -> str:
        record.component = _component(record.name, self.tag)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (``ensure_ascii``: no raw line separators
    such as U+2028 that a line-splitting reader would cut at)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line: the fixed keys first, then the structured fields."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and value is not None and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of an odd type (an address tuple, an enum) must not lose the line.
        return json.dumps(entry, ensure_ascii=True, default=str)


class _ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler flaskrtc installed, so a second setup replaces nothing twice."""


def make_formatter(log_format: str = "text", tag: str = "", worker: int | None = None) -> Any:
    """The formatter of ``[general] log_format``: ``text`` or ``json``."""
    if log_format == "json":
        return JsonFormatter(worker)
    if log_format != "text":
        raise ValueError(f"unknown log format {log_format!r}")
    formatter = ComponentFormatter(FORMAT, DATE_FORMAT)
    formatter.tag = tag
    return formatter


def setup_logging(
    level: str, tag: str = "", log_format: str = "text", worker: int | None = None
) -> None:
    """Log to stderr at ``level`` (DEBUG, INFO, WARNING or ERROR); safe to call again.
    ``tag`` goes before each line's component (a worker's number) in the text format;
    ``worker`` is the ``worker`` field of the JSON one."""
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    formatter = make_formatter(log_format, tag, worker)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _ConsoleHandler)), None)
    if handler is None:
        handler = _ConsoleHandler(sys.stderr)
        root.addHandler(handler)
    handler.setFormatter(formatter)
    set_level(level)


def set_level(level: str) -> None:
    """Log at ``level`` from now on (a reload); the handler and its format stay."""
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    # The root logger, not just "flaskrtc", so library warnings share the format.
    logging.getLogger().setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def route_gevent_errors() -> None:
    """Send what gevent's hub prints about a failed greenlet (a traceback and a context
    line, straight to stderr) through logging instead, so a JSON log stays all JSON."""
    import gevent

    hub = gevent.get_hub()
    hub_log = logging.getLogger("gevent.hub")

    def print_exception(context: Any, kind: Any, value: Any, tb: Any) -> None:
        name = getattr(kind, "__name__", str(kind))
        if not isinstance(value, BaseException):
            hub_log.error("%s failed with %s", context, name)
            return
        hub_log.error("%s failed with %s", context, name, exc_info=(type(value), value, tb))

    hub.print_exception = print_exception
