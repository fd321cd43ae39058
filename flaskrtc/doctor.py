"""``flaskrtc doctor``: check a setup and say what to fix.

Reads the configuration the server would read (nothing is generated or written), then runs
checks, each a function returning a :class:`Row`: the config, the certificate, the ports,
the relay port range, the open-files limit, ``[turn] public_ip``, and, against the running
server, ``/api/turn``, the clock and a TURN self-test per transport (two allocations relay a
packet to each other through the server and back). :func:`render` prints the rows as a
table with the fixes; :func:`exit_code` is 1 when a row failed.

Plain standard library with blocking sockets and timeouts: doctor is a short command, not
a gevent server. The TURN protocol logic is the sans-I/O :mod:`flaskrtc.turn.client`; this
module only moves its bytes (UDP datagrams, or STUN frames over TCP/TLS).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import errno
import http.client
import ipaddress
import json
import os
import secrets
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flaskrtc import __version__
from flaskrtc.config import SECRET_FILE_NAME, Config, ConfigError, load_config, public_ips
from flaskrtc.turn.addressing import url_host
from flaskrtc.turn.client import (
    DataIndication,
    Request,
    Retry,
    Success,
    TurnClient,
    TurnClientError,
)
from flaskrtc.turn.credentials import rest_password
from flaskrtc.turn.stun import Attr, StunError, next_frame_length

Address = tuple[str, int]

DEFAULT_TIMEOUT = 3.0  # seconds per network step
CERT_WARN_DAYS = 14
CLOCK_FAIL_SECONDS = 30.0
# File descriptors besides the relays: listeners, the signaling WebSockets, logs.
FD_HEADROOM = 100
# RFC 8489 §6.2.1: the first retransmission of a request over UDP after 500 ms, then doubling.
INITIAL_RTO = 0.5
# Addresses clients on the internet cannot reach (RFC 1918, RFC 6598 CGNAT, RFC 4193 ULA).
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_API_PATH = "/api/turn?service=turn&username=doctor"


class Status(enum.Enum):
    """The result of one check; only FAIL makes doctor exit 1."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Row:
    """One line of the table: the check, its result, a short detail, and the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""


# --- the table ------------------------------------------------------------------------------


def render(rows: Iterable[Row], header: str = "") -> str:
    """The table, then one line per warned or failed row with its fix, then a summary."""
    rows = list(rows)
    width = max([len("check"), *(len(row.name) for row in rows)])
    lines = [header, ""] if header else []
    lines.append(f"{'check':<{width}}  result  detail")
    for row in rows:
        lines.append(f"{row.name:<{width}}  {row.status.value:<6}  {row.detail}".rstrip())
    fixes = [row for row in rows if row.status in (Status.WARN, Status.FAIL) and row.fix]
    if fixes:
        lines += ["", "To fix:"]
        lines += [f"  {row.name} ({row.status.value}): {row.fix}" for row in fixes]
    counts = {status: sum(row.status is status for row in rows) for status in Status}
    lines += [
        "",
        f"{counts[Status.OK]} ok, {counts[Status.WARN]} warning(s), "
        f"{counts[Status.FAIL]} failed, {counts[Status.SKIP]} skipped",
    ]
    return "\n".join(lines) + "\n"


def exit_code(rows: Iterable[Row]) -> int:
    """1 when any check failed, else 0 (warnings do not fail)."""
    return 1 if any(row.status is Status.FAIL for row in rows) else 0


# --- config ---------------------------------------------------------------------------------


def check_config(
    path: str | None, environ: Mapping[str, str], overrides: Mapping[str, str]
) -> tuple[Row, Config | None]:
    """Load the config as the server does; the Config comes back with the TURN secret filled
    in when one exists (doctor never generates it), or None when the config is invalid."""
    fix = (
        "correct that value (in the file, the FLASKRTC_* variable or the flag): the server "
        "refuses to start with it (exit code 2)"
    )
    try:
        config = load_config(path, environ, overrides)
    except ConfigError as err:
        return Row("config", Status.FAIL, str(err), fix), None
    where = str(config.config_path) if config.config_path else "built-in defaults (no file)"
    if config.turn.secret:
        return Row("config", Status.OK, f"{where}; TURN secret set in the config"), config
    secret_path = config.config_dir / SECRET_FILE_NAME
    try:
        secret = secret_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        secret = ""
    except (OSError, UnicodeDecodeError) as err:
        # The message the server would stop with (config.ensure_turn_secret).
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        error = ConfigError("turn.secret", "", f"a secret, or a readable {secret_path} ({reason})")
        return Row("config", Status.FAIL, str(error), fix), None
    if not secret:
        detail = f"{where}; TURN secret: generated into {secret_path} on first start"
        return Row("config", Status.OK, detail), config
    turn = dataclasses.replace(config.turn, secret=secret)
    detail = f"{where}; TURN secret from {secret_path}"
    return Row("config", Status.OK, detail), dataclasses.replace(config, turn=turn)


# --- certificate ----------------------------------------------------------------------------


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    # not_valid_after_utc is cryptography >= 42; setup.py allows 41.
    value = getattr(cert, "not_valid_after_utc", None)
    if isinstance(value, datetime.datetime):
        return value
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _not_before(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    if isinstance(value, datetime.datetime):
        return value
    return cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def san_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of the certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = [str(name).lower() for name in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def covers(cert: x509.Certificate, host: str) -> bool:
    """Whether the certificate's subjectAltName names ``host`` (RFC 6125 §6.4: the CN is not
    looked at; a wildcard stands for exactly one leftmost label)."""
    host = host.strip().rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    names = san_names(cert)
    if ip is not None:
        return str(ip) in names
    for name in names:
        name = name.rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host:
            label, rest = host.split(".", 1)
            if label and rest == name[2:]:
                return True
    return False


def check_certificate(config: Config, now: datetime.datetime) -> Row:
    """The TLS certificate: readable, parses, matches its key, valid now, covers the domain."""
    general, name = config.general, "certificate"
    if not general.tls and not config.turn.tls_port:
        return Row(name, Status.SKIP, "not used: [general] tls is off and [turn] tls_port is 0")
    cert_path, key_path = Path(general.cert), Path(general.key)
    if not cert_path.exists():
        source = f" from the existing key {key_path}" if key_path.exists() else ""
        return Row(
            name,
            Status.OK,
            f"{cert_path}: none yet; will be generated on first start (self-signed{source})",
        )
    if not key_path.exists():
        return Row(
            name,
            Status.FAIL,
            f"{cert_path} exists but its key {key_path} does not",
            "restore the key or point [general] key at it; or delete the certificate so that "
            "a new self-signed pair is generated (the server will not overwrite it)",
        )
    readable = "make it readable by the user that runs flaskrtc"
    try:
        pem = cert_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as err:
        return Row(name, Status.FAIL, f"cannot read {err.filename}: {err.strerror}", readable)
    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
    except ValueError as err:
        return Row(
            name,
            Status.FAIL,
            f"{cert_path} does not parse as a PEM certificate ({err})",
            "point [general] cert at a PEM file (-----BEGIN CERTIFICATE-----)",
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        return Row(
            name,
            Status.FAIL,
            f"{key_path} does not load as an unencrypted PEM private key ({err})",
            "point [general] key at the certificate's PEM key, without a passphrase",
        )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return Row(
            name,
            Status.FAIL,
            f"{key_path} is not the key of {cert_path}",
            "point [general] cert and key at a matching pair",
        )
    self_signed = cert.issuer == cert.subject
    regenerate = (
        f"delete {cert_path} and {key_path}: flaskrtc generates a new self-signed pair on the "
        "next start"
    )
    not_before, not_after = _not_before(cert), _not_after(cert)
    until = not_after.strftime("%Y-%m-%d")
    if now < not_before:
        return Row(
            name,
            Status.FAIL,
            f"{cert_path} is not valid before {not_before:%Y-%m-%d %H:%M} UTC",
            "check this host's clock (clients reject it as well)",
        )
    if now >= not_after:
        fix = regenerate if self_signed else "renew it and restart flaskrtc"
        return Row(name, Status.FAIL, f"{cert_path} expired on {until}", fix)
    domain = general.domain
    if domain and not covers(cert, domain):
        names = ", ".join(san_names(cert)) or "no subjectAltName"
        fix = (
            regenerate + f" for {domain}"
            if self_signed
            else f"get a certificate for {domain}, or set [general] domain to a name it covers"
        )
        return Row(
            name,
            Status.FAIL,
            f"{cert_path} does not cover [general] domain {domain} ({names})",
            fix,
        )
    days = (not_after - now).days
    covered = f"covers {domain}, " if domain else ""
    detail = f"{cert_path}: {covered}{days} days left (until {until})"
    if days < CERT_WARN_DAYS:
        return Row(name, Status.WARN, detail, regenerate if self_signed else "renew it soon")
    return Row(name, Status.OK, detail)


# --- ports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortSpec:
    """A port the server listens on: row name, protocol, bind address, number, config key."""

    name: str
    proto: str  # "tcp" or "udp"
    bind: str
    port: int
    key: str  # "[general] port", for the fix


def port_specs(config: Config) -> list[PortSpec]:
    """Every port the server would listen on."""
    general, turn = config.general, config.turn
    scheme = "https" if general.tls else "http"
    specs = [
        PortSpec(f"{scheme} port", "tcp", general.bind, general.port, "[general] port"),
        PortSpec("turn udp port", "udp", turn.bind, turn.port, "[turn] port"),
        PortSpec("turn tcp port", "tcp", turn.bind, turn.port, "[turn] port"),
    ]
    if turn.tls_port:
        specs.append(PortSpec("turn tls port", "tcp", turn.bind, turn.tls_port, "[turn] tls_port"))
    return specs


def try_bind(proto: str, bind: str, port: int) -> OSError | None:
    """Bind (and release) ``bind``:``port`` as the server would; the error, or None if free."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM and os.name != "nt":
                # As the server does; on Windows SO_REUSEADDR would let the bind steal the port.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind, port))
    except OSError as err:
        return err
    return None


