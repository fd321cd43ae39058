"""Configuration loading: sources, precedence, validation and the generated TURN secret."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from flaskrtc.config import (
    Config,
    ConfigError,
    GeneralConfig,
    TurnConfig,
    ensure_turn_secret,
    load_config,
    public_ips,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = Config(general=GeneralConfig(), turn=TurnConfig())


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {}, {})
    assert config == DEFAULTS
    assert config.config_path is None
    assert config.config_dir == Path("configs")
    assert config.general.port == 8086 and config.general.tls is True
    assert config.general.keepalive == 5.0 and config.general.max_message_size == 1048576
    assert config.turn.port == 19302 and config.turn.tls_port == 5349
    assert config.turn.realm == "flutter-webrtc" and config.turn.ttl == 86400
    assert config.log_level == "INFO"


def test_shipped_config_equals_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    config = load_config(str(REPO / "configs" / "config.ini"), {}, {})
    assert (config.general, config.turn, config.log_level, config.cluster, config.metrics) == (
        DEFAULTS.general,
        DEFAULTS.turn,
        DEFAULTS.log_level,
        DEFAULTS.cluster,
        DEFAULTS.metrics,
    )
    # With no --config, the same file is found relative to the working directory.
    implicit = load_config(None, {}, {})
    assert implicit.config_path == Path("configs/config.ini")
    assert implicit.config_dir == Path("configs")
    assert implicit.general == DEFAULTS.general and implicit.turn == DEFAULTS.turn


def test_default_path_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    write(tmp_path / "configs" / "config.ini", "[general]\nport = 9000\n")
    config = load_config(None, {}, {})
    assert config.general.port == 9000
    assert config.config_path == Path("configs/config.ini")


FULL_FILE = """\
# a comment
[general]
domain = demo.example.com
cert = /etc/cert.pem
key = /etc/key.pem
bind = 127.0.0.1
port = 443
html_root = /srv/web
tls = off
keepalive = 2.5
max_message_size = 2048
log_level = debug

