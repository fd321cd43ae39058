"""The configuration keys of the HTTP/WebSocket limits and of [auth]: defaults, parsing,
one-line errors (tests/unit/test_config.py covers the rest of the file format)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flaskrtc.config import AuthConfig, Config, ConfigError, GeneralConfig, TurnConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def load(overrides: dict[str, str], environ: dict[str, str] | None = None) -> Config:
    return load_config(None, environ or {}, overrides)


def test_defaults() -> None:
    config = Config(GeneralConfig(), TurnConfig())
    general = config.general
    assert (general.max_connections, general.max_connections_per_ip) == (10000, 100)
    assert general.rate_limit == 20
    assert general.idle_timeout == 0 and general.effective_idle_timeout == 15  # 3 x 5 s
    assert config.auth == AuthConfig(secret="")


def test_the_shipped_config_file_keeps_the_defaults() -> None:
    config = load_config(str(REPO / "configs" / "config.ini"), {}, {})
    assert config.general == GeneralConfig()
    assert config.auth == AuthConfig()


def test_values_are_parsed() -> None:
    config = load(
        {
            "general.max_connections": "0",
            "general.max_connections_per_ip": "7",
            "general.rate_limit": "2.5",
            "general.keepalive": "2",
            "general.idle_timeout": "9",
        },
        {"FLASKRTC_AUTH_SECRET": "  0123456789abcdef  "},
    )
    assert config.general.max_connections == 0
    assert config.general.max_connections_per_ip == 7
    assert config.general.rate_limit == 2.5
    assert config.general.effective_idle_timeout == 9
    assert config.auth.secret == "0123456789abcdef"


def test_empty_idle_timeout_follows_keepalive() -> None:
    config = load({"general.keepalive": "0.5", "general.idle_timeout": ""})
    assert config.general.effective_idle_timeout == 1.5


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("general.max_connections", "-1", "an integer of at least 0"),
        ("general.max_connections_per_ip", "1e3", "an integer of at least 0"),
        ("general.rate_limit", "-1", "requests per second from 0"),
        ("general.rate_limit", "fast", "requests per second from 0"),
        ("general.rate_limit", "inf", "requests per second from 0"),
        ("general.idle_timeout", "nan", "seconds greater than keepalive"),
        ("general.idle_timeout", "100000", "seconds greater than keepalive"),
    ],
)
def test_bad_values_are_one_line_errors(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({key: value})
    assert key in str(info.value) and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_idle_timeout_must_exceed_keepalive() -> None:
    with pytest.raises(ConfigError) as info:
        load({"general.keepalive": "5", "general.idle_timeout": "5"})
    assert str(info.value).startswith("config error: general.idle_timeout = '5'")
    assert "more than general.keepalive (5)" in str(info.value)
    assert load({"general.keepalive": "5", "general.idle_timeout": "5.5"})


def test_short_auth_secret_is_refused_without_being_printed(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[auth]\nsecret = hunter2\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    text = str(info.value)
    assert "auth.secret" in text and "at least 16 characters" in text
    assert "hunter2" not in text


def test_auth_section_is_known_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[auth]\nscret = 0123456789abcdef\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert "a known [auth] key: secret" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load({}, {"FLASKRTC_AUTH_SECRT": "x"})
    assert "FLASKRTC_AUTH_SECRT" in str(info.value)