def _overlap(a: PortSpec, b: PortSpec) -> bool:
    wildcard = ("0.0.0.0", "::")
    return (
        a.proto == b.proto
        and a.port == b.port != 0
        and (a.bind == b.bind or a.bind in wildcard or b.bind in wildcard)
    )


def check_port(
    spec: PortSpec, owner: Callable[[], str | None], others: Iterable[PortSpec] = ()
) -> Row:
    """Whether the server could listen on ``spec``: free, held by flaskrtc itself (``owner``
    says how it knows, or None), or held by another program."""
    where = f"{spec.port}/{spec.proto}"
    if spec.port == 0:
        return Row(spec.name, Status.OK, "0: the server picks a free port at start")
    for other in others:
        if other is not spec and _overlap(spec, other):
            return Row(
                spec.name,
                Status.FAIL,
                f"{where} is also {other.key}'s port",
                f"give {spec.key} and {other.key} different ports",
            )
    error = try_bind(spec.proto, spec.bind, spec.port)
    if error is None:
        return Row(spec.name, Status.OK, f"{where} on {spec.bind}: free")
    if error.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
        how = owner()
        if how is not None:
            return Row(spec.name, Status.OK, f"{where}: in use by flaskrtc ({how})")
        return Row(
            spec.name,
            Status.FAIL,
            f"port {where} is used by another program",
            f"stop that program (`ss -lntup | grep {spec.port}` names it) or set {spec.key} "
            "to a free port",
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return Row(
            spec.name,
            Status.FAIL,
            f"{where}: permission denied",
            "ports below 1024 need root or CAP_NET_BIND_SERVICE: use a port from 1024 up",
        )
    if error.errno == errno.EADDRNOTAVAIL:
        section = spec.key.split()[0]
        return Row(
            spec.name,
            Status.FAIL,
            f"{spec.bind} is not an address of this host",
            f"set {section} bind to an address of this host, or 0.0.0.0",
        )
    return Row(spec.name, Status.FAIL, f"{where} on {spec.bind}: {error.strerror or error}")


# --- relay ports and open files -------------------------------------------------------------


def check_relay_ports(config: Config) -> Row:
    """The relay port range against ``[turn] total_quota``: each allocation needs a port."""
    turn = config.turn
    size = turn.max_port - turn.min_port + 1
    span = f"{turn.min_port}-{turn.max_port}"
    if not turn.total_quota:
        detail = f"{span}: {size} ports; total_quota 0 (unlimited): at most {size} allocations"
        return Row("relay ports", Status.OK, detail)
    if size < turn.total_quota:
        low = min(turn.min_port, 65536 - turn.total_quota)
        high = low + turn.total_quota - 1
        return Row(
            "relay ports",
            Status.FAIL,
            f"{span} is {size} ports, fewer than total_quota {turn.total_quota}: "
            "each allocation needs a relay port",
            f"widen [turn] min_port/max_port to at least {turn.total_quota} ports "
            f"(e.g. {low}-{high}) or lower [turn] total_quota to {size}",
        )
    return Row("relay ports", Status.OK, f"{span}: {size} ports for total_quota {turn.total_quota}")


def nofile_limits() -> tuple[int, int | None] | None:
    """(soft, hard) RLIMIT_NOFILE, hard None when unlimited; None where there is none."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, (None if hard == resource.RLIM_INFINITY else hard)


def check_open_files(config: Config, limits: tuple[int, int | None] | None) -> Row:
    """The open-files hard limit (the server raises its soft limit to it) against what
    ``total_quota`` allocations need: a relay socket each, and a connection over TCP/TLS."""
    name = "open files"
    if limits is None:
        return Row(name, Status.SKIP, "no open-files limit on this system")
    _soft, hard = limits
    turn = config.turn
    allocations = turn.total_quota or (turn.max_port - turn.min_port + 1)
    need = 2 * allocations + FD_HEADROOM
    if hard is None:
        return Row(name, Status.OK, "hard limit: unlimited")
    detail = f"hard limit {hard}, {allocations} allocations need about {need}"
    if hard < need:
        return Row(
            name,
            Status.WARN,
            detail + " (a relay socket each, and a connection each over TCP/TLS)",
            "raise the hard limit (`ulimit -Hn`, LimitNOFILE= in a systemd unit) or lower "
            f"[turn] total_quota to {max(1, (hard - FD_HEADROOM) // 2)}",
        )
    return Row(name, Status.OK, detail)


# --- public_ip ------------------------------------------------------------------------------


def address_is_local(ip: str) -> bool:
    """Whether this host owns ``ip``: a UDP socket can bind to it (no packet is sent)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, 0))
    except OSError:
        return False
    return True