[turn]
public_ip = 203.0.113.7
port = 3478
tls_port = 0
bind = ::
realm = example.com
secret = s3cret
ttl = 600
"""


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "my.ini", FULL_FILE)
    config = load_config(str(path), {}, {})
    assert config.general == GeneralConfig(
        domain="demo.example.com",
        cert="/etc/cert.pem",
        key="/etc/key.pem",
        bind="127.0.0.1",
        port=443,
        html_root="/srv/web",
        tls=False,
        keepalive=2.5,
        max_message_size=2048,
    )
    assert config.turn == TurnConfig(
        public_ip="203.0.113.7",
        port=3478,
        tls_port=0,
        bind="::",
        realm="example.com",
        secret="s3cret",
        ttl=600,
    )
    assert config.log_level == "DEBUG"
    assert config.config_path == path
    assert config.config_dir == tmp_path


def test_go_server_config_is_accepted(tmp_path: Path) -> None:
    # flutter-webrtc-server's own file: no spaces around "=", only the keys it knew.
    path = write(
        tmp_path / "config.ini",
        "[general]\ndomain=demo.cloudwebrtc.com\ncert=configs/certs/cert.pem\n"
        "key=configs/certs/key.pem\nbind=0.0.0.0\nport=8086\nhtml_root=web\n\n"
        "[turn]\npublic_ip=127.0.0.1\nport=19302\nrealm=flutter-webrtc\n",
    )
    config = load_config(str(path), {}, {})
    assert config.general.domain == "demo.cloudwebrtc.com"
    assert config.turn.public_ip == "127.0.0.1"
    assert config.turn.tls_port == 5349  # new keys keep their defaults


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[turn]\nrealm = r\n")
    config = load_config(str(path), {}, {})
    assert config.turn == dataclasses.replace(TurnConfig(), realm="r")
    assert config.general == GeneralConfig()


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[general]\nport = 9000\n[turn]\npublic_ip = 10.0.0.1\n")
    environ = {
        "FLASKRTC_GENERAL_PORT": "9001",
        "FLASKRTC_TURN_PUBLIC_IP": "10.0.0.2",
        "FLASKRTC_GENERAL_HTML_ROOT": "/www",
        "FLASKRTC_TURN_TLS_PORT": "0",
        "FLASKRTC_LOG_LEVEL": "warning",
        "UNRELATED": "x",
        "FLASKRTC_SOMETHING_ELSE": "ignored",  # not a section prefix: not ours to judge
    }
    config = load_config(str(path), environ, {})
    assert config.general.port == 9001
    assert config.turn.public_ip == "10.0.0.2"
    assert config.general.html_root == "/www"
    assert config.turn.tls_port == 0
    assert config.log_level == "WARNING"


def test_env_general_log_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {"FLASKRTC_GENERAL_LOG_LEVEL": "Error"}, {}).log_level == "ERROR"


def test_overrides_beat_env_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[general]\nport = 9000\ntls = true\nlog_level = INFO\n")
    environ = {"FLASKRTC_GENERAL_PORT": "9001", "FLASKRTC_TURN_PUBLIC_IP": "10.0.0.2"}
    overrides = {
        "general.port": "9002",
        "turn.public_ip": "10.0.0.3",
        "general.tls": "false",
        "log_level": "debug",
        "general.bind": "127.0.0.1",
        "turn.port": "3478",
    }
    config = load_config(str(path), environ, overrides)
    assert config.general.port == 9002
    assert config.turn.public_ip == "10.0.0.3"
    assert config.general.tls is False
    assert config.log_level == "DEBUG"
    assert config.general.bind == "127.0.0.1"
    assert config.turn.port == 3478


def test_port_zero_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {}, {"general.port": "0", "turn.port": "0"})
    assert config.general.port == 0 and config.turn.port == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("OFF", False),
        ("0", False),
    ],
)
def test_bool_spellings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {}, {"general.tls": text}).general.tls is expected


def test_ipv6_addresses_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None, {}, {"general.bind": "::", "turn.public_ip": "2001:db8::1", "turn.bind": "::1"}
    )
    assert config.general.bind == "::"
    assert config.turn.public_ip == "2001:db8::1"
    assert config.turn.bind == "::1"


def test_public_ip_takes_one_address_of_each_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    both = load_config(None, {}, {"turn.public_ip": " 203.0.113.5 ,2001:DB8::5"})
    assert both.turn.public_ip == "203.0.113.5, 2001:db8::5"
    assert public_ips(both.turn.public_ip) == ["203.0.113.5", "2001:db8::5"]
    assert public_ips("") == []


def test_defaults_listen_on_both_families(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {}, {})
    assert (config.general.bind, config.turn.bind) == ("::", "::")


# (key, bad value, words the "expected" part must contain)
BAD_VALUES = [
    ("general.port", "abc", "an integer from 0 to 65535"),
    ("general.port", "65536", "an integer from 0 to 65535"),
    ("general.port", "-1", "an integer from 0 to 65535"),
    ("general.port", "1_000", "an integer from 0 to 65535"),
    ("general.port", "", "an integer from 0 to 65535"),
    ("turn.port", "99999", "an integer from 0 to 65535"),
    ("turn.tls_port", "x", "an integer from 0 to 65535"),
    ("turn.ttl", "59", "at least 60"),
    ("turn.ttl", "1.5", "at least 60"),
    ("general.max_message_size", "1023", "from 1024 to 67108864"),
    ("general.max_message_size", "67108865", "from 1024 to 67108864"),
    ("general.tls", "maybe", "true or false"),
    ("general.tls", "", "true or false"),
    ("general.keepalive", "0", "greater than 0"),
    ("general.keepalive", "-1", "greater than 0"),
    ("general.keepalive", "3601", "at most 3600"),
    ("general.keepalive", "nan", "greater than 0"),
    ("general.keepalive", "inf", "at most 3600"),
    ("general.keepalive", "soon", "number of seconds"),
    ("general.bind", "localhost", "an IP address"),
    ("general.bind", "", "an IP address"),
    ("general.bind", "300.1.1.1", "an IP address"),
    ("turn.bind", "eth0", "an IP address"),
    ("turn.public_ip", "example.com", "an IP address"),
    ("turn.public_ip", "0.0.0.0", "not 0.0.0.0"),
    ("turn.public_ip", "203.0.113.5, 203.0.113.6", "one IPv4 and one IPv6"),
    ("turn.public_ip", "2001:db8::5, 2001:db8::6", "one IPv4 and one IPv6"),
    ("turn.public_ip", "203.0.113.5, 2001:db8::5, 198.51.100.1", "one IPv4 and one IPv6"),
    ("turn.public_ip", "203.0.113.5, ::", "not 0.0.0.0"),
    ("turn.public_ip", "203.0.113.5,", "an IP address"),
    ("turn.realm", "", "non-empty"),
    ("turn.realm", "   ", "non-empty"),
    ("general.domain", "bad domain", "host name"),
    ("general.cert", "", "certificate file path"),
    ("general.html_root", "", "directory"),
    ("log_level", "verbose", "DEBUG, INFO, WARNING, ERROR"),
    ("turn.min_port", "1023", "an integer from 1024 to 65535"),
    ("turn.min_port", "0", "an integer from 1024 to 65535"),
    ("turn.min_port", "65536", "an integer from 1024 to 65535"),
    ("turn.max_port", "80", "an integer from 1024 to 65535"),
    ("turn.max_port", "x", "an integer from 1024 to 65535"),
    ("turn.denied_peer_ip", "localhost", "IP addresses or CIDRs"),
    ("turn.denied_peer_ip", "10.0.0.0/33", "'10.0.0.0/33' is neither"),
    ("turn.denied_peer_ip", "10.0.0.0/8,", "'' is neither"),
    ("turn.denied_peer_ip", "10.0.0.0/8 192.168.0.0/16", "IP addresses or CIDRs"),
    ("turn.allowed_peer_ip", "127.0.0.1, ::1/129", "'::1/129' is neither"),
    ("turn.allowed_peer_ip", "127.0.0.1;::1", "IP addresses or CIDRs"),
    ("turn.user_quota", "-1", "an integer of at least 0"),
    ("turn.user_quota", "ten", "an integer of at least 0"),
    ("turn.total_quota", "1.5", "an integer of at least 0"),
    ("turn.max_permissions", "0", "an integer from 1 to 4096"),
    ("turn.max_permissions", "4097", "an integer from 1 to 4096"),
    ("turn.max_channels", "0", "an integer from 1 to 4096"),
    ("turn.max_channels", "4097", "an integer from 1 to 4096"),  # RFC 8656 §12: 0x4000-0x4FFF
    ("turn.max_lifetime", "59", "an integer from 60 to 86400"),
    ("turn.max_lifetime", "86401", "an integer from 60 to 86400"),
    ("turn.default_lifetime", "0", "an integer from 60 to 86400"),
    ("turn.default_lifetime", "86401", "an integer from 60 to 86400"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_bad_override_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {key: value})
    err = info.value
    assert err.key == key
    assert err.value == value
    assert expected in err.expected
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"config error: {key} = {value!r}: expected ")
    assert expected in message


def test_error_message_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"general.port": "abc"})
    assert str(info.value) == (
        "config error: general.port = 'abc': expected an integer from 0 to 65535"
    )


def test_bad_file_value_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[turn]\nttl = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert (info.value.key, info.value.value) == ("turn.ttl", "5")
    message = str(info.value)
    assert message.startswith("config error: turn.ttl = '5': expected an integer of at least 60")
    assert str(path) in message and "\n" not in message


def test_bad_file_log_level(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[general]\nlog_level = loud\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert info.value.key == "general.log_level" and info.value.value == "loud"


def test_bad_env_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"FLASKRTC_TURN_TTL": "5"}, {})
    assert info.value.key == "turn.ttl" and info.value.value == "5"
    assert "FLASKRTC_TURN_TTL" in str(info.value)


def test_override_fixes_bad_env_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the value that wins is validated: a flag can correct a broken variable.
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {"FLASKRTC_GENERAL_PORT": "abc"}, {"general.port": "1"})
    assert config.general.port == 1


def test_values_are_stripped(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[general]\nport =  8087  \n[turn]\nrealm = r  \n")
    config = load_config(str(path), {"FLASKRTC_GENERAL_BIND": " 127.0.0.1 "}, {})
    assert config.general.port == 8087
    assert config.turn.realm == "r"
    assert config.general.bind == "127.0.0.1"


def test_unknown_key_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[general]\nprot = 8086\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert info.value.key == "general.prot"
    assert "general.prot" in str(info.value) and "port" in info.value.expected


def test_unknown_section_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[genral]\nport = 8086\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert info.value.value == "genral"
    assert "genral" in str(info.value)


def test_default_section_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[DEFAULT]\nport = 1\n[general]\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert "DEFAULT" in str(info.value)


def test_unknown_env_variable_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"FLASKRTC_GENERAL_PROT": "1"}, {})
    assert info.value.key == "FLASKRTC_GENERAL_PROT"


def test_unknown_override_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"general.nope": "1"})
    assert info.value.key == "general.nope"


@pytest.mark.parametrize(
    "text",
    [
        "port = 1\n",  # no section header
        "[general]\nport = 1\nport = 2\n",  # duplicate key
        "[general]\nport\n",  # no value
        "[general]\n[general]\n",  # duplicate section
    ],
)
def test_malformed_file_is_one_line_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "c.ini", text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert info.value.key == "config"
    assert "\n" not in str(info.value)


def test_no_interpolation(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[turn]\nsecret = 100%%s%(x)s\n")
    assert load_config(str(path), {}, {}).turn.secret == "100%%s%(x)s"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_bytes(b"\xef\xbb\xbf[general]\nport = 1234\n")
    assert load_config(str(path), {}, {}).general.port == 1234


def test_explicit_missing_file_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("missing.ini", {}, {})
    assert info.value.key == "config" and info.value.value == "missing.ini"
    assert (
        str(info.value) == "config error: config = 'missing.ini': expected an existing config file"
    )


def test_explicit_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), {}, {})
    assert info.value.key == "config"


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.general.port = 1  # type: ignore[misc]


# --- the TURN secret -------------------------------------------------------------------------


def config_in(directory: Path, secret: str = "") -> Config:
    return Config(general=GeneralConfig(), turn=TurnConfig(secret=secret), config_dir=directory)


def test_secret_generated_once_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "conf" / "sub"  # created on demand
    config, generated = ensure_turn_secret(config_in(directory))
    assert generated is True
    secret = config.turn.secret
    assert len(secret) >= 40  # token_urlsafe(32): 43 characters
    path = directory / "turn_secret"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == ["turn_secret"]  # no temp files left

    again, generated = ensure_turn_secret(config_in(directory))
    assert generated is False
    assert again.turn.secret == secret
    assert again == dataclasses.replace(config_in(directory), turn=TurnConfig(secret=secret))


def test_secret_file_whitespace_stripped(tmp_path: Path) -> None:
    (tmp_path / "turn_secret").write_text("  kept-secret \n\n")
    config, generated = ensure_turn_secret(config_in(tmp_path))
    assert (config.turn.secret, generated) == ("kept-secret", False)


def test_empty_secret_file_is_regenerated(tmp_path: Path) -> None:
    path = tmp_path / "turn_secret"
    path.write_text("\n")
    path.chmod(0o644)
    config, generated = ensure_turn_secret(config_in(tmp_path))
    assert generated is True and config.turn.secret
    assert path.read_text().strip() == config.turn.secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_explicit_secret_is_kept(tmp_path: Path) -> None:
    (tmp_path / "turn_secret").write_text("file-secret\n")
    original = config_in(tmp_path, secret="mine")
    config, generated = ensure_turn_secret(original)
    assert config is original and generated is False
    assert (tmp_path / "turn_secret").read_text() == "file-secret\n"


def test_explicit_secret_writes_no_file(tmp_path: Path) -> None:
    ensure_turn_secret(config_in(tmp_path / "none", secret="mine"))
    assert not (tmp_path / "none").exists()


def test_secret_beside_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[general]\nport = 1\n")
    config, generated = ensure_turn_secret(load_config(str(path), {}, {}))
    assert generated
    assert (tmp_path / "turn_secret").read_text().strip() == config.turn.secret


def test_unwritable_secret_dir_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the directory should be
    with pytest.raises(ConfigError) as info:
        ensure_turn_secret(config_in(blocker / "dir"))
    assert info.value.key == "turn.secret"
    assert "\n" not in str(info.value)


# --- [turn] relay keys: ports, users, peer addresses, quotas, lifetimes ----------------------


def test_turn_relay_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    turn = load_config(None, {}, {}).turn
    assert (turn.min_port, turn.max_port) == (49152, 65535)
    assert turn.users == ()
    assert turn.denied_peer_ip == () and turn.allowed_peer_ip == ()
    assert (turn.user_quota, turn.total_quota) == (10, 1000)
    assert (turn.max_permissions, turn.max_channels) == (64, 64)
    # RFC 8656 §7.2: default lifetime 600 s, at most 3600 s.
    assert (turn.default_lifetime, turn.max_lifetime) == (600, 3600)


RELAY_FILE = """\
[turn]
min_port = 40000
max_port = 40100
users = alice:wonderland, bob : builder , carol:a:b:c
denied_peer_ip = 10.0.0.0/8, 192.168.1.7, fd00::/8, 172.16.1.2/12
allowed_peer_ip = 127.0.0.1,::1
user_quota = 0
total_quota = 0
max_permissions = 4096
max_channels = 4096
max_lifetime = 86400
default_lifetime = 60
"""


def test_turn_relay_keys_from_file(tmp_path: Path) -> None:
    turn = load_config(str(write(tmp_path / "c.ini", RELAY_FILE)), {}, {}).turn
    assert turn == dataclasses.replace(
        TurnConfig(),
        min_port=40000,
        max_port=40100,
        # Whitespace around names and passwords goes; a password may hold ':'.
        users=(("alice", "wonderland"), ("bob", "builder"), ("carol", "a:b:c")),
        # Canonical CIDRs; host bits are dropped (ip_network(strict=False)).
        denied_peer_ip=("10.0.0.0/8", "192.168.1.7/32", "fd00::/8", "172.16.0.0/12"),
        allowed_peer_ip=("127.0.0.1/32", "::1/128"),
        user_quota=0,  # 0: unlimited
        total_quota=0,
        max_permissions=4096,
        max_channels=4096,
        max_lifetime=86400,
        default_lifetime=60,
    )


def test_turn_relay_keys_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {
        "FLASKRTC_TURN_MIN_PORT": "50000",
        "FLASKRTC_TURN_MAX_PORT": "50010",
        "FLASKRTC_TURN_USERS": "u:p",
        "FLASKRTC_TURN_DENIED_PEER_IP": "10.0.0.0/8",
        "FLASKRTC_TURN_ALLOWED_PEER_IP": "127.0.0.0/8",
        "FLASKRTC_TURN_USER_QUOTA": "2",
        "FLASKRTC_TURN_TOTAL_QUOTA": "20",
        "FLASKRTC_TURN_MAX_PERMISSIONS": "8",
        "FLASKRTC_TURN_MAX_CHANNELS": "9",
        "FLASKRTC_TURN_MAX_LIFETIME": "1200",
        "FLASKRTC_TURN_DEFAULT_LIFETIME": "300",
    }
    turn = load_config(None, environ, {}).turn
    assert (turn.min_port, turn.max_port) == (50000, 50010)
    assert turn.users == (("u", "p"),)
    assert turn.denied_peer_ip == ("10.0.0.0/8",)
    assert turn.allowed_peer_ip == ("127.0.0.0/8",)
    assert (turn.user_quota, turn.total_quota) == (2, 20)
    assert (turn.max_permissions, turn.max_channels) == (8, 9)
    assert (turn.max_lifetime, turn.default_lifetime) == (1200, 300)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = {"turn.users": text, "turn.denied_peer_ip": text, "turn.allowed_peer_ip": text}
    turn = load_config(None, {}, overrides).turn
    assert (turn.users, turn.denied_peer_ip, turn.allowed_peer_ip) == ((), (), ())


def test_equal_bounds_are_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = {
        "turn.min_port": "50000",
        "turn.max_port": "50000",
        "turn.default_lifetime": "900",
        "turn.max_lifetime": "900",
    }
    turn = load_config(None, {}, overrides).turn
    assert (turn.min_port, turn.max_port) == (50000, 50000)
    assert (turn.default_lifetime, turn.max_lifetime) == (900, 900)


# (users value, what the error's "expected" part must contain)
BAD_USERS = [
    ("alice", "entry 1 has no ':'"),
    ("alice:pw, bob", "entry 2 has no ':'"),
    (":pw", "entry 1 has an empty name"),
    ("alice:", "entry 1 has an empty password"),
    ("alice:  ", "entry 1 has an empty password"),
    ("alice:pw,", "entry 2 has no ':'"),
    ("alice:pw,,bob:pw", "entry 2 has no ':'"),
    ("alice:pw, alice:other", "user 'alice' is listed twice"),
    ("x" * 509 + ":pw", "at most 508 bytes"),  # RFC 8489 §14.3
]


@pytest.mark.parametrize(("value", "expected"), BAD_USERS)
def test_bad_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"turn.users": value})
    err = info.value
    assert err.key == "turn.users"
    assert "name:password pairs" in err.expected and expected in err.expected
    message = str(err)
    assert message.startswith("config error: turn.users = ") and "\n" not in message


def test_users_error_hides_passwords(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[turn]\nusers = alice:s3cret, bob:hunter2, forgotcolon\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    message = str(info.value)
    assert "s3cret" not in message and "hunter2" not in message and "forgotcolon" not in message
    assert info.value.value == "alice:***, bob:***,***"
    assert "entry 3 has no ':'" in message and str(path) in message


def test_users_value_from_environment_is_hidden_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"FLASKRTC_TURN_USERS": "a:pw1,a:pw2"}, {})
    assert "pw1" not in str(info.value) and "pw2" not in str(info.value)
    assert "FLASKRTC_TURN_USERS" in str(info.value)


def test_min_port_above_max_port(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[turn]\nmin_port = 60000\nmax_port = 50000\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    err = info.value
    assert (err.key, err.value) == ("turn.min_port", "60000")
    assert str(err) == (
        f"config error: turn.min_port = '60000': expected at most turn.max_port (50000) "
        f"(from {path})"
    )


def test_max_port_below_default_min_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only max_port was set; the error still names turn.min_port and says where max_port was.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"FLASKRTC_TURN_MAX_PORT": "2000"}, {})
    err = info.value
    assert (err.key, err.value) == ("turn.min_port", "49152")
    assert str(err) == (
        "config error: turn.min_port = '49152': expected at most turn.max_port "
        "(2000, from environment variable FLASKRTC_TURN_MAX_PORT)"
    )


def test_range_is_checked_on_the_winning_values(tmp_path: Path) -> None:
    # The file's range is inverted, but a flag fixes it: no error.
    path = write(tmp_path / "c.ini", "[turn]\nmin_port = 60000\nmax_port = 50000\n")
    config = load_config(str(path), {}, {"turn.max_port": "65000"})
    assert (config.turn.min_port, config.turn.max_port) == (60000, 65000)


def test_default_lifetime_above_max_lifetime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"turn.default_lifetime": "4000"})
    err = info.value
    assert (err.key, err.value) == ("turn.default_lifetime", "4000")
    assert str(err) == (
        "config error: turn.default_lifetime = '4000': expected at most turn.max_lifetime (3600)"
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"turn.max_lifetime": "300"})
    assert (info.value.key, info.value.value) == ("turn.default_lifetime", "600")


def test_unknown_key_error_lists_new_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ini", "[turn]\nminport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, {})
    assert "min_port" in info.value.expected and "allowed_peer_ip" in info.value.expected


def test_turn_servers_expand_to_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = "turn2.example.org:3478, [2001:db8::7]:3479 , turns:t3.example.org:5349?transport=tcp"
    config = load_config(None, {}, {"turn.servers": text})
    assert config.turn.servers == (
        "turn:turn2.example.org:3478?transport=udp",
        "turn:turn2.example.org:3478?transport=tcp",
        "turn:[2001:db8::7]:3479?transport=udp",
        "turn:[2001:db8::7]:3479?transport=tcp",
        "turns:t3.example.org:5349?transport=tcp",
    )


@pytest.mark.parametrize(
    "bad",
    [
        "turn2.example.org",
        "host:0",
        "host:70000",
        "bad host:3478",
        "turn:",
        "stun:x:3478",
        "turn:[zz::1]:3478",
        "turn:x:3478?transport=sctp",
        "[::1:3478",
    ],
)
def test_bad_turn_servers_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="host:port"):
        load_config(None, {}, {"turn.servers": bad})


def test_cluster_is_off_by_default_and_validated(tmp_path: Path) -> None:
    config = load_config(None, {}, {})
    assert config.cluster.redis_url == "" and config.cluster.heartbeat == 1.0
    assert config.cluster.instance_ttl == 3.0
    path = write(
        tmp_path / "c.ini", "[cluster]\nredis_url = redis://10.0.0.7:6380/2\nheartbeat = 0.5\n"
    )
    config = load_config(str(path), {}, {})
    assert config.cluster.redis_url == "redis://10.0.0.7:6380/2"
    assert config.cluster.instance_ttl == 1.5
    env = {"FLASKRTC_CLUSTER_REDIS_URL": "unix:///run/redis.sock"}
    assert load_config(None, env, {}).cluster.redis_url == "unix:///run/redis.sock"
    for bad in ("rediss://h:6380", "http://h", "redis://", "redis://h/x", "redis://h:70000"):
        with pytest.raises(ConfigError, match=r"cluster\.redis_url"):
            load_config(None, {}, {"cluster.redis_url": bad})
    for bad in ("0", "0.05", "61", "nan", "x"):
        with pytest.raises(ConfigError, match=r"cluster\.heartbeat"):
            load_config(None, {}, {"cluster.heartbeat": bad})
    # A password in a bad URL is not printed back.
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"cluster.redis_url": "redis://:hunter2@h:99999"})
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_metrics_are_off_by_default_loopback_only_and_without_token(tmp_path: Path) -> None:
    config = load_config(None, {}, {})
    assert config.metrics.enabled is False
    assert config.metrics.allow == ("127.0.0.0/8", "::1/128")
    assert config.metrics.token == ""


def test_metrics_keys_from_file_environment_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.ini",
        "[metrics]\nenabled = yes\nallow = 10.1.2.3/8, 2001:db8::/32\ntoken = abcdefghijklmnop\n",
    )
    config = load_config(str(path), {}, {})
    assert config.metrics.enabled is True
    assert config.metrics.allow == ("10.0.0.0/8", "2001:db8::/32")
    assert config.metrics.token == "abcdefghijklmnop"
    env = {"FLASKRTC_METRICS_ENABLED": "false", "FLASKRTC_METRICS_ALLOW": ""}
    config = load_config(str(path), env, {})
    assert config.metrics.enabled is False and config.metrics.allow == ()
    assert load_config(str(path), env, {"metrics.token": ""}).metrics.token == ""
    # A typo in a [metrics] variable is an error, as in the other sections.
    with pytest.raises(ConfigError, match="FLASKRTC_METRICS_ENABLE"):
        load_config(None, {"FLASKRTC_METRICS_ENABLE": "1"}, {})
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        load_config(str(write(tmp_path / "n.ini", "[metrics]\nport = 9100\n")), {}, {})


@pytest.mark.parametrize(
    ("key", "bad", "expected"),
    [
        ("metrics.enabled", "maybe", "true or false"),
        ("metrics.allow", "10.0.0.0/8, nowhere", "'nowhere' is neither"),
        ("metrics.token", "short", "at least 16 characters"),
        ("metrics.token", "sixteen chars with spaces", "printable ASCII"),
    ],
)
def test_bad_metrics_values_are_refused(key: str, bad: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(None, {}, {key: bad})
    assert key in str(info.value)


def test_a_bad_metrics_token_is_not_printed() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"metrics.token": "hunter2 hunter2 hunter2"})
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
