"""``flaskrtc doctor``'s checks that need no server, its table and exit code, and the TURN
self-test driven against the sans-I/O TurnCore through fake links (no sockets, a fake clock)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flaskrtc import doctor
from flaskrtc.cli import main
from flaskrtc.config import Config, GeneralConfig, TurnConfig
from flaskrtc.doctor import (
    PortSpec,
    Row,
    SelfTest,
    ServerAnswer,
    Status,
    TurnUri,
    check_certificate,
    check_clock,
    check_config,
    check_open_files,
    check_port,
    check_public_ip,
    check_relay_ports,
    check_server,
    covers,
    exit_code,
    parse_turn_uri,
    render,
    turn_row,
    turn_self_test,
)
from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.core import ToClient, ToPeer, TurnCore
from flaskrtc.turn.credentials import make_credential
from tests.unit.test_turn_core import NOW, SECRET, make_core

UTC = datetime.timezone.utc
TODAY = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def make_config(tmp: Path | None = None, *, general: Any = None, **turn: Any) -> Config:
    folder = tmp or Path("/nonexistent")
    general_config = GeneralConfig(
        cert=str(folder / "cert.pem"), key=str(folder / "key.pem"), **(general or {})
    )
    return Config(general=general_config, turn=TurnConfig(**turn))


# --- table and exit code ------------------------------------------------------------------


def test_warnings_do_not_fail_but_a_failure_does() -> None:
    warned = [Row("a", Status.OK, "fine"), Row("b", Status.WARN, "hmm", "do x")]
    assert exit_code(warned) == 0
    assert exit_code([*warned, Row("c", Status.SKIP, "later")]) == 0
    assert exit_code([*warned, Row("d", Status.FAIL, "broken", "do y")]) == 1


def test_render_prints_one_row_per_check_then_the_fixes() -> None:
    rows = [
        Row("config", Status.OK, "configs/config.ini", "never shown"),
        Row("public ip", Status.WARN, "loopback", "set [turn] public_ip"),
        Row("server", Status.FAIL, "no server", "start it"),
        Row("clock", Status.SKIP, "skipped: no server"),
    ]
    text = render(rows, "flaskrtc doctor")
    lines = text.splitlines()
    assert lines[0] == "flaskrtc doctor"
    table = lines[lines.index("check      result  detail") :]
    assert table[1:5] == [
        "config     ok      configs/config.ini",
        "public ip  warn    loopback",
        "server     FAIL    no server",
        "clock      skip    skipped: no server",
    ]
    fixes = lines[lines.index("To fix:") + 1 :]
    assert fixes[:2] == ["  public ip (warn): set [turn] public_ip", "  server (FAIL): start it"]
    assert "never shown" not in text
    assert lines[-1] == "1 ok, 1 warning(s), 1 failed, 1 skipped"


# --- config -------------------------------------------------------------------------------


def test_a_config_error_is_a_fail_row_with_its_one_line_message(tmp_path: Path) -> None:
    row, config = check_config(None, {}, {"general.port": "abc"})
    assert config is None
    assert row.status is Status.FAIL
    assert row.detail == "config error: general.port = 'abc': expected an integer from 0 to 65535"
    assert "refuses to start" in row.fix


def test_config_reads_the_secret_file_but_never_writes_one(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[general]\nport = 9000\n")
    row, config = check_config(str(path), {}, {})
    assert row.status is Status.OK and config is not None
    assert "generated into" in row.detail and "first start" in row.detail
    assert config.turn.secret == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.ini"]  # read-only

    (tmp_path / "turn_secret").write_text("s3cret\n")
    row, config = check_config(str(path), {}, {})
    assert config is not None and config.turn.secret == "s3cret"
    assert f"TURN secret from {tmp_path / 'turn_secret'}" in row.detail


def test_an_unreadable_secret_file_fails_as_the_server_would(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[general]\n")
    (tmp_path / "turn_secret").mkdir()  # reading a directory fails
    row, _ = check_config(str(path), {}, {})
    assert row.status is Status.FAIL
    assert row.detail.startswith("config error: turn.secret")


def test_env_and_overrides_count_as_for_the_server(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[general]\nport = 9000\n[turn]\nsecret = x\n")
    _, config = check_config(str(path), {"FLASKRTC_GENERAL_PORT": "9100"}, {})
    assert config is not None and config.general.port == 9100
    _, config = check_config(str(path), {"FLASKRTC_GENERAL_PORT": "9100"}, {"general.port": "9200"})
    assert config is not None and config.general.port == 9200


# --- certificate --------------------------------------------------------------------------


def write_cert(
    folder: Path,
    names: list[x509.GeneralName] | None,
    *,
    not_before: datetime.datetime = TODAY - datetime.timedelta(days=1),
    not_after: datetime.datetime = TODAY + datetime.timedelta(days=365),
    key_for_file: ec.EllipticCurvePrivateKey | None = None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    stored = key_for_file or key
    (folder / "key.pem").write_bytes(
        stored.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


LOCALHOST: list[x509.GeneralName] = [x509.DNSName("localhost")]


def test_certificate_ok_names_the_domain_and_days_left(tmp_path: Path) -> None:
    write_cert(tmp_path, LOCALHOST)
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.OK
    assert row.detail.endswith("covers localhost, 365 days left (until 2031-06-01)")


def test_certificate_with_few_days_left_warns(tmp_path: Path) -> None:
    write_cert(tmp_path, LOCALHOST, not_after=TODAY + datetime.timedelta(days=10, hours=1))
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.WARN and "10 days left" in row.detail
    # Self-signed: deleting it makes the server generate a new one.
    assert "delete" in row.fix
    write_cert(tmp_path, LOCALHOST, not_after=TODAY + datetime.timedelta(days=14, hours=1))
    assert check_certificate(make_config(tmp_path), TODAY).status is Status.OK


def test_expired_certificate_fails(tmp_path: Path) -> None:
    write_cert(
        tmp_path,
        LOCALHOST,
        not_before=TODAY - datetime.timedelta(days=30),
        not_after=TODAY - datetime.timedelta(days=1),
    )
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.FAIL and "expired on 2030-05-31" in row.detail


def test_certificate_not_yet_valid_fails(tmp_path: Path) -> None:
    write_cert(tmp_path, LOCALHOST, not_before=TODAY + datetime.timedelta(days=2))
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.FAIL and "not valid before" in row.detail


def test_certificate_must_cover_the_domain(tmp_path: Path) -> None:
    write_cert(
        tmp_path, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]
    )
    row = check_certificate(make_config(tmp_path, general={"domain": "rtc.example.org"}), TODAY)
    assert row.status is Status.FAIL
    assert "does not cover [general] domain rtc.example.org (localhost, 192.0.2.7)" in row.detail
    assert "rtc.example.org" in row.fix
    ip_config = make_config(tmp_path, general={"domain": "192.0.2.7"})
    assert check_certificate(ip_config, TODAY).status is Status.OK


def test_certificate_without_san_does_not_cover_its_cn(tmp_path: Path) -> None:
    write_cert(tmp_path, None)  # CN=localhost, no subjectAltName
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.FAIL and "no subjectAltName" in row.detail


def test_wildcards_cover_one_label() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(TODAY)
        .not_valid_after(TODAY + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.Example.org")]), False)
        .sign(key, hashes.SHA256())
    )
    assert covers(cert, "rtc.example.org")
    assert covers(cert, "RTC.example.org.")
    assert not covers(cert, "example.org")
    assert not covers(cert, "a.rtc.example.org")


def test_missing_certificate_will_be_generated(tmp_path: Path) -> None:
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.OK and "will be generated on first start" in row.detail
    assert list(tmp_path.iterdir()) == []  # doctor generates nothing


def test_certificate_without_its_key_fails(tmp_path: Path) -> None:
    write_cert(tmp_path, LOCALHOST)
    (tmp_path / "key.pem").unlink()
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.FAIL and "key.pem does not" in row.detail


def test_certificate_with_another_key_fails(tmp_path: Path) -> None:
    write_cert(tmp_path, LOCALHOST, key_for_file=ec.generate_private_key(ec.SECP256R1()))
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.FAIL and "is not the key of" in row.detail


def test_certificate_that_does_not_parse_fails(tmp_path: Path) -> None:
    write_cert(tmp_path, LOCALHOST)
    (tmp_path / "cert.pem").write_text("hello\n")
    row = check_certificate(make_config(tmp_path), TODAY)
    assert row.status is Status.FAIL and "does not parse" in row.detail


def test_certificate_is_skipped_when_no_tls_is_used(tmp_path: Path) -> None:
    config = make_config(tmp_path, general={"tls": False}, tls_port=0)
    assert check_certificate(config, TODAY).status is Status.SKIP
    # TURN over TLS alone still needs it.
    config = make_config(tmp_path, general={"tls": False}, tls_port=5349)
    assert check_certificate(config, TODAY).status is Status.OK


# --- ports, relay range, open files -------------------------------------------------------


def never_owned() -> str | None:
    raise AssertionError("the owner must not be asked")


def test_port_zero_is_picked_at_start() -> None:
    spec = PortSpec("https port", "tcp", "0.0.0.0", 0, "[general] port")
    assert check_port(spec, never_owned).status is Status.OK


def test_two_settings_on_one_port_fail() -> None:
    http = PortSpec("https port", "tcp", "0.0.0.0", 5349, "[general] port")
    tls = PortSpec("turn tls port", "tcp", "127.0.0.1", 5349, "[turn] tls_port")
    udp = PortSpec("turn udp port", "udp", "0.0.0.0", 5349, "[turn] port")
    row = check_port(tls, never_owned, [http, tls, udp])
    assert row.status is Status.FAIL and "also [general] port's port" in row.detail
    elsewhere = dataclasses.replace(http, bind="192.0.2.1")
    assert not doctor._overlap(dataclasses.replace(tls, bind="127.0.0.1"), elsewhere)
    assert not doctor._overlap(udp, http)  # UDP and TCP ports do not collide


def test_relay_range_smaller_than_total_quota_fails() -> None:
    row = check_relay_ports(make_config(min_port=50000, max_port=50099, total_quota=1000))
    assert row.status is Status.FAIL
    assert "50000-50099 is 100 ports, fewer than total_quota 1000" in row.detail
    assert "50000-50999" in row.fix and "total_quota to 100" in row.fix
    near_top = check_relay_ports(make_config(min_port=65000, max_port=65099, total_quota=1000))
    assert "64536-65535" in near_top.fix  # the example range stays below 65536


def test_relay_range_equal_to_quota_or_unlimited_quota_is_ok() -> None:
    row = check_relay_ports(make_config(min_port=50000, max_port=50999, total_quota=1000))
    assert row.status is Status.OK and "1000 ports for total_quota 1000" in row.detail
    row = check_relay_ports(make_config(min_port=50000, max_port=50099, total_quota=0))
    assert row.status is Status.OK and "at most 100 allocations" in row.detail


def test_open_files_limit_against_the_quota() -> None:
    config = make_config(total_quota=1000)
    low = check_open_files(config, (1024, 1024))
    assert low.status is Status.WARN and "about 2100" in low.detail
    assert "total_quota to 462" in low.fix
    assert check_open_files(config, (1024, 4096)).status is Status.OK
    assert check_open_files(config, (1024, None)).status is Status.OK  # unlimited
    assert check_open_files(config, None).status is Status.SKIP
    # total_quota 0: the port range bounds the allocations.
    unlimited = make_config(total_quota=0, min_port=60000, max_port=60999)
    assert "1000 allocations need about 2100" in check_open_files(unlimited, (1, 4096)).detail


# --- public_ip ----------------------------------------------------------------------------


def local(ip: str) -> bool:
    return True


def remote(ip: str) -> bool:
    return False


def test_public_ip_unset_uses_the_address_each_client_reached() -> None:
    row = check_public_ip(make_config(), never_called)
    assert row.status is Status.OK
    assert row.detail == "not set: relays use the address each client reached"


def never_called(ip: str) -> bool:
    raise AssertionError("no bind needed")


def test_public_ip_on_this_host_is_ok() -> None:
    row = check_public_ip(make_config(public_ip="203.0.113.5"), local)
    assert row.status is Status.OK and "an address of this host" in row.detail


def test_public_ip_of_both_families_is_one_row_as_bad_as_the_worse() -> None:
    both = make_config(public_ip="203.0.113.5, 2001:db8::5")
    row = check_public_ip(both, local)
    assert row.status is Status.OK and row.detail.count("an address of this host") == 2
    half = check_public_ip(both, lambda ip: ":" not in ip)  # the IPv6 one is a NAT's
    assert half.status is Status.WARN
    assert "203.0.113.5: an address of this host" in half.detail
    assert "2001:db8::5 is not an address of this host" in half.detail
    assert "2001:db8::5" in half.fix and "203.0.113.5" not in half.fix


def test_public_ip_elsewhere_assumes_a_nat_and_names_the_forwards() -> None:
    row = check_public_ip(make_config(public_ip="203.0.113.5"), remote)
    assert row.status is Status.WARN
    assert row.detail == (
        "203.0.113.5 is not an address of this host: a 1:1 NAT is assumed: forward UDP+TCP "
        "19302, TCP 5349 and UDP 49152-65535 from 203.0.113.5 to this host"
    )
    no_tls = check_public_ip(make_config(public_ip="203.0.113.5", tls_port=0), remote)
    assert "TCP 5349" not in no_tls.detail


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.0.2", "::1"])
def test_loopback_public_ip_warns(ip: str) -> None:
    row = check_public_ip(make_config(public_ip=ip), local)
    assert row.status is Status.WARN and "cannot reach it" in row.detail


@pytest.mark.parametrize("ip", ["10.1.2.3", "172.20.0.1", "192.168.1.5", "100.64.0.9", "fd00::5"])
def test_private_and_cgnat_public_ip_warn(ip: str) -> None:
    row = check_public_ip(make_config(public_ip=ip), local)
    assert row.status is Status.WARN
    assert "private address: clients on the internet cannot reach it" in row.detail
    assert "NAT" not in row.detail
    assert "1:1 NAT is assumed" in check_public_ip(make_config(public_ip=ip), remote).detail


def test_address_is_local_binds_without_sending() -> None:
    assert doctor.address_is_local("127.0.0.1")
    assert not doctor.address_is_local("192.0.2.123")  # TEST-NET-1, on no host


# --- the server's answers -----------------------------------------------------------------


def answer(received: float, *, date_offset: float = 0.0, expiry_offset: int = 0) -> ServerAnswer:
    cred = make_credential(SECRET, "doctor", received + expiry_offset, 86400)
    body = {
        "username": cred.username,
        "password": cred.password,
        "ttl": 86400,
        "uris": ["turn:127.0.0.1:3478?transport=udp"],
    }
    date = formatdate(received + date_offset, usegmt=True)
    return ServerAnswer("https://127.0.0.1:8086", "", 200, body, date, received, 0.012)


def test_clock_in_step_is_ok() -> None:
    row = check_clock(answer(NOW + 0.2))
    assert row.status is Status.OK
    assert "server clock" in row.detail and "username expiry" in row.detail


def test_clock_skew_over_30_seconds_fails() -> None:
    row = check_clock(answer(NOW, date_offset=-45))
    assert row.status is Status.FAIL and "-44.5 s" in row.detail and "NTP" in row.fix
    assert check_clock(answer(NOW, date_offset=20)).status is Status.OK


def test_username_expiry_far_from_now_plus_ttl_fails() -> None:
    row = check_clock(answer(NOW, expiry_offset=120))
    assert row.status is Status.FAIL and "username expiry +120 s" in row.detail


def test_server_row() -> None:
    config = make_config(secret=SECRET)
    good = check_server(answer(NOW), config, "`flaskrtc`", url_from_config=True)
    assert good.status is Status.OK and "1 TURN URIs" in good.detail
    other = check_server(answer(NOW), make_config(secret="other"), "", url_from_config=True)
    assert other.status is Status.WARN and "another config" in other.fix
    down = ServerAnswer("https://127.0.0.1:8086", error="connection refused")
    row = check_server(down, config, "`flaskrtc --config c.ini`", url_from_config=True)
    assert row.status is Status.FAIL
    assert row.detail == "no server at https://127.0.0.1:8086: connection refused"
    assert "`flaskrtc --config c.ini`" in row.fix and "--url" in row.fix
    not_turn = ServerAnswer("http://127.0.0.1:80", "", 404, {"error": "x"})
    assert check_server(not_turn, config, "", url_from_config=False).status is Status.FAIL


def test_default_url_follows_tls_and_bind() -> None:
    assert doctor.default_url(make_config()) == "https://127.0.0.1:8086"
    # "::" is dual-stack (or IPv4 alone without IPv6): 127.0.0.1 reaches it either way.
    plain_any = make_config(general={"tls": False, "bind": "::", "port": 9000})
    assert doctor.default_url(plain_any) == "http://127.0.0.1:9000"
    plain_v6 = make_config(general={"tls": False, "bind": "::1", "port": 9000})
    assert doctor.default_url(plain_v6) == "http://[::1]:9000"
    assert doctor.default_url(make_config(general={"bind": "10.0.0.5"})) == "https://10.0.0.5:8086"
    assert doctor.default_url(make_config(general={"port": 0})) is None


def test_parse_turn_uri() -> None:
    assert parse_turn_uri("turn:127.0.0.1:19302?transport=udp") == TurnUri(
        "turn:127.0.0.1:19302?transport=udp", False, "127.0.0.1", 19302, "udp"
    )
    tls = parse_turn_uri("turns:rtc.example.org:5349?transport=tcp")
    assert tls is not None and tls.link == "tls" and tls.host == "rtc.example.org"
    v6 = parse_turn_uri("turn:[2001:db8::1]:3478?transport=tcp")
    assert v6 is not None and (v6.host, v6.port, v6.link) == ("2001:db8::1", 3478, "tcp")
    default = parse_turn_uri("turn:example.org")
    assert default is not None and (default.port, default.link) == (3478, "udp")
    for bad in ("stun:example.org", "turn:", "turn:h:x", "turn:h:1?transport=sctp"):
        assert parse_turn_uri(bad) is None


# --- the TURN self-test, against TurnCore through fake links -----------------------------


class FakeNet:
    """Carries bytes between fake client links and a TurnCore, and keeps a fake clock."""

    def __init__(self, core: TurnCore, *, reliable: bool = False) -> None:
        self.core = core
        self.t = 0.0
        self.reliable = reliable
        self.links: list[FakeLink] = []
        self.drop_requests = False  # the server never answers
        self.drop_relayed = False  # the relayed datagrams never arrive

    def clock(self) -> float:
        return self.t

    def connect(self) -> FakeLink:
        client = ("198.51.100.7", 40000 + len(self.links))
        link = FakeLink(self, FiveTuple("udp", client, ("192.0.2.1", 3478)))
        self.links.append(link)
        return link


class FakeLink:
    def __init__(self, net: FakeNet, five_tuple: FiveTuple) -> None:
        self.net = net
        self.reliable = net.reliable
        self.five_tuple = five_tuple
        self.inbox: list[bytes] = []
        self.sent = 0
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sent += 1
        net = self.net
        if net.drop_requests:
            return
        for effect in net.core.handle(data, self.five_tuple, NOW + net.t):
            if isinstance(effect, ToClient):
                self.inbox.append(effect.data)
            elif isinstance(effect, ToPeer) and not net.drop_relayed:
                # The relay sends to a peer; when that is another relay, it arrives there.
                target = net.core.allocations.relay_addresses().get(effect.peer)
                if target is None:
                    continue
                data_indication = net.core.data_indication(
                    target, effect.allocation.relay.public, effect.data
                )
                for link in net.links:
                    if link.five_tuple == target.five_tuple and data_indication is not None:
                        link.inbox.append(data_indication)

    def recv(self, timeout: float) -> bytes | None:
        if self.inbox:
            return self.inbox.pop(0)
        self.net.t += timeout  # nothing came: the whole timeout passes
        return None

    def close(self) -> None:
        self.closed = True


def creds(user: str = "doctor") -> tuple[str, str]:
    cred = make_credential(SECRET, user, NOW, 86400)
    return cred.username, cred.password


def test_self_test_relays_both_ways_and_frees_its_allocations() -> None:
    core, ports = make_core()
    net = FakeNet(core)
    result = turn_self_test(net.connect, *creds(), timeout=3, clock=net.clock)
    assert result.ok, result
    assert result.rtt == 0.0  # the fake clock stands still while data flows
    assert len(result.relays) == 2 and result.relays[0] != result.relays[1]
    # Refresh with lifetime 0 (RFC 8656 §8) freed both UDP allocations; links are closed.
    assert len(core.allocations) == 0 and not ports.open_ports
    assert all(link.closed for link in net.links)


def test_self_test_reports_a_lost_relay_packet() -> None:
    core, _ = make_core()
    net = FakeNet(core)
    net.drop_relayed = True
    result = turn_self_test(net.connect, *creds(), timeout=3, clock=net.clock)
    assert not result.ok
    assert (result.step, result.kind) == ("relay A -> B", "relay_lost")
    assert net.t == pytest.approx(3.0)  # the step's timeout; the cleanup was answered at once
    assert len(core.allocations) == 0


def test_self_test_reports_401_at_the_allocate() -> None:
    core, _ = make_core()
    net = FakeNet(core)
    username, _ = creds()
    result = turn_self_test(net.connect, username, "wrong", timeout=3, clock=net.clock)
    assert (result.step, result.kind, result.code) == ("Allocate A", "error", 401)


def test_self_test_retransmits_over_udp_until_the_timeout() -> None:
    core, _ = make_core()
    net = FakeNet(core)
    net.drop_requests = True
    result = turn_self_test(net.connect, *creds(), timeout=3, clock=net.clock)
    assert (result.step, result.kind) == ("Allocate A", "no_answer")
    assert result.detail == "no answer in 3 s"
    # RFC 8489 §6.2.1: sent at 0 s, then 0.5 s and 1.5 s (RTO 500 ms, doubling).
    assert net.links[0].sent == 3
    assert net.t == pytest.approx(3.0)


def test_self_test_does_not_retransmit_over_a_stream() -> None:
    core, _ = make_core()
    net = FakeNet(core, reliable=True)
    net.drop_requests = True
    result = turn_self_test(net.connect, *creds(), timeout=3, clock=net.clock)
    assert result.kind == "no_answer" and net.links[0].sent == 1


def test_self_test_reports_a_connect_failure() -> None:
    def refuse() -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    result = turn_self_test(refuse, *creds(), timeout=3)
    assert (result.step, result.kind, result.detail) == (
        "connect",
        "no_answer",
        "connection refused",
    )


UDP_URI = TurnUri("turn:127.0.0.2:3478?transport=udp", False, "127.0.0.2", 3478, "udp")


def test_turn_rows_say_which_step_failed_and_the_fix() -> None:
    config = make_config(public_ip="127.0.0.2", min_port=40000, max_port=41000)
    ok = turn_row(UDP_URI, SelfTest((("127.0.0.2", 40001), ("127.0.0.2", 40002)), 0.0012), config)
    assert ok == Row(
        "turn udp",
        Status.OK,
        "127.0.0.2:3478: relayed both ways via 127.0.0.2:40001 and 127.0.0.2:40002, RTT 1.2 ms",
    )
    lost = turn_row(UDP_URI, SelfTest((), None, "relay A -> B", "relay_lost", "x"), config)
    assert lost.status is Status.FAIL and lost.detail == "127.0.0.2:3478: failed at relay A -> B: x"
    assert "[turn] public_ip (127.0.0.2)" in lost.fix and "UDP 40000-41000" in lost.fix
    refused = turn_row(UDP_URI, SelfTest((), None, "Allocate A", "error", "401", 401), config)
    assert "secret or realm" in refused.fix
    silent = SelfTest((), None, "Allocate A", "no_answer", "no answer in 3 s")
    assert "down, or 3478/udp is closed or firewalled" in turn_row(UDP_URI, silent, config).fix
    moved = turn_row(UDP_URI, silent, config, local="127.0.0.1:3478")
    assert "answers at 127.0.0.1:3478 but not at 127.0.0.2:3478" in moved.fix
    tls_uri = dataclasses.replace(UDP_URI, secure=True, transport="tcp")
    tls = turn_row(tls_uri, SelfTest((), None, "connect", "tls", "TLS handshake failed"), config)
    assert tls.name == "turn tls" and "certificate" in tls.fix


# --- the command line -----------------------------------------------------------------------


PORT_EXPECTED = "expected an integer from 0 to 65535"


def table_rows(out: str) -> dict[str, tuple[str, str]]:
    """name -> (result, detail) of each table row in doctor's output."""
    found = {}
    for line in out.splitlines():
        match = re.match(r"(\S.*?)\s+(ok|warn|FAIL|skip)\s{2,}(.*)$", line)
        if match:
            found[match.group(1)] = (match.group(2), match.group(3))
    return found


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FLASKRTC_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_cli_doctor_with_a_bad_flag_fails_and_skips_the_rest(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--port", "abc"]) == 1
    rows = table_rows(capsys.readouterr().out)
    assert rows["config"] == ("FAIL", "config error: general.port = 'abc': " + PORT_EXPECTED)
    assert rows["certificate"] == ("skip", "skipped: needs a valid config")
    assert rows["server"][0] == rows["turn udp"][0] == "skip"
    assert list(clean_env.iterdir()) == []


def test_cli_doctor_help_says_warnings_do_not_fail(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warnings do not fail" in out
    for flag in ("--config", "--bind", "--port", "--public-ip", "--turn-port", "--no-tls"):
        assert flag in out
    assert "--url" in out and "--timeout" in out


def test_cli_doctor_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--timeout", "0"]) == 2
    assert main(["doctor", "--url", "ftp://x"]) == 2
    assert main(["doctor", "--no-such-flag"]) == 2


def test_server_help_names_the_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "flaskrtc doctor" in capsys.readouterr().out
