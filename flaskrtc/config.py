"""Configuration: built-in defaults, an INI file, ``FLASKRTC_*`` variables, command-line flags.

Later sources win: defaults < file < environment < overrides (the command line). Every value
is validated here, so the rest of flaskrtc can trust a :class:`Config` it is handed.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import math
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flaskrtc.files import write_atomic

DEFAULT_CONFIG_PATH = Path("configs") / "config.ini"
DEFAULT_CONFIG_DIR = Path("configs")
SECRET_FILE_NAME = "turn_secret"
ENV_PREFIX = "FLASKRTC_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class GeneralConfig:
    """``[general]``: the HTTP(S) and WebSocket server."""

    domain: str = "localhost"
    cert: str = "configs/certs/cert.pem"
    key: str = "configs/certs/key.pem"
    bind: str = "::"  # IPv6 and IPv4 (one dual-stack socket); IPv4 alone without IPv6
    port: int = 8086
    html_root: str = "web"
    tls: bool = True
    keepalive: float = 5.0  # seconds between "{}" frames, > 0
    max_message_size: int = 1048576  # bytes, 1 KiB .. 64 MiB
    idle_timeout: float = 0.0  # seconds without a frame or pong; 0 = 3 keepalive periods
    max_connections: int = 10000  # open HTTP(S)/WebSocket connections in all, 0 = unlimited
    max_connections_per_ip: int = 100  # per client IP, 0 = unlimited
    rate_limit: float = 20.0  # /api/turn and /ws requests per second per IP (burst 2x), 0 = off
    workers: int = 1  # processes sharing the ports (SO_REUSEPORT, Linux); "auto" = CPU count
    log_format: str = "text"  # "text" (human, fail2ban) or "json" (one object per line)
    # CIDRs of reverse proxies whose Forwarded / X-Forwarded-For headers name the client;
    # empty: trust nobody, the TCP peer is the client.
    trusted_proxies: tuple[str, ...] = ()
    # Seconds between looks at the config file, certificate and key; a change reloads them as
    # SIGHUP does (the way to reload on Windows, which has no SIGHUP). 0 = off.
    reload_watch: float = 0.0

    @property
    def effective_idle_timeout(self) -> float:
        """``idle_timeout``, or three keepalive periods when it is unset (0)."""
        return self.idle_timeout or 3 * self.keepalive


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: optional tokens for /ws and /api/turn (off while ``secret`` is empty)."""

    secret: str = ""  # HMAC-SHA256 key of the tokens; empty = no authentication


@dataclass(frozen=True)
class TurnConfig:
    """``[turn]``: the built-in TURN relay and the credentials /api/turn hands out."""

    public_ip: str = ""  # empty: /api/turn uses the host name the client used
    port: int = 19302
    tls_port: int = 5349  # 0 = TURN over TLS off
    bind: str = "::"  # IPv6 and IPv4: dual-stack, or a socket per family
    realm: str = "flutter-webrtc"
    secret: str = ""  # empty: generated and kept in a file beside the config
    ttl: int = 86400  # seconds, >= 60
    min_port: int = 49152  # relay ports: the IANA dynamic range (RFC 6335 §6)
    max_port: int = 65535  # >= min_port
    users: tuple[tuple[str, str], ...] = ()  # static long-term credentials (name, password)
    denied_peer_ip: tuple[str, ...] = ()  # CIDRs added to the built-in peer deny list
    allowed_peer_ip: tuple[str, ...] = ()  # CIDRs exempt from every peer deny rule
    user_quota: int = 10  # live allocations per username, 0 = unlimited
    ip_quota: int = 20  # live allocations per client IP, 0 = unlimited
    total_quota: int = 1000  # live allocations in all, 0 = unlimited
    unauth_rate: int = 10  # unauthenticated UDP replies per second per client IP, 0 = off
    unauth_burst: int = 20  # ... in a burst, >= 1
    max_permissions: int = 64  # per allocation, 1 .. 4096
    max_channels: int = 64  # per allocation, 1 .. 4096 (all channel numbers, RFC 8656 §12)
    max_lifetime: int = 3600  # seconds an allocation may ask for (RFC 8656 §7.2)
    default_lifetime: int = 600  # seconds, when none is asked for; 60 <= this <= max_lifetime
    # Other TURN servers sharing the secret (flaskrtc or coturn): their URIs, after ours, in
    # every /api/turn answer.
    servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: several flaskrtc processes sharing their peers through Redis."""

    redis_url: str = ""  # redis://host:port/db or unix:///path; empty = one process, no Redis
    heartbeat: float = 1.0  # seconds between refreshes of this instance's key (TTL: 3 beats)

    @property
    def instance_ttl(self) -> float:
        """Seconds an instance stays alive in Redis without a heartbeat."""
        return 3 * self.heartbeat


# Loopback only: a scraper on the host itself; anything else must be allowed by name.
DEFAULT_METRICS_ALLOW = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint /metrics (off by default; /healthz and
    /readyz are always served)."""

    enabled: bool = False  # false: /metrics answers 404
    allow: tuple[str, ...] = DEFAULT_METRICS_ALLOW  # client CIDRs; empty: any address
    token: str = ""  # set: /metrics needs "Authorization: Bearer <token>"


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    general: GeneralConfig
    turn: TurnConfig
    log_level: str = "INFO"  # DEBUG INFO WARNING ERROR
    config_path: Path | None = None  # the file read, None if none existed
    config_dir: Path = Path("configs")  # where generated files (secret) go
    auth: AuthConfig = AuthConfig()  # optional tokens; off by default
    cluster: ClusterConfig = ClusterConfig()  # off (no Redis) by default
    metrics: MetricsConfig = MetricsConfig()  # /metrics off by default


