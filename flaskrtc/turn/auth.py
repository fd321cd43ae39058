"""Long-term credential checks for the TURN server (RFC 8489 §9.2), without state.

Nonces are an HMAC over their own timestamp and the client's IP address, so issuing one
costs no memory (a flood of unauthenticated Allocates cannot grow the server) and a nonce
is only good from the address it was given to, for ``nonce_lifetime`` seconds; after that
the server answers 438 Stale Nonce with a fresh one (RFC 8489 §9.2.4).

Passwords come from the TURN REST secret (coturn's use-auth-secret, see
:mod:`flaskrtc.turn.credentials`) or from static users in the config.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping

from flaskrtc.turn.credentials import check_credential
from flaskrtc.turn.stun import long_term_key

NONCE_LIFETIME = 600.0
_MAC_HEX = 24  # 96 bits of HMAC-SHA256 is plenty for a short-lived nonce


class NonceCheck(enum.Enum):
    """What :meth:`Nonces.check` found."""

    VALID = "valid"
    STALE = "stale"  # genuine but expired: 438 with a new nonce
    INVALID = "invalid"  # not ours, or for another client: 401 with a new nonce


class Nonces:
    """Issues and checks stateless nonces bound to a client IP address."""

    def __init__(self, key: bytes, lifetime: float = NONCE_LIFETIME) -> None:
        self._key = key
        self.lifetime = lifetime

    def _mac(self, stamp: str, client_ip: str) -> str:
        msg = f"{stamp}|{client_ip}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:_MAC_HEX]

    def issue(self, client_ip: str, now: float) -> str:
        """A fresh nonce for ``client_ip``."""
        stamp = format(int(now), "x")
        return stamp + self._mac(stamp, client_ip)

    def check(self, nonce: str, client_ip: str, now: float) -> NonceCheck:
        """Whether ``nonce`` was issued by us to ``client_ip``, and is still fresh."""
        if len(nonce) <= _MAC_HEX or len(nonce) > _MAC_HEX + 16:
            return NonceCheck.INVALID
        stamp, mac = nonce[:-_MAC_HEX], nonce[-_MAC_HEX:]
        expected = self._mac(stamp, client_ip).encode()
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected):
            return NonceCheck.INVALID
        issued = int(stamp, 16)  # ours, so it is hex
        if not issued - 5 <= now < issued + self.lifetime:
            return NonceCheck.STALE
        return NonceCheck.VALID


class Credentials:
    """Finds the long-term key of a username: static users first, then the REST secret."""

    def __init__(self, realm: str, secret: str, users: Mapping[str, str] | None = None) -> None:
        self.realm = realm
        self._secret = secret
        self._static = {
            name: long_term_key(name, realm, password) for name, password in (users or {}).items()
        }

    def user_of(self, username: str) -> str:
        """The quota key of ``username``: a static user's name, or the user part of a REST
        username ``<expiry>:<user>``, so that every fresh credential of one user shares one
        quota. A bare-timestamp REST username (coturn's uclient sends them; /api/turn never
        hands them out) has no user part and is its own key."""
        if username in self._static:
            return username
        stamp, sep, user = username.partition(":")
        return user if sep and stamp.isascii() and stamp.isdigit() else username

    def failure(self, username: str, realm: str, now: float) -> str:
        """Why ``username``/``realm`` has no key at ``now``: ``wrong-realm``, ``expired``
        (a REST username past its expiry) or ``unknown-user``; ``wrong-password`` when it
        has one (its MESSAGE-INTEGRITY must have failed)."""
        if realm != self.realm:
            return "wrong-realm"
        if self.key_for(username, now) is not None:
            return "wrong-password"
        stamp = username.partition(":")[0]
        if stamp.isascii() and stamp.isdigit() and len(stamp) <= 12:
            return "expired"
        return "unknown-user"

    def key_for(self, username: str, now: float) -> bytes | None:
        """The key for ``username`` at ``now``, or None (unknown user, expired credential)."""
        key = self._static.get(username)
        if key is not None:
            return key
        password = check_credential(self._secret, username, now)
        if password is None:
            return None
        return long_term_key(username, self.realm, password)
