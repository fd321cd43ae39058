"""Reload (SIGHUP) on a real server: a new certificate and new settings without dropping a
call, the keys that need a restart, bad configs and certificates, workers, ``flaskrtc reload``.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flaskrtc.tls import ensure_certificate
from flaskrtc.turn.client import TurnClient
from flaskrtc.turn.stun import Attr, Class, Method
from tests.conftest import REPO, Client, RedisProcess, ServerProcess, free_port
from tests.wire.test_turn_wire import RawTurn, TurnProcess

DONE = re.compile(r"reload: done: (.*)")
FAILED = re.compile(r"reload: .*nothing reloaded, the old (?:certificate and )?settings stay")
RESTART = re.compile(r"reload: these keys need a restart: (.*) \(not applied")


# --- helpers -------------------------------------------------------------------------------


def set_keys(proc: ServerProcess, changes: dict[str, str]) -> None:
    """Rewrite the server's config file with ``changes`` ("section.key" -> value)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(proc.config)
    for key, value in changes.items():
        section, name = key.split(".")
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, name, value)
    with proc.config.open("w") as out:
        parser.write(out)


def count(proc: ServerProcess, regex: re.Pattern[str]) -> int:
    return sum(1 for line in list(proc.lines) if regex.search(line))


def wait_count(
    proc: ServerProcess, regex: re.Pattern[str], n: int, timeout: float = 10
) -> list[str]:
    """Poll the log until ``n`` lines match ``regex`` (a deadline, not a sleep); those lines."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in list(proc.lines) if regex.search(line)]
        if len(found) >= n:
            return found
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            pytest.fail(f"fewer than {n} lines match {regex.pattern!r}:\n" + "\n".join(proc.lines))
        time.sleep(0.02)


def hangup(proc: ServerProcess, outcome: re.Pattern[str] = DONE) -> str:
    """SIGHUP; the log line that says how this reload ended."""
    before = count(proc, outcome)
    proc.proc.send_signal(signal.SIGHUP)
    return wait_count(proc, outcome, before + 1)[-1]


def served_fingerprint(port: int) -> str:
    """SHA-256 of the certificate a NEW TLS connection to ``port`` gets."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_pair(where: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate and key (a new key: a new fingerprint) in ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    cert, key = where / "cert.pem", where / "key.pem"
    assert ensure_certificate(cert, key, ["localhost"])
    return cert, key


def install(proc: ServerProcess, cert: Path, key: Path | None) -> None:
    """Put ``cert`` (and ``key``) in place of the server's, each by one rename."""
    if key is not None:
        os.replace(key, proc.workdir / "certs" / "key.pem")
    os.replace(cert, proc.cert)


def turn_ttl(proc: TurnProcess) -> int:
    """/api/turn's ttl, over a client that trusts the certificate file (so only if the
    server serves that very certificate)."""
    return int(proc.credentials("ttl")["ttl"])


def unverified_ttl(proc: ServerProcess) -> int:
    """/api/turn's ttl, whatever certificate the server serves."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    url = f"{proc.base}/api/turn?service=turn&username=x"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as reply:
        return int(json.loads(reply.read())["ttl"])


class Relay:
    """A TURN allocation (UDP, or TLS when ``tls``) with a permission for a UDP peer."""

    def __init__(self, proc: TurnProcess, user: str, *, tls: bool = False) -> None:
        creds = proc.credentials(user)
        port = proc.turn_tls_port if tls else proc.turn_port
        self.client = RawTurn(port, creds["username"], creds["password"], tcp=tls)
        if tls:
            self.client.sock = proc.ssl_context().wrap_socket(
                self.client.sock, server_hostname="127.0.0.1"
            )
        reply = self.client.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
        assert reply.cls == Class.SUCCESS, reply.attributes.get(Attr.ERROR_CODE)
        self.relay = tuple(reply.attributes[Attr.XOR_RELAYED_ADDRESS])
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(5)
        permit: dict[int, Any] = {Attr.XOR_PEER_ADDRESS: self.peer.getsockname()}
        reply = self.client.request(Method.CREATE_PERMISSION, permit)
        assert reply.cls == Class.SUCCESS, reply.attributes.get(Attr.ERROR_CODE)

    def both_ways(self, tag: bytes) -> None:
        """Client → relay → peer, then peer → relay → client."""
        self.client._send(TurnClient.send_indication(self.peer.getsockname(), tag))
        data, source = self.peer.recvfrom(65535)
        assert (data, source) == (tag, self.relay)
        self.peer.sendto(tag + b" back", self.relay)
        got = self.client.recv_message()
        assert got.method == Method.DATA and got.attributes[Attr.DATA] == tag + b" back"

    def close(self) -> None:
        self.client.close()
        self.peer.close()


def call(a: Client, b: Client, a_id: str, b_id: str, session: str) -> None:
    """An offer from a to b and b's answer back: signaling works both ways."""
    a.send("offer", {"to": b_id, "session_id": session, "description": {"sdp": "o"}})
    offer = b.expect("offer")
    assert offer["data"]["from"] == a_id and offer["data"]["session_id"] == session
    b.send("answer", {"to": a_id, "session_id": session, "description": {"sdp": "a"}})
    answer = a.expect("answer")
    assert answer["data"]["from"] == b_id and answer["data"]["session_id"] == session


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[TurnProcess]:
    """A TLS server with TURN over UDP, TCP and TLS; loopback peers allowed."""
    (tmp_path / "srv").mkdir()
    proc = TurnProcess(tmp_path / "srv", allowed_peer_ip="127.0.0.1")
    yield proc
    proc.stop()