def check_public_ip(config: Config, is_local: Callable[[str], bool] = address_is_local) -> Row:
    """``[turn] public_ip``: unset, an address of this host, or a NAT's; and reachable from
    the internet or not."""
    name = "public ip"
    ips = public_ips(config.turn.public_ip)
    if not ips:
        return Row(name, Status.OK, "not set: relays use the address each client reached")
    rows = [_check_one_public_ip(config, ip, is_local) for ip in ips]
    if len(rows) == 1:
        return rows[0]
    # One IPv4 and one IPv6 address: one row, as bad as the worse of the two.
    order = [Status.OK, Status.SKIP, Status.WARN, Status.FAIL]
    worst = max(rows, key=lambda row: order.index(row.status)).status
    return Row(
        name,
        worst,
        "; ".join(row.detail for row in rows),
        "; ".join(row.fix for row in rows if row.fix),
    )


def _check_one_public_ip(config: Config, ip: str, is_local: Callable[[str], bool]) -> Row:
    turn, name = config.turn, "public ip"
    address = ipaddress.ip_address(ip)
    tls = f", TCP {turn.tls_port}" if turn.tls_port else ""
    forward = (
        f"forward UDP+TCP {turn.port}{tls} and UDP {turn.min_port}-{turn.max_port} "
        f"from {ip} to this host"
    )
    set_it = "set [turn] public_ip to the address clients reach this host at, or leave it empty"
    if address.is_loopback:
        return Row(
            name, Status.WARN, f"{ip} is loopback: clients on other hosts cannot reach it", set_it
        )
    local = is_local(ip)
    nat = "" if local else f"; not an address of this host: a 1:1 NAT is assumed: {forward}"
    if address.is_link_local or any(address in net for net in PRIVATE_NETWORKS):
        return Row(
            name,
            Status.WARN,
            f"{ip} is a private address: clients on the internet cannot reach it{nat}",
            "fine for clients on the same network; for clients on the internet " + set_it,
        )
    if not local:
        return Row(
            name,
            Status.WARN,
            f"{ip} is not an address of this host: a 1:1 NAT is assumed: {forward}",
            f"make sure the NAT forwards those ports; if {ip} is not this host's public address, "
            "correct [turn] public_ip",
        )
    return Row(name, Status.OK, f"{ip}: an address of this host")