class ConfigError(Exception):
    """A bad configuration value; ``str()`` is one line fit for stderr."""

    def __init__(self, key: str, value: str, expected: str, source: str | None = None) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        self.source = source  # where the value came from, when that helps find it
        super().__init__(key, value, expected, source)

    def __str__(self) -> str:
        text = f"config error: {self.key} = {self.value!r}: expected {self.expected}"
        if self.source:
            text += f" (from {self.source})"
        # File names and OS messages may hold line breaks; the error must stay one line.
        return text.replace("\r", "\\r").replace("\n", "\\n")


# --- value parsers: each returns the converted value or raises ValueError(expected) ---------

_INT_RE = re.compile(r"[0-9]+")
# Letters, digits, hyphens, underscores and dots: what a certificate SAN and a URL accept.
_HOST_RE = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _int_range(low: int, high: int | None) -> Callable[[str], int]:
    expected = (
        f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"
    )

    def parse(text: str) -> int:
        text = text.strip()
        # int() would also take "1_000", "+5" and non-ASCII digits; keep to plain digits.
        if not _INT_RE.fullmatch(text):
            raise ValueError(expected)
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError(expected)
        return value

    return parse


_port = _int_range(0, 65535)


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("true or false (also yes/no, on/off, 1/0)")


def _keepalive(text: str) -> float:
    expected = "a number of seconds greater than 0 and at most 3600"
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value) or not 0 < value <= 3600:
        raise ValueError(expected)
    return value


def _idle_timeout(text: str) -> float:
    # Empty (or 0) means "three keepalive periods"; an explicit value must leave room for at
    # least one keepalive ping and its pong (checked against keepalive in _check_idle).
    expected = "seconds greater than keepalive and at most 86400, or empty for 3 keepalives"
    text = text.strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value) or not 0 <= value <= 86400:
        raise ValueError(expected)
    return value


def _rate(text: str) -> float:
    expected = "requests per second from 0 (off) to 100000"
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value) or not 0 <= value <= 100000:
        raise ValueError(expected)
    return value


MAX_WORKERS = 256


def _workers(text: str) -> int:
    """``[general] workers``: a number of processes, or ``auto`` (one per CPU)."""
    text = text.strip().lower()
    if text == "auto":
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"a number of processes from 1 to {MAX_WORKERS}, or auto")
    return int(text)


def _auth_secret(text: str) -> str:
    text = text.strip()
    # A short key makes every token guessable offline from one sample; 16 is the floor.
    if text and len(text) < 16:
        raise ValueError("empty (no authentication) or a secret of at least 16 characters")
    return text


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError("an IP address such as 0.0.0.0, 127.0.0.1 or ::") from None


def _public_ip(text: str) -> str:
    expected = (
        "an IP address clients can reach (not 0.0.0.0 or ::), or one IPv4 and one IPv6 "
        "address separated by a comma, or empty"
    )
    parts = [part.strip() for part in text.split(",")]
    if parts == [""]:
        return ""
    addresses = []
    for part in parts:
        try:
            address = ipaddress.ip_address(part)
        except ValueError:
            raise ValueError(expected) from None
        if address.is_unspecified:
            raise ValueError(expected)
        addresses.append(address)
    if len(addresses) > 2 or len({a.version for a in addresses}) != len(addresses):
        raise ValueError(expected)
    return ", ".join(str(a) for a in addresses)


