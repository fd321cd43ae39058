"""Access tokens ([auth] secret): the format of docs/protocol.md §11, expiry, id binding."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from flaskrtc.auth import MAX_TTL, TokenError, make_token, verify_token

SECRET = "a-test-secret-of-some-length"


def reference_token(secret: str, peer_id: str, expiry: int) -> str:
    """The token as docs/protocol.md §11 defines it, computed independently."""
    mac = hmac.new(secret.encode(), f"{expiry}:{peer_id}".encode(), hashlib.sha256).digest()
    return f"{expiry}." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def test_token_format_matches_the_documented_construction() -> None:
    token = make_token(SECRET, "123456", now=1_700_000_000.7, ttl=3600)
    assert token == reference_token(SECRET, "123456", 1_700_003_600)
    expiry, mac = token.split(".")
    assert expiry == "1700003600" and len(mac) == 43 and "=" not in mac


def test_valid_token_returns_its_expiry() -> None:
    token = make_token(SECRET, "alice", now=1000, ttl=60)
    assert verify_token(SECRET, "alice", token, now=1000) == 1060
    assert verify_token(SECRET, "alice", token, now=1059.9) == 1060


def test_expired_token_is_refused() -> None:
    token = make_token(SECRET, "alice", now=1000, ttl=60)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, "alice", token, now=1060)


def test_token_binds_the_peer_id() -> None:
    token = make_token(SECRET, "alice", now=1000, ttl=60)
    for other in ("bob", "alice ", "Alice", "alic"):
        with pytest.raises(TokenError, match="not valid for this peer id"):
            verify_token(SECRET, other, token, now=1000)


def test_other_secret_or_tampered_token_is_refused() -> None:
    token = make_token(SECRET, "alice", now=1000, ttl=60)
    with pytest.raises(TokenError, match="not valid"):
        verify_token("another-secret-entirely", "alice", token, now=1000)
    expiry, mac = token.split(".")
    # A later expiry with the old mac: the expiry is signed too.
    with pytest.raises(TokenError, match="not valid"):
        verify_token(SECRET, "alice", f"{int(expiry) + 100}.{mac}", now=1000)
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    with pytest.raises(TokenError, match="not valid"):
        verify_token(SECRET, "alice", f"{expiry}.{flipped}", now=1000)


@pytest.mark.parametrize(
    "token",
    [
        "nodot",
        "123.",
        ".abc",
        "12a.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "1234567890123.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # 13-digit expiry
        "123.AAAA",
        "123.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "123.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+",
        "١٢٣.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # non-ASCII digits
        " " + "123.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError, match="malformed"):
        verify_token(SECRET, "alice", token, now=0)


def test_missing_token_or_id() -> None:
    with pytest.raises(TokenError, match="required"):
        verify_token(SECRET, "alice", "", now=0)
    token = make_token(SECRET, "alice", now=0, ttl=60)
    with pytest.raises(TokenError, match="no peer id"):
        verify_token(SECRET, "", token, now=0)
    with pytest.raises(TokenError, match="longer than 128"):
        verify_token(SECRET, "x" * 129, token, now=0)


@pytest.mark.parametrize(
    ("secret", "peer_id", "ttl"),
    [("", "a", 60), (SECRET, "", 60), (SECRET, "x" * 129, 60), (SECRET, "a", 0)],
)
def test_make_token_refuses_what_could_never_verify(secret: str, peer_id: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        make_token(secret, peer_id, now=0, ttl=ttl)
    with pytest.raises(ValueError):
        make_token(SECRET, "a", now=0, ttl=MAX_TTL + 1)


def test_unicode_ids_are_signed_as_utf8() -> None:
    token = make_token(SECRET, "Zoë-📱", now=0, ttl=60)
    assert token == reference_token(SECRET, "Zoë-📱", 60)
    assert verify_token(SECRET, "Zoë-📱", token, now=1) == 60