# --- the running server: /api/turn and the clock --------------------------------------------


@dataclass(frozen=True)
class ServerAnswer:
    """What ``/api/turn`` at ``url`` answered (``error`` set when nothing usable came)."""

    url: str
    error: str = ""
    status: int = 0
    body: Any = None
    date: str | None = None
    received: float = 0.0  # time.time() when the answer was in
    elapsed: float = 0.0  # seconds the request took

    @property
    def credentials(self) -> dict[str, Any] | None:
        """The body, if it is /api/turn's JSON (username, password, ttl, uris)."""
        body = self.body
        if (
            self.status == 200
            and isinstance(body, dict)
            and isinstance(body.get("username"), str)
            and isinstance(body.get("password"), str)
            and isinstance(body.get("uris"), list)
        ):
            return body
        return None


def _local_host(bind: str) -> str:
    """Where to reach a server bound on ``bind`` from this host."""
    # "::" is dual-stack by default (or IPv4 alone on a host without IPv6): 127.0.0.1 works.
    return {"0.0.0.0": "127.0.0.1", "::": "127.0.0.1"}.get(bind, bind)


def default_url(config: Config) -> str | None:
    """The server's base URL from the config, None when its port is 0 (picked at start)."""
    general = config.general
    if not general.port:
        return None
    scheme = "https" if general.tls else "http"
    return f"{scheme}://{url_host(_local_host(general.bind))}:{general.port}"