# --- a live call across a reload -------------------------------------------------------------


def test_a_new_certificate_reaches_new_connections_and_the_live_call_goes_on(
    turn: TurnProcess, tmp_path: Path
) -> None:
    old = file_fingerprint(turn.cert)
    assert served_fingerprint(turn.port) == served_fingerprint(turn.turn_tls_port) == old
    alice, bob = turn.connect(), turn.connect()
    udp = Relay(turn, "udp")
    tls = Relay(turn, "tls", tls=True)
    try:
        alice.register("alice")
        alice.expect_peers(["alice"])  # registered first: the list's order is now known
        bob.register("bob")
        alice.expect_peers(["alice", "bob"])
        bob.expect_peers(["alice", "bob"])
        call(alice, bob, "alice", "bob", "before")
        udp.both_ways(b"udp before")
        tls.both_ways(b"tls before")

        install(turn, *new_pair(tmp_path / "new"))
        new = file_fingerprint(turn.cert)
        assert new != old
        line = hangup(turn)
        assert "certificate" in line and ", new)" in line, line

        # New TLS connections, HTTPS and TURN over TLS, get the new certificate; a client
        # that trusts only the new one is satisfied (credentials() verifies against it).
        assert served_fingerprint(turn.port) == new
        assert served_fingerprint(turn.turn_tls_port) == new
        assert turn_ttl(turn) == 86400
        fresh = Relay(turn, "fresh", tls=True)
        fresh.both_ways(b"new tls connection")
        fresh.close()

        # Everything made before the reload still works, both ways.
        call(alice, bob, "alice", "bob", "after")
        call(bob, alice, "bob", "alice", "back")
        udp.both_ways(b"udp after")
        tls.both_ways(b"tls after")
        refreshed = udp.client.request(Method.REFRESH, {Attr.LIFETIME: 600})
        assert refreshed.cls == Class.SUCCESS
        # Nobody was dropped: no disconnect, no closed connection, no ended allocation.
        log = "\n".join(turn.lines)
        for word in ("disconnected", "closing", "expired", "TLS handshake failed", "ERROR"):
            assert word not in log, log
    finally:
        for thing in (alice, bob, udp, tls):
            thing.close()


def test_reload_watch_takes_a_renewed_certificate_and_a_changed_key_by_itself(
    tmp_path: Path,
) -> None:
    """[general] reload_watch (the way to reload on Windows): no signal at all. A renewed
    certificate reaches new TLS connections, the live call and relay go on, and a changed
    config key is applied too."""
    (tmp_path / "srv").mkdir()
    proc = TurnProcess(tmp_path / "srv", general={"reload_watch": "1"}, allowed_peer_ip="127.0.0.1")
    alice, bob = proc.connect(), proc.connect()
    udp = Relay(proc, "udp")
    try:
        wait_count(proc, re.compile(r"reload: watching .*cert\.pem.* every 1 s"), 1)
        alice.register("alice")
        alice.expect_peers(["alice"])
        bob.register("bob")
        alice.expect_peers(["alice", "bob"])
        bob.expect_peers(["alice", "bob"])
        old = served_fingerprint(proc.port)
        install(proc, *new_pair(tmp_path / "new"))
        new = file_fingerprint(proc.cert)
        assert new != old
        line = wait_count(proc, DONE, 1, timeout=20)[-1]
        assert "certificate" in line and ", new)" in line, line
        assert any(re.search(r"reload: .*cert\.pem.* changed", x) for x in proc.lines)
        assert served_fingerprint(proc.port) == new
        assert served_fingerprint(proc.turn_tls_port) == new
        call(alice, bob, "alice", "bob", "after the certificate")
        udp.both_ways(b"udp after the certificate")

        set_keys(proc, {"turn.ttl": "600"})
        line = wait_count(proc, DONE, 2, timeout=20)[-1]
        assert "settings changed: turn.ttl" in line, line
        assert unverified_ttl(proc) == 600
        assert count(proc, DONE) == 2  # one reload per change, not one per look
        call(bob, alice, "bob", "alice", "after the ttl")
        udp.both_ways(b"udp after the ttl")
        log = "\n".join(proc.lines)
        for word in ("disconnected", "closing", "expired", "ERROR"):
            assert word not in log, log
    finally:
        for thing in (alice, bob, udp):
            thing.close()
        proc.stop()


