"""``[general] log_format``: the JSON formatter, and the text format left as it was."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskrtc.config import ConfigError, load_config
from flaskrtc.log import JsonFormatter, make_formatter, setup_logging

TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing JSON lines to a buffer (the root logger is left alone)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("flaskrtc.test_log")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers[:] = []
    logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    """Every line of ``stream`` parsed; fails on a line that is not one JSON object."""
    text = stream.getvalue()
    assert text.endswith("\n")
    parsed = [json.loads(line) for line in text.split("\n")[:-1]]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def test_fixed_fields_and_extra(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("%s: registered", "ws#1 1.2.3.4", extra={"peer": "123456", "client": "1.2.3.4"})
    (entry,) = lines(stream)
    assert TIME_RE.fullmatch(str(entry["time"]))
    assert entry["level"] == "INFO"
    assert entry["logger"] == "flaskrtc.test_log"
    assert entry["message"] == "ws#1 1.2.3.4: registered"
    assert entry["peer"] == "123456" and entry["client"] == "1.2.3.4"
    # None of LogRecord's own attributes leak in.
    assert not {"args", "msg", "levelno", "pathname", "exc_info", "component"} & set(entry)


def test_time_is_utc_with_milliseconds() -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", None, None)
    record.created, record.msecs = 0.25, 250.0
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"] == "1970-01-01T00:00:00.250Z"


def test_exception_text_in_exc(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("dropping a message", extra={"client": "::1", "transport": "tcp"})
    (entry,) = lines(stream)  # the multi-line traceback stays on the one line
    assert entry["message"] == "dropping a message"
    assert entry["level"] == "ERROR"
    exc = str(entry["exc"])
    assert exc.startswith("Traceback") and "RuntimeError: boom\nsecond line" in exc
    assert entry["transport"] == "tcp"


def test_hostile_text_cannot_break_a_line(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    user = 'x"\n{"level": "INFO"}\u2028\x00\\'
    logger.warning("turn auth failure: %s", user, extra={"user": user})
    raw = stream.getvalue()
    assert raw.count("\n") == 1 and "\u2028" not in raw  # ensure_ascii: no raw separators
    (entry,) = lines(stream)
    assert entry["user"] == user and entry["level"] == "WARNING"


def test_odd_field_types_do_not_lose_the_line(
    capture: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = capture
    logger.info("x", extra={"relay": ("127.0.0.1", 5000), "path": Path("/a"), "none": None})
    (entry,) = lines(stream)
    assert entry["relay"] == ["127.0.0.1", 5000]
    assert entry["path"] == "/a"
    assert "none" not in entry  # a field not known here is left out, not null


def test_worker_field() -> None:
    record = logging.LogRecord("flaskrtc.turn", logging.INFO, "", 0, "m", None, None)
    assert json.loads(JsonFormatter(worker=2).format(record))["worker"] == 2
    assert "worker" not in json.loads(JsonFormatter().format(record))


def test_text_format_unchanged_and_ignores_extra() -> None:
    formatter = make_formatter("text", tag="w2")
    record = logging.LogRecord("flaskrtc.turn", logging.WARNING, "", 0, "m %s", ("x",), None)
    record.client = "1.2.3.4"
    line = formatter.format(record)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING w2/turn  m x", line)
    with pytest.raises(ValueError):
        make_formatter("xml")


def test_setup_logging_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [h for h in root.handlers if type(h).__name__ != "_ConsoleHandler"]
    try:
        setup_logging("INFO", log_format="json", worker=3)
        logging.getLogger("flaskrtc.signal").info("hello", extra={"peer": "1"})
        logging.getLogger("flaskrtc.signal").debug("hidden")
        setup_logging("INFO")  # back to text: the same handler, a new formatter
        logging.getLogger("flaskrtc.signal").info("plain")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = capsys.readouterr().err.splitlines()
    entry = json.loads(first)
    assert (entry["message"], entry["peer"], entry["worker"]) == ("hello", "1", 3)
    assert second.endswith("INFO  signal  plain")


def test_log_format_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {}, {}).general.log_format == "text"
    env = {"FLASKRTC_GENERAL_LOG_FORMAT": " JSON "}
    assert load_config(None, env, {}).general.log_format == "json"
    with pytest.raises(ConfigError, match=r"general.log_format = 'yaml': expected one of text"):
        load_config(None, {}, {"general.log_format": "yaml"})


def test_gevent_hub_errors_go_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    import gevent

    from flaskrtc.log import route_gevent_errors

    def fail() -> None:
        raise ValueError("greenlet died")

    hub = gevent.get_hub()
    route_gevent_errors()
    try:
        with caplog.at_level(logging.ERROR, logger="gevent.hub"):
            gevent.spawn(fail).join()
    finally:
        del hub.print_exception  # the hub's own method again
    (record,) = [r for r in caplog.records if r.name == "gevent.hub"]
    assert "failed with ValueError" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is not None
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: greenlet died" in entry["exc"]
