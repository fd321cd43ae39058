"""The self-signed certificate and the server SSL context."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flaskrtc.tls import ensure_certificate, make_ssl_context


def paths(tmp_path: Path) -> tuple[Path, Path]:
    # A nested folder: ensure_certificate creates the parents.
    return tmp_path / "certs" / "deep" / "cert.pem", tmp_path / "certs" / "key.pem"


def load(cert: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.read_bytes())


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = ext.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return dns, ips


def test_generates_cert_with_sans(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    hosts = ["demo.Example.com", "203.0.113.7", "", "localhost", "2001:db8::1", "127.0.0.1"]
    assert ensure_certificate(cert_path, key_path, hosts) is True
    cert = load(cert_path)
    dns, ips = sans(cert)
    assert dns == ["localhost", "demo.example.com"]  # deduplicated, no empty entry
    assert ips == ["127.0.0.1", "::1", "203.0.113.7", "2001:db8::1"]
    assert ipaddress.ip_address("203.0.113.7") in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.IPAddress)


def test_only_default_hosts(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_certificate(cert_path, key_path, ["", "0.0.0.0"])
    assert sans(load(cert_path)) == (["localhost"], ["127.0.0.1", "::1"])


def test_certificate_fields(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_certificate(cert_path, key_path, [])
    cert = load(cert_path)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["flaskrtc"]
    assert cert.issuer == cert.subject
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert abs((now - start) - datetime.timedelta(days=1)) < datetime.timedelta(minutes=5)
    assert abs((end - now) - datetime.timedelta(days=825)) < datetime.timedelta(minutes=5)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.value.ca is False and basic.critical
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


def test_file_modes(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_certificate(cert_path, key_path, [])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    # The certificate is public; 0644 under the usual umask (022), never more.
    assert stat.S_IMODE(cert_path.stat().st_mode) & ~0o644 == 0
    assert sorted(p.name for p in key_path.parent.rglob("*")) == ["cert.pem", "deep", "key.pem"]


def test_existing_files_not_overwritten(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    assert ensure_certificate(cert_path, key_path, []) is True
    cert_before, key_before = cert_path.read_bytes(), key_path.read_bytes()
    assert ensure_certificate(cert_path, key_path, ["other.example"]) is False
    assert (cert_path.read_bytes(), key_path.read_bytes()) == (cert_before, key_before)


def test_existing_key_gets_a_certificate(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_certificate(cert_path, key_path, [])
    key_before = key_path.read_bytes()
    cert_path.unlink()
    assert ensure_certificate(cert_path, key_path, ["x.example"]) is True
    assert key_path.read_bytes() == key_before
    assert "x.example" in sans(load(cert_path))[0]
    make_ssl_context(cert_path, key_path)  # the new certificate matches the old key


def test_certificate_without_key_is_not_overwritten(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    cert_path.parent.mkdir(parents=True)
    cert_path.write_text("a real certificate\n")
    with pytest.raises(FileNotFoundError):
        ensure_certificate(cert_path, key_path, [])
    assert cert_path.read_text() == "a real certificate\n"
    assert not key_path.exists()


def test_context_refuses_old_tls(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_certificate(cert_path, key_path, [])
    context = make_ssl_context(cert_path, key_path)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert not context.check_hostname  # a server context


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> str:
    """Complete a TLS handshake over a socket pair; return the negotiated version."""
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(right, server_side=True) as tls:
                tls.sendall(tls.recv(5))
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client_ctx.wrap_socket(left, server_hostname=hostname) as tls:
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
            version = tls.version()
    finally:
        thread.join(10)
        right.close()
    assert not errors
    assert version is not None
    return version


def test_real_handshake_verifies_localhost(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_certificate(cert_path, key_path, ["demo.example.com"])
    server_ctx = make_ssl_context(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    assert handshake(server_ctx, client_ctx, "localhost") in ("TLSv1.2", "TLSv1.3")
    assert handshake(server_ctx, client_ctx, "demo.example.com")


def test_handshake_rejects_unlisted_host(tmp_path: Path) -> None:
    cert_path, key_path = paths(tmp_path)
    ensure_certificate(cert_path, key_path, [])
    server_ctx = make_ssl_context(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_ctx, client_ctx, "not-listed.example")