# --- settings -------------------------------------------------------------------------------


def test_log_level_quota_and_ttl_are_applied(turn: TurnProcess) -> None:
    assert turn_ttl(turn) == 86400
    first = Relay(turn, "quota")
    assert not any("DEBUG" in line for line in turn.lines)  # INFO so far
    set_keys(turn, {"general.log_level": "DEBUG", "turn.user_quota": "1", "turn.ttl": "600"})
    line = hangup(turn)
    assert "settings changed: log_level, turn.ttl, turn.user_quota" in line, line
    assert turn_ttl(turn) == 600
    # The same user again: over the new quota of one. The live allocation stays.
    creds = turn.credentials("quota")
    second = RawTurn(turn.turn_port, creds["username"], creds["password"])
    refused = second.request(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    assert refused.attributes[Attr.ERROR_CODE][0] == 486
    first.both_ways(b"still relaying")
    # DEBUG now: a new allocation is logged at that level.
    other = Relay(turn, "debug")
    wait_count(turn, re.compile(r"DEBUG turn    allocation .* for \d+:debug"), 1)
    for thing in (first, second, other):
        thing.close()


def test_peer_rules_are_applied_to_new_permissions(turn: TurnProcess) -> None:
    relay = Relay(turn, "rules")
    try:
        set_keys(turn, {"turn.allowed_peer_ip": ""})  # loopback is denied by default
        assert "turn.allowed_peer_ip" in hangup(turn)
        again = relay.client.request(
            Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: relay.peer.getsockname()}
        )
        assert again.attributes[Attr.ERROR_CODE][0] == 403
    finally:
        relay.close()


def test_a_changed_port_needs_a_restart_and_the_old_one_keeps_serving(turn: TurnProcess) -> None:
    new_port = free_port()
    set_keys(turn, {"general.port": str(new_port), "turn.ttl": "900"})
    before = count(turn, RESTART)
    line = hangup(turn)
    restart = wait_count(turn, RESTART, before + 1)[-1]
    assert RESTART.search(restart).group(1) == "general.port"  # type: ignore[union-attr]
    assert "turn.ttl" in line and "general.port" not in line
    assert turn_ttl(turn) == 900  # asked on the old port, which still serves
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", new_port), timeout=5).close()


def test_a_broken_config_is_logged_and_changes_nothing(turn: TurnProcess) -> None:
    text = turn.config.read_text()
    turn.config.write_text("this is not an ini file\n")
    line = hangup(turn, FAILED)
    assert "config error" in line and "line 1 comes before any [section] header" in line
    # A valid file with one bad value: nothing of it is applied, not even the good keys.
    turn.config.write_text(text)
    set_keys(turn, {"turn.ttl": "600", "turn.user_quota": "-1"})
    line = hangup(turn, FAILED)
    assert "turn.user_quota = '-1'" in line
    assert turn_ttl(turn) == 86400
    assert turn.proc.poll() is None
    # Fixed: the next reload applies it.
    set_keys(turn, {"turn.user_quota": "5"})
    assert "turn.ttl, turn.user_quota" in hangup(turn)
    assert turn_ttl(turn) == 600


def test_a_mismatched_certificate_and_key_keep_the_old_certificate(
    turn: TurnProcess, tmp_path: Path
) -> None:
    old = file_fingerprint(turn.cert)
    cert, _key = new_pair(tmp_path / "other")  # a certificate for another key
    set_keys(turn, {"turn.ttl": "600"})
    install(turn, cert, None)
    line = hangup(turn, FAILED)
    assert "TLS certificate" in line, line
    assert served_fingerprint(turn.port) == served_fingerprint(turn.turn_tls_port) == old
    assert unverified_ttl(turn) == 86400  # the settings were not applied either


