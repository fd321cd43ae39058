"""TURN REST API credentials (draft-uberti-behave-turn-rest-00), as coturn checks them.

coturn's ``use-auth-secret`` scheme: the username is ``<expiry unix time>:<user>`` and the
password is the standard, padded base64 of HMAC-SHA1(shared secret, username). Nothing is
stored: any server holding the secret can check a credential, before or after a restart.
Pure functions with ``now`` passed in, so they are tested without clocks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

# A user part is what the client asked for; keep it printable, bounded and free of the
# ':' separator so that "<expiry>:<user>" parses one way only (coturn splits on ':').
MAX_USER_LENGTH = 128


class CredentialError(ValueError):
    """The requested user name cannot be turned into a credential; the text says why."""


@dataclass(frozen=True)
class RestCredential:
    """One time-limited TURN credential."""

    username: str
    password: str
    ttl: int
    expires: int


def validate_user(user: str) -> str:
    """Return ``user`` if it may be used as the user part, else raise CredentialError."""
    if not user:
        raise CredentialError("username must not be empty")
    if len(user) > MAX_USER_LENGTH:
        raise CredentialError(f"username longer than {MAX_USER_LENGTH} characters")
    if ":" in user:
        raise CredentialError("username must not contain ':'")
    if not user.isprintable():
        raise CredentialError("username must be printable text")
    return user


def rest_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), padded, as coturn computes it."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def make_credential(secret: str, user: str, now: float, ttl: int) -> RestCredential:
    """Issue a credential for ``user`` that expires ``ttl`` seconds after ``now``."""
    validate_user(user)
    expires = int(now) + ttl
    username = f"{expires}:{user}"
    return RestCredential(username, rest_password(secret, username), ttl, expires)


def check_credential(secret: str, username: str, now: float) -> str | None:
    """Return the password for ``username`` if it is a live REST username, else None.

    The timestamp before the first ':' is the expiry; a username that is a bare timestamp
    counts too (coturn accepts both, and its turnutils_uclient sends the bare form). A
    username without a timestamp, or whose expiry has passed, has no valid password.
    """
    stamp = username.partition(":")[0]
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        return None
    if int(stamp) < now:
        return None
    return rest_password(secret, username)
