"""Access tokens for ``/ws`` and ``/api/turn`` when ``[auth] secret`` is set (sans-I/O).

The same idea as TURN's REST credentials: nothing is stored, a token is checked from the
shared secret alone. A token is ``<expiry>.<mac>`` where ``expiry`` is a Unix time in whole
seconds and ``mac`` is the unpadded base64url HMAC-SHA256, keyed with the secret, of
``"<expiry>:<peer id>"`` (UTF-8). The peer id travels beside it (``?id=``), and the token is
only good for that id. docs/protocol.md §11 is the reference.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from flaskrtc.signal.protocol import MAX_ID_LENGTH

# The longest lifetime `flaskrtc token` hands out: ten years.
MAX_TTL = 10 * 365 * 86400
# An expiry of up to 12 digits (the year 33658) and 43 base64url characters of SHA-256.
_TOKEN_RE = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{43})", re.ASCII)


class TokenError(Exception):
    """A token that does not grant access; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _mac(secret: str, expiry: int, peer_id: str) -> str:
    digest = hmac.new(
        secret.encode("utf-8"), f"{expiry}:{peer_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_id(peer_id: str) -> None:
    if not peer_id:
        raise TokenError("no peer id (?id=) given with the token")
    if len(peer_id) > MAX_ID_LENGTH:
        raise TokenError(f"peer id longer than {MAX_ID_LENGTH} characters")


def make_token(secret: str, peer_id: str, now: float, ttl: int) -> str:
    """A token for ``peer_id`` valid for ``ttl`` seconds from ``now``."""
    if not secret:
        raise ValueError("no secret: set [auth] secret")
    if not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be from 1 to {MAX_TTL} seconds")
    try:
        _check_id(peer_id)
    except TokenError as err:
        raise ValueError(err.reason) from None
    expiry = int(now) + ttl
    return f"{expiry}.{_mac(secret, expiry, peer_id)}"


def verify_token(secret: str, peer_id: str, token: str, now: float) -> int:
    """Check ``token`` for ``peer_id`` at ``now``; return its expiry or raise TokenError."""
    if not token:
        raise TokenError("a token (?token=) is required")
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        raise TokenError("malformed token")
    _check_id(peer_id)
    expiry = int(match.group(1))
    # Compared in constant time: the position of the first wrong character must not leak.
    if not hmac.compare_digest(match.group(2), _mac(secret, expiry, peer_id)):
        raise TokenError("token not valid for this peer id")
    if now >= expiry:
        raise TokenError("token expired")
    return expiry