def _insecure_context() -> ssl.SSLContext:
    # The certificate has its own row; a self-signed one must not hide the live checks.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _describe(err: BaseException, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer in {timeout:g} s"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed ({err.reason or err})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def fetch_api_turn(
    url: str, timeout: float, clock: Callable[[], float] = time.time
) -> ServerAnswer:
    """GET ``url``/api/turn?service=turn&username=doctor (TLS not verified)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ServerAnswer(url, error="not an http:// or https:// URL")
    connection: http.client.HTTPConnection
    try:
        port = parts.port
    except ValueError:
        return ServerAnswer(url, error="bad port in the URL")
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=_insecure_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    started = clock()
    try:
        connection.request(
            "GET", parts.path.rstrip("/") + _API_PATH, headers={"User-Agent": "flaskrtc-doctor"}
        )
        response = connection.getresponse()
        data = response.read(65536)
        received = clock()
        date = response.getheader("Date")
        status = response.status
    except (OSError, http.client.HTTPException) as err:
        return ServerAnswer(url, error=_describe(err, timeout))
    finally:
        connection.close()
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    return ServerAnswer(url, "", status, body, date, received, received - started)


def check_server(
    answer: ServerAnswer, config: Config | None, start_hint: str, *, url_from_config: bool
) -> Row:
    """The server row: does /api/turn answer with credentials, signed with our secret?"""
    name = "server"
    url = answer.url
    if answer.error:
        other = "or pass --url with the address it serves" if url_from_config else "or check --url"
        how = f"start it ({start_hint}) {other}"
        return Row(name, Status.FAIL, f"no server at {url}: {answer.error}", how)
    creds = answer.credentials
    if creds is None:
        return Row(
            name,
            Status.FAIL,
            f"{url}/api/turn answered HTTP {answer.status}, not TURN credentials",
            "pass --url with the base URL of flaskrtc (the one that serves /api/turn)",
        )
    detail = (
        f"{url}: /api/turn answered in {answer.elapsed * 1000:.0f} ms, "
        f"{len(creds['uris'])} TURN URIs"
    )
    secret = config.turn.secret if config is not None else ""
    if secret and rest_password(secret, creds["username"]) != creds["password"]:
        return Row(
            name,
            Status.WARN,
            detail + "; its credentials are not made with this config's TURN secret",
            "the server runs with another config or secret: run doctor with its --config, or "
            "restart it",
        )
    return Row(name, Status.OK, detail)


def check_clock(answer: ServerAnswer) -> Row:
    """The server's clock (HTTP Date) and the expiry in its username against this host's:
    REST credentials carry their expiry time and nonces their issue time."""
    name, creds = "clock", answer.credentials
    assert creds is not None
    fix = (
        "set the clocks right (NTP, e.g. `timedatectl set-ntp true`): credentials and "
        "nonces carry times"
    )
    if answer.date is None:
        return Row(name, Status.WARN, "the server sent no Date header", "")
    try:
        server_time = parsedate_to_datetime(answer.date).timestamp()
    except (TypeError, ValueError):
        return Row(name, Status.WARN, f"unreadable Date header {answer.date!r}", "")
    # Date has whole seconds (RFC 9110 §5.6.7): the server read its clock in [Date, Date + 1).
    skew = server_time + 0.5 - answer.received
    worst = abs(skew)
    parts = [f"server clock {skew:+.1f} s off this host's (Date header)"]
    stamp, _, _user = creds["username"].partition(":")
    ttl = creds.get("ttl")
    if stamp.isdigit() and isinstance(ttl, int):
        off = round(int(stamp) - (answer.received + ttl))
        worst = max(worst, abs(off))
        parts.append(f"username expiry {off:+d} s off now + ttl {ttl}")
    else:
        parts.append(f"username {creds['username']!r} carries no expiry")
    detail = "; ".join(parts)
    if worst > CLOCK_FAIL_SECONDS:
        return Row(name, Status.FAIL, detail + f" (more than {CLOCK_FAIL_SECONDS:g} s)", fix)
    return Row(name, Status.OK, detail)


# --- links: moving STUN bytes over UDP, TCP and TLS -----------------------------------------


class Link(Protocol):
    """One client transport to the TURN server."""

    reliable: bool  # a stream: no retransmissions

    def send(self, data: bytes) -> None:
        """Send one STUN message."""
        ...

    def recv(self, timeout: float) -> bytes | None:
        """The next datagram or frame, None if none came within ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Release the socket."""
        ...


def _resolve(host: str, port: int, kind: int) -> tuple[Any, ...]:
    infos = socket.getaddrinfo(host, port, type=kind)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host}")
    return infos[0]


class UdpLink:
    """A connected UDP socket: ICMP port-unreachable comes back as ConnectionRefusedError."""

    reliable = False

    def __init__(self, host: str, port: int) -> None:
        family, kind, proto, _, address = _resolve(host, port, socket.SOCK_DGRAM)
        self.sock = socket.socket(family, kind, proto)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise

    def send(self, data: bytes) -> None:
        """Send one datagram."""
        self.sock.send(data)

    def recv(self, timeout: float) -> bytes | None:
        """One datagram, or None on timeout."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65535)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class StreamLink:
    """TCP or TLS: STUN messages are length-framed on the stream (RFC 8489 §6.2.2)."""

    reliable = True

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        """Send one message."""
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes | None:
        """The next whole frame, or None when it is not complete within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                size = next_frame_length(self.buf)
            except StunError:
                raise ConnectionError("the server sent neither STUN nor ChannelData") from None
            if size is not None and len(self.buf) >= size:
                frame = bytes(self.buf[:size])
                del self.buf[:size]
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionResetError("the server closed the connection")
            self.buf += chunk

    def close(self) -> None:
        """Close the connection (over TCP/TLS this ends the allocation, RFC 8656 §5)."""
        self.sock.close()


def open_link(transport: str, host: str, port: int, timeout: float) -> Link:
    """A link over ``transport`` ("udp", "tcp" or "tls") to ``host``:``port``."""
    if transport == "udp":
        return UdpLink(host, port)
    sock = socket.create_connection((host, port), timeout=timeout)
    # Each STUN message is one small write: Nagle's algorithm would hold it for the ACK of
    # the previous one and add the peer's delayed-ACK time (about 40 ms) to the RTT.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if transport == "tls":
        try:
            sock = _insecure_context().wrap_socket(sock, server_hostname=host)
        except OSError:
            sock.close()
            raise
    return StreamLink(sock)


def stun_binding(transport: str, host: str, port: int, timeout: float) -> Address | None:
    """The XOR-MAPPED-ADDRESS a STUN Binding request to ``host``:``port`` gets, or None when
    nothing answers STUN there."""
    try:
        link = open_link(transport, host, port, timeout)
    except OSError:
        return None
    client = TurnClient("", "")
    try:
        success = _transact(link, client, client.binding(), "Binding", timeout, time.monotonic)
    except _StepFailed:
        return None
    finally:
        link.close()
    mapped = success.message.get(Attr.XOR_MAPPED_ADDRESS)
    return (str(mapped[0]), int(mapped[1])) if isinstance(mapped, tuple) else ("", 0)


# --- the TURN self-test ---------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, step: str, kind: str, detail: str, code: int | None = None) -> None:
        super().__init__(f"{step}: {detail}")
        self.step, self.kind, self.detail, self.code = step, kind, detail, code


def _link_error(step: str, err: OSError, timeout: float, link: Link | None = None) -> _StepFailed:
    kind = "tls" if isinstance(err, ssl.SSLError) else "no_answer"
    if isinstance(err, ConnectionRefusedError) and link is not None and not link.reliable:
        # A connected UDP socket reports the ICMP error of an earlier datagram this way.
        return _StepFailed(step, kind, "port unreachable (ICMP): nothing listens there")
    return _StepFailed(step, kind, _describe(err, timeout))


def _transact(
    link: Link,
    client: TurnClient,
    request: Request,
    step: str,
    timeout: float,
    clock: Callable[[], float],
) -> Success:
    """Send ``request`` and return its success; retransmit over UDP (RFC 8489 §6.2.1),
    answer a challenge with the signed retry; raise _StepFailed after ``timeout``."""
    deadline = clock() + timeout
    rto = INITIAL_RTO
    try:
        link.send(request.data)
        resend = clock() + rto
        while True:
            now = clock()
            if now >= deadline:
                raise _StepFailed(step, "no_answer", f"no answer in {timeout:g} s")
            until = deadline if link.reliable else min(deadline, resend)
            data = link.recv(until - now)
            if data is None:
                if not link.reliable and clock() >= resend:
                    link.send(request.data)
                    rto *= 2
                    resend = clock() + rto
                continue
            try:
                event = client.receive(data)
            except TurnClientError as err:
                raise _StepFailed(step, "error", str(err), err.code) from None
            if isinstance(event, Retry):
                request = event.request
                link.send(request.data)
                rto = INITIAL_RTO
                resend = clock() + rto
            elif isinstance(event, Success) and event.request.transaction_id == (
                request.transaction_id
            ):
                return event
    except OSError as err:
        raise _link_error(step, err, timeout, link) from None


def _relay(
    sender: tuple[Link, TurnClient],
    receiver: tuple[Link, TurnClient],
    to: Address,
    step: str,
    timeout: float,
    clock: Callable[[], float],
) -> float:
    """Send a Send indication to ``to`` until the receiver gets it as a Data indication;
    the one-way time in seconds."""
    (out, client), (into, other) = sender, receiver
    token = secrets.token_hex(8)
    sent: dict[bytes, float] = {}
    deadline = clock() + timeout
    resend = clock()
    try:
        while True:
            now = clock()
            if now >= resend:
                # Over UDP a datagram may be lost: send a numbered copy every RTO.
                payload = f"flaskrtc doctor {token} {len(sent)}".encode()
                out.send(client.send_indication(to, payload))
                sent[payload] = clock()
                resend = now + INITIAL_RTO if not out.reliable else float("inf")
            if now >= deadline:
                raise _StepFailed(step, "relay_lost", f"nothing arrived in {timeout:g} s")
            data = into.recv(min(deadline, resend) - now)
            if data is None:
                continue
            try:
                event = other.receive(data)
            except TurnClientError:
                continue  # a late answer to an earlier request; not what we wait for
            if isinstance(event, DataIndication) and event.data in sent:
                return clock() - sent[event.data]
    except OSError as err:
        raise _link_error(step, err, timeout, out) from None


@dataclass(frozen=True)
class SelfTest:
    """How a TURN self-test went: the relayed addresses and RTT, or the failed step."""

    relays: tuple[Address, ...] = ()
    rtt: float | None = None  # seconds, A -> B -> A through the relays
    step: str = ""
    kind: str = ""  # no_answer, tls, error, relay_lost
    detail: str = ""
    code: int | None = None  # the STUN error code, for kind "error"

    @property
    def ok(self) -> bool:
        """Whether data went both ways."""
        return self.rtt is not None


def turn_self_test(
    connect: Callable[[], Link],
    username: str,
    password: str,
    timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
) -> SelfTest:
    """Two allocations, a permission on each for the other's relayed address, a Send
    indication from A to B's relayed address that must arrive at B as a Data indication,
    and the same back."""
    links: list[Link] = []
    clients = [TurnClient(username, password), TurnClient(username, password)]
    relays: list[Address] = []
    try:
        for _ in clients:
            try:
                links.append(connect())
            except OSError as err:
                raise _link_error("connect", err, timeout) from None
        for link, client, who in zip(links, clients, "AB", strict=True):
            _transact(link, client, client.allocate(), f"Allocate {who}", timeout, clock)
            assert client.relayed is not None
            relays.append(client.relayed)
        a, b = zip(links, clients, strict=True)
        step = "CreatePermission A for B"
        _transact(a[0], a[1], a[1].create_permission(relays[1]), step, timeout, clock)
        step = "CreatePermission B for A"
        _transact(b[0], b[1], b[1].create_permission(relays[0]), step, timeout, clock)
        there = _relay(a, b, relays[1], "relay A -> B", timeout, clock)
        back = _relay(b, a, relays[0], "relay B -> A", timeout, clock)
        return SelfTest(tuple(relays), there + back)
    except _StepFailed as failed:
        return SelfTest(tuple(relays), None, failed.step, failed.kind, failed.detail, failed.code)
    finally:
        # Fewer links than clients when a connect failed.
        for link, client in zip(links, clients, strict=False):
            if not link.reliable and client.relayed is not None:
                # Free the UDP allocation now rather than at its lifetime's end (RFC 8656 §8);
                # over TCP/TLS closing the connection does that.
                try:
                    _transact(link, client, client.refresh(0), "Refresh", min(timeout, 1), clock)
                except _StepFailed:
                    pass
            link.close()


@dataclass(frozen=True)
class TurnUri:
    """One URI of /api/turn (RFC 7065): ``turn:host:port?transport=udp``."""

    uri: str
    secure: bool
    host: str
    port: int
    transport: str  # udp or tcp

    @property
    def link(self) -> str:
        """The link type: udp, tcp or tls."""
        return "tls" if self.secure else self.transport


def parse_turn_uri(uri: str) -> TurnUri | None:
    """The parts of a turn:/turns: URI, or None if it is not one."""
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme not in ("turn", "turns"):
        return None
    rest, _, query = rest.partition("?")
    params = urllib.parse.parse_qs(query)
    secure = scheme == "turns"
    transport = params.get("transport", ["tcp" if secure else "udp"])[0].lower()
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = rest.partition(":")
    try:
        port = int(port_text) if port_text else (5349 if secure else 3478)  # RFC 7065 §3
    except ValueError:
        return None
    if not host or transport not in ("udp", "tcp") or not 0 < port < 65536:
        return None
    return TurnUri(uri, secure, host, port, transport)


def turn_row(uri: TurnUri, result: SelfTest, config: Config | None, local: str = "") -> Row:
    """The row of one transport's self-test, with the fix for the step that failed.

    ``local``: after a no-answer, the address on this host where the TURN port did answer
    STUN (then the address /api/turn hands out is the problem, not the server), else ""."""
    name = f"turn {uri.link}"
    target = f"{url_host(uri.host)}:{uri.port}"
    if result.ok:
        assert result.rtt is not None
        relays = " and ".join(f"{url_host(ip)}:{port}" for ip, port in result.relays)
        detail = f"{target}: relayed both ways via {relays}, RTT {result.rtt * 1000:.1f} ms"
        return Row(name, Status.OK, detail)
    detail = f"{target}: failed at {result.step}: {result.detail}"
    public_ip = config.turn.public_ip if config is not None else ""
    if result.kind == "tls":
        fix = "TLS handshake failed: see the certificate row ([general] cert and key)"
    elif result.kind == "no_answer":
        proto = "udp" if uri.link == "udp" else "tcp"
        if local:
            source = "[turn] public_ip" if public_ip else "the host name of --url"
            fix = (
                f"the TURN server answers at {local} but not at {target}, the address "
                f"/api/turn hands out ({source}): set [turn] public_ip to an address clients "
                "reach this host at (a NAT's address: forward the ports to this host; a NAT "
                "that does not hairpin cannot be tested from inside)"
            )
        else:
            fix = (
                f"no answer: the server is down, or {uri.port}/{proto} is closed or "
                f"firewalled between here and {uri.host}"
            )
    elif result.kind == "relay_lost":
        ports = f"{config.turn.min_port}-{config.turn.max_port}" if config else "range"
        fix = (
            "relay packet lost: the advertised relay address is not reachable from here: "
            f"check [turn] public_ip ({public_ip or 'not set'}) and that UDP {ports} is "
            "forwarded to this host and open in the firewall"
        )
    elif result.code == 401:
        fix = (
            "401: the TURN server refused /api/turn's credentials: its [turn] secret or realm "
            "differs from the server that issued them (servers behind one URL must share the "
            "secret), or the clocks differ (see the clock row)"
        )
    elif result.code == 486:
        fix = "486: allocation quota reached: raise [turn] user_quota / total_quota"
    elif result.code == 508:
        fix = "508: no relay port free: widen [turn] min_port-max_port"
    elif result.code == 403:
        fix = "403: the server refuses its own relayed address as a peer: check denied_peer_ip"
    else:
        fix = "the TURN server rejected the request: see its log (log_level = DEBUG)"
    return Row(name, Status.FAIL, detail, fix)


# --- all of it ------------------------------------------------------------------------------


def _lists_port(creds: dict[str, Any] | None, link: str, port: int) -> bool:
    for text in (creds or {}).get("uris", []):
        uri = parse_turn_uri(str(text))
        if uri is not None and uri.link == link and uri.port == port:
            return True
    return False


def _port_owner(
    spec: PortSpec, config: Config, answer: ServerAnswer | None, timeout: float
) -> Callable[[], str | None]:
    """How doctor tells that flaskrtc holds the port: its /api/turn lists it (or answers on
    it), or the port answers a STUN Binding request."""
    creds = answer.credentials if answer is not None else None
    host = _local_host(spec.bind)

    def http_owner() -> str | None:
        url = f"{'https' if config.general.tls else 'http'}://{url_host(host)}:{spec.port}"
        if answer is not None and creds is not None and answer.url.rstrip("/") == url:
            return f"/api/turn answers at {url}"
        if fetch_api_turn(url, timeout).credentials is not None:
            return f"/api/turn answers at {url}"
        return None

    def turn_owner() -> str | None:
        link = "tls" if spec.key == "[turn] tls_port" else spec.proto
        if _lists_port(creds, link, spec.port):
            return "/api/turn lists it"
        if stun_binding(link, host, spec.port, timeout) is not None:
            return "it answers a STUN Binding request"
        return None

    return http_owner if spec.key == "[general] port" else turn_owner


def _expected_links(config: Config | None) -> list[str]:
    if config is None or config.turn.tls_port:
        return ["udp", "tcp", "tls"]
    return ["udp", "tcp"]


def run_checks(
    path: str | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, str],
    *,
    url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    start_command: str = "",
) -> tuple[list[Row], str]:
    """Every check in table order, and the URL of the server checked ("" if none).

    ``start_command`` is the command line that starts this server, for the fix of a
    server that does not answer."""
    rows: list[Row] = []
    config_row, config = check_config(path, environ, overrides)
    rows.append(config_row)
    valid = config
    base = url or (default_url(valid) if valid is not None else None)
    answer = fetch_api_turn(base, timeout) if base else None

    if valid is None:
        skipped = "skipped: needs a valid config"
        for name in ("certificate", "ports", "relay ports", "open files", "public ip"):
            rows.append(Row(name, Status.SKIP, skipped))
    else:
        rows.append(check_certificate(valid, datetime.datetime.now(datetime.timezone.utc)))
        specs = port_specs(valid)
        for spec in specs:
            rows.append(check_port(spec, _port_owner(spec, valid, answer, timeout), specs))
        rows.append(check_relay_ports(valid))
        rows.append(check_open_files(valid, nofile_limits()))
        rows.append(check_public_ip(valid))

    start_hint = f"`{start_command or 'flaskrtc' + (f' --config {path}' if path else '')}`"
    creds = answer.credentials if answer is not None else None
    if answer is None:
        if valid is None:
            rows.append(Row("server", Status.SKIP, "skipped: needs a valid config or --url"))
        else:
            rows.append(
                Row(
                    "server",
                    Status.FAIL,
                    "[general] port is 0 (the server picks one at start): its URL is unknown",
                    "pass --url with the address the server printed at start",
                )
            )
    else:
        rows.append(check_server(answer, valid, start_hint, url_from_config=url is None))
    if creds is None:
        why = f"skipped: no server at {base}" if base else "skipped: no server URL"
        rows.append(Row("clock", Status.SKIP, why))
        rows += [Row(f"turn {link}", Status.SKIP, why) for link in _expected_links(valid)]
        return rows, base or ""

    assert answer is not None
    rows.append(check_clock(answer))
    uris = [uri for uri in map(parse_turn_uri, map(str, creds["uris"])) if uri is not None]
    if not uris:
        rows.append(Row("turn", Status.FAIL, "/api/turn lists no turn: URI", "check the server"))
    local_host = _local_host(valid.turn.bind if valid is not None else "0.0.0.0")
    for uri in uris:

        def connect(uri: TurnUri = uri) -> Link:
            return open_link(uri.link, uri.host, uri.port, timeout)

        result = turn_self_test(connect, creds["username"], creds["password"], timeout)
        local = ""
        if result.kind == "no_answer" and result.step in ("connect", "Allocate A"):
            if uri.host.strip("[]") != local_host:
                # Does the server answer on this host? Then the advertised address is wrong.
                if stun_binding(uri.link, local_host, uri.port, timeout) is not None:
                    local = f"{url_host(local_host)}:{uri.port}"
        rows.append(turn_row(uri, result, valid, local))
    return rows, base or ""


def run_doctor(
    path: str | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, str],
    *,
    url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    start_command: str = "",
    out: TextIO | None = None,
) -> int:
    """Run every check, print the table; the exit status (0 unless a check failed)."""
    rows, base = run_checks(
        path, environ, overrides, url=url, timeout=timeout, start_command=start_command
    )
    header = f"flaskrtc {__version__} doctor: server {base or 'unknown'}"
    (out or sys.stdout).write(render(rows, header))
    return exit_code(rows)
