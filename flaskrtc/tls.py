"""TLS material: a self-signed certificate on first start, and the server's SSL context."""

from __future__ import annotations

import datetime
import errno
import ipaddress
import logging
import ssl
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gevent import Timeout

from flaskrtc.files import write_atomic

COMMON_NAME = "flaskrtc"
# 825 days: the longest validity Apple platforms accept for a TLS server certificate.
VALID_DAYS = 825
ALWAYS_HOSTS = ("localhost", "127.0.0.1", "::1")

_SignedKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_AnyKey = _SignedKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def _host_entry(host: str) -> x509.GeneralName | None:
    """The SAN entry for ``host``: IPAddress for an IP literal, else DNSName."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]", as IPv6 literals appear in URLs
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # DNSName wants ASCII (an IDNA A-label); SAN names are compared case-insensitively.
        return x509.DNSName(host.encode("idna").decode("ascii").lower())
    if address.is_unspecified:
        return None  # 0.0.0.0 / :: is a bind address, never a name a client connects to
    return x509.IPAddress(address)


def subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """localhost, 127.0.0.1, ::1 and ``hosts``, deduplicated, in that order."""
    names: list[x509.GeneralName] = []
    for host in (*ALWAYS_HOSTS, *hosts):
        entry = _host_entry(host)
        if entry is not None and entry not in names:
            names.append(entry)
    return names


def _load_key(key_path: Path) -> _AnyKey:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise ValueError(f"{key_path}: unsupported private key type {type(key).__name__}")
    return key


def _build_certificate(key: _AnyKey, hosts: Iterable[str]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate clients' clock skew
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange (TLS 1.2 without ECDHE) encrypts to the key.
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        # Strict verifiers (Python 3.13's default context) want an AKI on every certificate.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    # Ed25519/Ed448 sign without a separate hash.
    algorithm = hashes.SHA256() if isinstance(key, _SignedKey) else None
    return builder.sign(key, algorithm)


def ensure_certificate(cert_path: Path, key_path: Path, hosts: Iterable[str]) -> bool:
    """Create a self-signed certificate and key unless both exist; True if created.

    A key without a certificate (say, an interrupted first start) gets a new certificate.
    A certificate without its key is an error: it may be a real one with a mistyped key path,
    and overwriting it would destroy it.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    if cert_path.exists() and key_path.exists():
        return False
    if cert_path.exists():
        raise FileNotFoundError(
            errno.ENOENT,
            f"TLS key missing for existing certificate {cert_path} (not overwriting it)",
            str(key_path),
        )
    key: _AnyKey
    if key_path.exists():
        key = _load_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        key_path.parent.mkdir(parents=True, exist_ok=True)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(key_path, pem_key, 0o600)
    cert = _build_certificate(key, hosts)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def make_ssl_context(
    cert_path: Path, key_path: Path, context_class: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    """A server-side context for ``cert_path``/``key_path`` that refuses TLS below 1.2.

    gevent servers pass ``gevent.ssl.SSLContext`` so that wrapped sockets cooperate.
    """
    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    return context


def fingerprint(cert_path: Path) -> str:
    """The SHA-256 fingerprint of the (first) certificate in a PEM file, hex with colons."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


_handshake_log = logging.getLogger("flaskrtc.tls")


class HandshakeGuard:
    """Mixin for a gevent ``StreamServer`` with TLS: a failed or stalled handshake is closed.

    gevent's own ``wrap_socket_and_handle`` lets a handshake error escape as a greenlet
    traceback (every browser that has not yet accepted a self-signed certificate causes
    one) and waits forever on a client that connects and says nothing. Here the handshake
    gets ``handshake_timeout`` seconds in all and a failure costs one log line.
    """

    handshake_timeout: float = 10.0
    wrap_socket: Any
    ssl_args: Any
    handle: Any

    def use_context(self, context: ssl.SSLContext) -> None:
        """Handshake new connections with ``context`` (a reloaded certificate); connections
        already made keep theirs. One attribute swap: a handshake sees the old context or
        the new one, never half of each."""
        self.wrap_socket = context.wrap_socket

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> Any:
        """Handshake with a deadline, then hand the TLS socket to ``handle``."""
        # A socket timeout alone restarts with every byte received: a client trickling one
        # byte a second would hold the handshake open for ever. The Timeout is one deadline
        # for the whole handshake; the socket timeout stays as a bound on each wait.
        client_socket.settimeout(self.handshake_timeout)
        try:
            with Timeout(self.handshake_timeout, TimeoutError("handshake deadline")):
                tls_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except OSError as err:  # ssl.SSLError and socket timeouts are OSErrors
            _handshake_log.info("%s: TLS handshake failed: %s", address[0], _why(err))
            client_socket.close()
            return None
        tls_socket.settimeout(None)  # from here on the handler keeps its own timeouts
        with closing(tls_socket):
            return self.handle(tls_socket, address)


def _why(err: OSError) -> str:
    """A short reason, with a hint for the common case of an untrusted certificate."""
    if isinstance(err, ssl.SSLError) and any(
        alert in str(err) for alert in ("CERTIFICATE_UNKNOWN", "UNKNOWN_CA", "BAD_CERTIFICATE")
    ):
        return "the client does not trust the certificate (self-signed?)"
    if isinstance(err, TimeoutError):
        return "no handshake in time"
    return str(err) or type(err).__name__