def public_ips(public_ip: str) -> list[str]:
    """The addresses of a validated ``[turn] public_ip`` (none, one, or IPv4 and IPv6)."""
    return [part.strip() for part in public_ip.split(",") if part.strip()]


def _domain(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST_RE.fullmatch(text):
        raise ValueError("a host name (letters, digits, '-', '.') or an IP address")
    return text


def _non_empty(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if not text:
            raise ValueError(what)
        return text

    return parse


def _any_text(text: str) -> str:
    return text.strip()


def _users(text: str) -> tuple[tuple[str, str], ...]:
    expected = "comma-separated name:password pairs"
    if not text.strip():
        return ()
    users: list[tuple[str, str]] = []
    for number, item in enumerate(text.split(","), 1):
        # Split at the first colon: names never hold one, so they cannot pass for TURN REST
        # usernames ("expiry:user"), while passwords may.
        name, colon, password = (part.strip() for part in item.partition(":"))
        if not colon:
            raise ValueError(f"{expected} (entry {number} has no ':')")
        if not name or not password:
            missing = "name" if not name else "password"
            raise ValueError(f"{expected} (entry {number} has an empty {missing})")
        if len(name.encode()) > 508:
            # USERNAME must be fewer than 509 bytes (RFC 8489 §14.3).
            raise ValueError(f"{expected} (entry {number}: names are at most 508 bytes)")
        if any(name == known for known, _ in users):
            raise ValueError(f"{expected} (user {name!r} is listed twice)")
        users.append((name, password))
    return tuple(users)


def _mask_users(text: str) -> str:
    """``text`` with the passwords hidden: a config error must not print them."""
    return ",".join(
        f"{name}:***" if colon else "***"
        for name, colon, _ in (item.partition(":") for item in text.split(","))
    )


def _networks(text: str) -> tuple[str, ...]:
    if not text.strip():
        return ()
    networks: list[str] = []
    for item in text.split(","):
        item = item.strip()
        try:
            # strict=False: "10.1.2.3/8" means 10.0.0.0/8 rather than an error.
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(
                f"comma-separated IP addresses or CIDRs such as 10.0.0.0/8, fc00::/7 "
                f"({item!r} is neither)"
            ) from None
    return tuple(networks)


_TURN_URI_RE = re.compile(
    r"(turns?):(\[[0-9A-Fa-f:.]+\]|[^:/?\[\]\s]+)(?::(\d{1,5}))?(?:\?transport=(udp|tcp))?"
)


def _uri_host_ok(host: str) -> bool:
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    return bool(_HOST_RE.fullmatch(host))


def _turn_servers(text: str) -> tuple[str, ...]:
    """``[turn] servers``: ``host:port`` items (a TURN server over UDP and TCP there) or full
    ``turn:``/``turns:`` URIs (RFC 7065), comma-separated; the URIs /api/turn adds."""
    expected = (
        "comma-separated host:port (e.g. turn2.example.org:3478, [2001:db8::7]:3478) or "
        "turn:/turns: URIs (e.g. turns:turn2.example.org:5349?transport=tcp)"
    )
    uris: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith(("turn:", "turns:")):
            match = _TURN_URI_RE.fullmatch(item)
            if match is None or not _uri_host_ok(match.group(2)):
                raise ValueError(f"{expected} ({item!r} is not such a URI)")
            if match.group(3) is not None and not 0 < int(match.group(3)) < 65536:
                raise ValueError(f"{expected} ({item!r}: port out of range)")
            uris.append(item)
            continue
        host, colon, port = item.rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65536 or not _uri_host_ok(host):
            raise ValueError(f"{expected} ({item!r} is neither)")
        uris += [f"turn:{host}:{int(port)}?transport=udp", f"turn:{host}:{int(port)}?transport=tcp"]
    return tuple(uris)


_REDIS_URL_EXPECTED = (
    "empty (no cluster), redis://[:password@]host[:port][/db] or unix:///path/to/redis.sock"
)


def _redis_url(text: str) -> str:
    """``[cluster] redis_url``: checked here, so a typo stops the start instead of being retried
    for ever; TLS (rediss://) is not offered (the connection would not be cooperative)."""
    text = text.strip()
    if not text:
        return ""
    try:
        url = urlsplit(text)
        port = url.port  # ValueError when out of range or not a number
    except ValueError:
        raise ValueError(_REDIS_URL_EXPECTED) from None
    if url.scheme == "rediss":
        raise ValueError(_REDIS_URL_EXPECTED + " (rediss://, Redis over TLS, is not supported)")
    if url.scheme == "redis":
        db = url.path.strip("/")
        if not url.hostname or (db and not db.isdigit()) or port == 0:
            raise ValueError(_REDIS_URL_EXPECTED)
    elif url.scheme == "unix":
        if not url.path:
            raise ValueError(_REDIS_URL_EXPECTED)
    else:
        raise ValueError(_REDIS_URL_EXPECTED)
    return text


def _mask_url(text: str) -> str:
    """``text`` with a password in it hidden: a config error must not print it."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", text)


def _reload_watch(text: str) -> float:
    expected = "seconds between checks from 1 to 86400, or 0 (off)"
    try:
        value = float(text.strip() or 0)
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value) or not (value == 0 or 1 <= value <= 86400):
        raise ValueError(expected)
    return value


def _heartbeat(text: str) -> float:
    expected = "seconds from 0.1 to 60"
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value) or not 0.1 <= value <= 60:
        raise ValueError(expected)
    return value


def _metrics_allow(text: str) -> tuple[str, ...]:
    """``[metrics] allow``: CIDRs as for the peer lists; empty means any address (then a
    token should guard /metrics)."""
    return _networks(text)


def _metrics_token(text: str) -> str:
    text = text.strip()
    # It is compared whole (hmac.compare_digest), but a short one is guessed online.
    if text and len(text) < 16:
        raise ValueError("empty (no token) or a token of at least 16 characters")
    if any(ord(char) < 33 or ord(char) > 126 for char in text):
        raise ValueError("printable ASCII without spaces (it is sent in an HTTP header)")
    return text


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError("one of " + ", ".join(LOG_LEVELS) + " (any case)")
    return level


def _log_format(text: str) -> str:
    word = text.strip().lower()
    if word not in LOG_FORMATS:
        raise ValueError("one of " + ", ".join(LOG_FORMATS))
    return word


# Every key a file, the environment or an override may set: "section.name" -> parser.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "general.domain": _domain,
    "general.cert": _non_empty("a certificate file path"),
    "general.key": _non_empty("a private key file path"),
    "general.bind": _ip,
    "general.port": _port,
    "general.html_root": _non_empty("a directory path"),
    "general.tls": _bool,
    "general.keepalive": _keepalive,
    "general.max_message_size": _int_range(1024, 64 * 1024 * 1024),
    "general.idle_timeout": _idle_timeout,
    "general.max_connections": _int_range(0, None),
    "general.max_connections_per_ip": _int_range(0, None),
    "general.rate_limit": _rate,
    "general.log_level": _log_level,
    "general.workers": _workers,
    "general.log_format": _log_format,
    "general.trusted_proxies": _networks,
    "general.reload_watch": _reload_watch,
    "turn.public_ip": _public_ip,
    "turn.port": _port,
    "turn.tls_port": _port,
    "turn.bind": _ip,
    "turn.realm": _non_empty("a non-empty realm name"),
    "turn.secret": _any_text,
    "turn.ttl": _int_range(60, None),
    # Below 1024 a relay port would need root and collide with well-known services.
    "turn.min_port": _int_range(1024, 65535),
    "turn.max_port": _int_range(1024, 65535),
    "turn.users": _users,
    "turn.denied_peer_ip": _networks,
    "turn.allowed_peer_ip": _networks,
    "turn.user_quota": _int_range(0, None),
    "turn.ip_quota": _int_range(0, None),
    "turn.total_quota": _int_range(0, None),
    "turn.unauth_rate": _int_range(0, 100000),
    "turn.unauth_burst": _int_range(1, 100000),
    "turn.max_permissions": _int_range(1, 4096),
    # RFC 8656 §12 allows channel numbers 0x4000-0x4FFF only: 4096 channels at most.
    "turn.max_channels": _int_range(1, 4096),
    "turn.max_lifetime": _int_range(60, 86400),
    "turn.default_lifetime": _int_range(60, 86400),
    "turn.servers": _turn_servers,
    "auth.secret": _auth_secret,
    "cluster.redis_url": _redis_url,
    "cluster.heartbeat": _heartbeat,
    "metrics.enabled": _bool,
    "metrics.allow": _metrics_allow,
    "metrics.token": _metrics_token,
}
_SECTIONS = ("general", "turn", "auth", "cluster", "metrics")
# How a value is shown in an error, for keys that hold secrets.
_MASKS: dict[str, Callable[[str], str]] = {
    "turn.users": _mask_users,
    "auth.secret": lambda text: "***",
    "cluster.redis_url": _mask_url,
    "metrics.token": lambda text: "***",
}
# (lower key, upper key): the lower value must not exceed the upper one.
_ORDERED = (
    ("turn.min_port", "turn.max_port"),
    ("turn.default_lifetime", "turn.max_lifetime"),
)


_SECTION_NAMES = "[general], [turn], [auth], [cluster] or [metrics]"


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


# Raw, unparsed settings: canonical key -> (text, key as the user named it, source or "").
_Raw = dict[str, tuple[str, str, str]]


def _ini_problem(err: configparser.Error) -> str:
    """A one-line account of a syntax error (configparser's own messages span lines)."""
    if isinstance(err, configparser.MissingSectionHeaderError):
        return f"line {err.lineno} comes before any [section] header"
    if isinstance(err, configparser.ParsingError) and err.errors:
        lineno, line = err.errors[0]
        return f"line {lineno} is not 'key = value': {line.strip()!r}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _read_file(path: Path) -> _Raw:
    """The raw values of an INI file."""
    parser = configparser.ConfigParser(interpolation=None)
    source = str(path)
    try:
        with path.open(encoding="utf-8-sig") as handle:
            parser.read_file(handle, source=source)
    except FileNotFoundError:
        raise ConfigError("config", source, "an existing config file") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError("config", source, f"a readable UTF-8 file ({reason})") from None
    except configparser.Error as err:
        raise ConfigError(
            "config",
            source,
            "an INI file with [general], [turn], [auth], [cluster], [metrics] "
            f"({_ini_problem(err)})",
        ) from None
    if parser.defaults():
        # [DEFAULT] keys leak into every section; nothing here wants that.
        raise ConfigError("section", "DEFAULT", _SECTION_NAMES, source)
    values: _Raw = {}
    for section in parser.sections():
        if section not in _SECTIONS:
            raise ConfigError("section", section, _SECTION_NAMES, source)
        for name, value in parser.items(section):
            key = f"{section}.{name}"
            if key not in _PARSERS:
                prefix = section + "."
                known = ", ".join(k[len(prefix) :] for k in _PARSERS if k.startswith(prefix))
                raise ConfigError(key, value, f"a known [{section}] key: {known}", source)
            values[key] = (value, key, source)
    return values


def _read_environ(environ: Mapping[str, str]) -> _Raw:
    values: _Raw = {}
    known = {_env_name(key): key for key in _PARSERS}
    known[ENV_PREFIX + "LOG_LEVEL"] = "general.log_level"
    # Sorted, so FLASKRTC_LOG_LEVEL predictably wins over FLASKRTC_GENERAL_LOG_LEVEL.
    for name in sorted(environ):
        if name in known:
            key = known[name]
            values[key] = (environ[name], key, f"environment variable {name}")
        elif any(name.startswith(f"{ENV_PREFIX}{section.upper()}_") for section in _SECTIONS):
            # A typo such as FLASKRTC_GENERAL_PROT would otherwise be silently ignored.
            raise ConfigError(
                name,
                environ[name],
                "a known FLASKRTC_GENERAL_*, _TURN_*, _AUTH_*, _CLUSTER_* or _METRICS_* name",
            )
    return values


def _check_order(parsed: Mapping[str, Any], raw: _Raw) -> None:
    """Rules between two keys, checked on the values that won (file, environment or flag)."""
    defaults = {"general": GeneralConfig(), "turn": TurnConfig()}
    for low_key, high_key in _ORDERED:
        values = []
        for key in (low_key, high_key):
            section, name = key.split(".")
            values.append(parsed.get(key, getattr(defaults[section], name)))
        low, high = values
        if low <= high:
            continue
        text, named, source = raw.get(low_key, (str(low), low_key, ""))
        high_source = raw[high_key][2] if high_key in raw else ""
        # Say where the other value came from when the error's own source does not.
        where = f", from {high_source}" if high_source and high_source != source else ""
        raise ConfigError(named, text, f"at most {high_key} ({high}{where})", source or None)


def _check_idle(parsed: Mapping[str, Any], raw: _Raw) -> None:
    """An explicit idle_timeout must exceed keepalive: a ping must be able to come back."""
    idle = parsed.get("general.idle_timeout", 0.0)
    keepalive = parsed.get("general.keepalive", GeneralConfig().keepalive)
    if idle and idle <= keepalive:
        text, named, source = raw["general.idle_timeout"]
        raise ConfigError(
            named, text, f"more than general.keepalive ({keepalive:g}), or empty", source or None
        )


def _check_workers(parsed: Mapping[str, Any], raw: _Raw, platform: str) -> None:
    """More than one worker: only where the kernel balances SO_REUSEPORT sockets (Linux),
    and with room in the relay port range for each worker's share."""
    workers = parsed.get("general.workers", 1)
    if workers <= 1:
        return
    text, named, source = raw["general.workers"]
    if not platform.startswith("linux"):
        raise ConfigError(
            named,
            text,
            "1 on this OS: only Linux spreads connections and datagrams across the workers' "
            "SO_REUSEPORT sockets (macOS and Windows give them all to one)",
            source or None,
        )
    if not parsed.get("cluster.redis_url"):
        raise ConfigError(
            named,
            text,
            "1 without [cluster] redis_url: each worker is a server of its own, and only "
            "the cluster (Redis) lets peers on different workers see and call each other; "
            "set [cluster] redis_url = redis://HOST:6379/0",
            source or None,
        )
    low = parsed.get("turn.min_port", TurnConfig.min_port)
    high = parsed.get("turn.max_port", TurnConfig.max_port)
    if (high - low + 1) // workers < 2:
        raise ConfigError(
            named,
            text,
            f"at most {(high - low + 1) // 2}: each worker relays on its own share of "
            f"turn.min_port..turn.max_port ({low}-{high}), two ports at least",
            source or None,
        )


def load_config(
    path: str | None, environ: Mapping[str, str], overrides: Mapping[str, str]
) -> Config:
    """Read, merge and validate the configuration; raise :class:`ConfigError` on a bad value.

    ``path`` None means ``configs/config.ini`` if it exists, else the built-in defaults.
    """
    config_path: Path | None
    if path is None:
        config_path = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
    else:
        config_path = Path(path)
        if config_path.is_dir():
            raise ConfigError("config", path, "a config file, not a directory")
        if not config_path.exists():
            raise ConfigError("config", path, "an existing config file")

    raw: _Raw = {}
    if config_path is not None:
        raw.update(_read_file(config_path))
    raw.update(_read_environ(environ))
    for key, value in overrides.items():
        # log_level is a top-level Config field but lives in [general] in the file.
        canonical = "general.log_level" if key == "log_level" else key
        if canonical not in _PARSERS:
            raise ConfigError(key, value, "a known setting: log_level, " + ", ".join(_PARSERS))
        raw[canonical] = (value, key, "")

    parsed: dict[str, Any] = {}
    for key, (text, named, source) in raw.items():
        try:
            parsed[key] = _PARSERS[key](text)
        except ValueError as err:
            shown = _MASKS[key](text) if key in _MASKS else text
            raise ConfigError(named, shown, str(err), source or None) from None
    _check_order(parsed, raw)
    _check_idle(parsed, raw)
    _check_workers(parsed, raw, sys.platform)

    def section(name: str) -> dict[str, Any]:
        prefix = name + "."
        return {
            key[len(prefix) :]: value
            for key, value in parsed.items()
            if key.startswith(prefix) and key != "general.log_level"
        }

    return Config(
        general=GeneralConfig(**section("general")),
        turn=TurnConfig(**section("turn")),
        auth=AuthConfig(**section("auth")),
        cluster=ClusterConfig(**section("cluster")),
        metrics=MetricsConfig(**section("metrics")),
        log_level=parsed.get("general.log_level", "INFO"),
        config_path=config_path,
        config_dir=config_path.parent if config_path is not None else DEFAULT_CONFIG_DIR,
    )


def ensure_turn_secret(config: Config) -> tuple[Config, bool]:
    """Fill in ``turn.secret`` from ``<config_dir>/turn_secret``, generating it if need be.

    Returns the (possibly updated) config and whether a secret was generated now.
    """
    if config.turn.secret:
        return config, False
    path = config.config_dir / SECRET_FILE_NAME
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        secret = ""
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError("turn.secret", "", f"a secret, or a readable {path} ({reason})") from None
    generated = False
    if not secret:
        secret = secrets.token_urlsafe(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, (secret + "\n").encode(), 0o600)
        except OSError as err:
            raise ConfigError(
                "turn.secret",
                "",
                f"a secret, or a writable {path} to keep a generated one ({err.strerror or err})",
            ) from None
        generated = True
    turn = dataclasses.replace(config.turn, secret=secret)
    return dataclasses.replace(config, turn=turn), generated
