"""Stateless nonces and credential lookup for the TURN server, with time passed in."""

from __future__ import annotations

import hashlib

from flaskrtc.turn.auth import Credentials, NonceCheck, Nonces
from flaskrtc.turn.credentials import make_credential
from flaskrtc.turn.stun import long_term_key


def test_long_term_key_is_md5_of_user_realm_password() -> None:
    assert long_term_key("u", "r", "p") == hashlib.md5(b"u:r:p").digest()


def test_nonce_valid_for_its_client_until_it_expires() -> None:
    nonces = Nonces(b"k" * 32, lifetime=600)
    nonce = nonces.issue("192.0.2.1", now=1000.0)
    assert nonces.check(nonce, "192.0.2.1", now=1000.0) is NonceCheck.VALID
    assert nonces.check(nonce, "192.0.2.1", now=1599.0) is NonceCheck.VALID
    assert nonces.check(nonce, "192.0.2.1", now=1600.0) is NonceCheck.STALE
    assert nonces.check(nonce, "192.0.2.1", now=900.0) is NonceCheck.STALE  # from the future


def test_nonce_is_bound_to_client_ip_and_key() -> None:
    nonces = Nonces(b"k" * 32)
    nonce = nonces.issue("192.0.2.1", now=1000.0)
    assert nonces.check(nonce, "192.0.2.2", now=1000.0) is NonceCheck.INVALID
    assert Nonces(b"x" * 32).check(nonce, "192.0.2.1", now=1000.0) is NonceCheck.INVALID


def test_tampered_or_garbage_nonces_are_invalid() -> None:
    nonces = Nonces(b"k" * 32)
    nonce = nonces.issue("::1", now=1000.0)
    later = format(2000, "x") + nonce[-24:]  # move the timestamp, keep the MAC
    assert nonces.check(later, "::1", now=2000.0) is NonceCheck.INVALID
    for bad in ("", "abc", "z" * 30, "0" * 100, nonce[:-1], "é" * 30):
        assert nonces.check(bad, "::1", now=1000.0) is NonceCheck.INVALID


def test_rest_credentials_checked_from_the_secret_alone() -> None:
    creds = Credentials("flutter-webrtc", "s3cret")
    cred = make_credential("s3cret", "alice", now=1000, ttl=60)
    key = creds.key_for(cred.username, now=1030)
    assert key == long_term_key(cred.username, "flutter-webrtc", cred.password)
    assert creds.key_for(cred.username, now=1061) is None  # expired
    other = make_credential("not-the-secret", "alice", now=1000, ttl=60)
    # A username under another secret yields a key, but not the one its password makes.
    assert creds.key_for(other.username, now=1030) != long_term_key(
        other.username, "flutter-webrtc", other.password
    )
    assert creds.key_for("alice", now=1000) is None  # not a REST username


def test_static_users() -> None:
    creds = Credentials("r", "s", {"bob": "pw"})
    assert creds.key_for("bob", now=0) == long_term_key("bob", "r", "pw")
    assert creds.key_for("carol", now=0) is None


def test_nonce_timestamps_of_up_to_16_hex_digits_are_accepted_and_longer_refused() -> None:
    # A nonce is <hex timestamp><24 hex of HMAC>: the stamp may take 64 bits, no more.
    nonces = Nonces(b"k" * 32)
    late = float(1 << 62)  # a 16-digit hex stamp
    nonce = nonces.issue("192.0.2.1", late)
    assert len(nonce) == 16 + 24
    assert nonces.check(nonce, "192.0.2.1", late) is NonceCheck.VALID
    later = float(1 << 64)  # 17 hex digits: refused before the HMAC is even checked
    nonce = nonces.issue("192.0.2.1", later)
    assert len(nonce) == 17 + 24
    assert nonces.check(nonce, "192.0.2.1", later) is NonceCheck.INVALID


def test_a_nonce_with_an_empty_timestamp_is_invalid_not_a_crash() -> None:
    # Forged: the HMAC of an empty stamp, which has no time in it.
    import hmac

    key = b"k" * 32
    mac = hmac.new(key, b"|192.0.2.1", hashlib.sha256).hexdigest()[:24]
    assert Nonces(key).check(mac, "192.0.2.1", 1000.0) is NonceCheck.INVALID


def test_nonce_tolerates_a_clock_5_seconds_behind_the_issuer() -> None:
    # A check up to 5 s before the stamp (the clock stepped back) still counts as fresh.
    nonces = Nonces(b"k" * 32, lifetime=600)
    nonce = nonces.issue("192.0.2.1", 1000.0)
    assert nonces.check(nonce, "192.0.2.1", 995.0) is NonceCheck.VALID
    assert nonces.check(nonce, "192.0.2.1", 994.9) is NonceCheck.STALE
    assert nonces.check(nonce, "192.0.2.1", 1599.9) is NonceCheck.VALID
    assert nonces.check(nonce, "192.0.2.1", 1600.0) is NonceCheck.STALE


def test_failure_reasons() -> None:
    creds = Credentials("realm", "secret", {"static": "pw"})
    live = make_credential("secret", "alice", now=1000, ttl=60).username
    assert creds.failure(live, "realm", 1000) == "wrong-password"  # it has a key
    assert creds.failure("static", "realm", 1000) == "wrong-password"
    assert creds.failure(live, "other", 1000) == "wrong-realm"
    assert creds.failure(live, "realm", 2000) == "expired"
    assert creds.failure("000000000001:bob", "realm", 1000) == "expired"  # 12 digits
    assert creds.failure("0000000000001:bob", "realm", 1000) == "unknown-user"  # 13
    assert creds.failure("bob", "realm", 1000) == "unknown-user"