# --- flaskrtc reload ------------------------------------------------------------------------


def run_reload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flaskrtc", "reload", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_flaskrtc_reload_signals_the_server_named_by_its_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "flaskrtc.pid"
    (tmp_path / "srv").mkdir()
    proc = TurnProcess(tmp_path / "srv", args=["--pid-file", str(pid_file)])
    try:
        assert pid_file.read_text().strip() == str(proc.proc.pid)
        set_keys(proc, {"turn.ttl": "700"})
        result = run_reload("--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        assert "turn.ttl" in wait_count(proc, DONE, 1)[-1]
        assert turn_ttl(proc) == 700
    finally:
        assert proc.stop() == 0
    assert not pid_file.exists()  # removed at exit


def test_flaskrtc_reload_without_a_server_says_why(tmp_path: Path) -> None:
    missing = run_reload("--pid-file", str(tmp_path / "none.pid"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    (tmp_path / "bad.pid").write_text("not a pid\n")
    bad = run_reload("--pid-file", str(tmp_path / "bad.pid"))
    assert bad.returncode == 2 and "no process id" in bad.stderr
    usage = run_reload()
    assert usage.returncode == 2  # --pid or --pid-file is required


# --- workers ----------------------------------------------------------------------------------

WORKERS_ONLY_ON_LINUX = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="workers > 1 need Linux"
)


def two_workers(
    tmp_path: Path, redis_server: RedisProcess, first_port: int, **general: str
) -> TurnProcess:
    """A TLS server with two workers in a cluster, relay ports from ``first_port`` on."""
    (tmp_path / "srv").mkdir()
    return TurnProcess(
        tmp_path / "srv",
        general={"workers": "2", **general},
        cluster={"redis_url": redis_server.url},
        allowed_peer_ip="127.0.0.1",
        min_port=str(first_port),
        max_port=str(first_port + 999),
    )


def each_worker(proc: TurnProcess, pattern: str, timeout: float = 20) -> list[str]:
    """Each worker's first log line matching ``pattern`` (after its ``wN/server`` prefix)."""
    return [
        wait_count(proc, re.compile(rf"w{worker}/server  {pattern}"), 1, timeout)[0]
        for worker in (1, 2)
    ]


@WORKERS_ONLY_ON_LINUX
def test_sighup_to_the_parent_reloads_every_worker(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    proc = two_workers(tmp_path, redis_server, 41000)
    try:
        each_worker(proc, "turn: listening on")
        clients = [proc.connect() for _ in range(4)]
        for n, client in enumerate(clients):
            client.register(f"p{n}")
        relays = [Relay(proc, f"r{n}") for n in range(4)]
        set_keys(proc, {"turn.ttl": "600", "general.port": str(free_port())})
        proc.proc.send_signal(signal.SIGHUP)
        for done in each_worker(proc, "reload: done: "):
            assert "settings changed: turn.ttl" in done, done
        # The port is the parent's to bind: it alone says so (the workers never see it).
        restart = wait_count(proc, RESTART, 1)
        assert len(restart) == 1 and "general.port" in restart[0] and " workers " in restart[0]
        wait_count(proc, re.compile(r"reload: SIGHUP sent to 2 of 2 workers"), 1)
        # Each new connection is hashed to a worker: every answer has the new TTL.
        assert {turn_ttl(proc) for _ in range(8)} == {600}
        for n, relay in enumerate(relays):
            relay.both_ways(f"relay {n}".encode())
        call(clients[0], clients[1], "p0", "p1", "w-after")
        assert not any("disconnected" in line or "ERROR" in line for line in proc.lines)
        for client in clients:
            client.close()
        for relay in relays:
            relay.close()
    finally:
        proc.stop()


@WORKERS_ONLY_ON_LINUX
def test_with_reload_watch_every_worker_reloads_by_itself(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    proc = two_workers(tmp_path, redis_server, 42000, reload_watch="1")
    try:
        each_worker(proc, "reload: watching ")
        relay = Relay(proc, "watched")
        set_keys(proc, {"turn.ttl": "600"})
        for done in each_worker(proc, "reload: done: "):
            assert "settings changed: turn.ttl" in done, done
        assert {turn_ttl(proc) for _ in range(8)} == {600}
        relay.both_ways(b"relaying on")
        relay.close()
        assert not any("ERROR" in line for line in proc.lines)
    finally:
        proc.stop()
