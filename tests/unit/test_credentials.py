"""TURN REST credential maths (coturn's use-auth-secret), without sockets or clocks."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from flaskrtc.turn.credentials import (
    CredentialError,
    check_credential,
    make_credential,
    rest_password,
)


def test_username_is_expiry_then_user() -> None:
    cred = make_credential("s3cret", "flutter-webrtc", now=1_700_000_000.7, ttl=86400)
    assert cred.username == "1700086400:flutter-webrtc"
    assert cred.expires == 1_700_086_400
    assert cred.ttl == 86400


def test_password_is_padded_base64_hmac_sha1_like_coturn() -> None:
    # Computed independently of the module: base64(HMAC-SHA1(secret, username)).
    expected = base64.b64encode(
        hmac.new(b"north", b"1600000000:alice", hashlib.sha1).digest()
    ).decode()
    assert rest_password("north", "1600000000:alice") == expected
    assert expected.endswith("=")  # 20-byte digest: padding is kept
    assert len(expected) == 28


def test_check_accepts_live_and_rejects_expired() -> None:
    cred = make_credential("k", "bob", now=1000, ttl=60)
    assert check_credential("k", cred.username, now=1059) == cred.password
    assert check_credential("k", cred.username, now=1060) == cred.password
    assert check_credential("k", cred.username, now=1061) is None


def test_bare_timestamp_username_is_accepted_like_coturn() -> None:
    assert check_credential("k", "1060", now=1000) == rest_password("k", "1060")
    assert check_credential("k", "999", now=1000) is None


def test_check_rejects_usernames_without_a_timestamp() -> None:
    assert check_credential("k", "bob", now=0) is None
    assert check_credential("k", "abc:bob", now=0) is None
    assert check_credential("k", "-5:bob", now=0) is None
    assert check_credential("k", "١٢:bob", now=0) is None  # non-ASCII digits


def test_other_secret_gives_other_password() -> None:
    cred = make_credential("k1", "bob", now=0, ttl=60)
    assert check_credential("k2", cred.username, now=0) != cred.password


@pytest.mark.parametrize("user", ["", "a:b", "x" * 129, "tab\there"])
def test_bad_users_are_refused(user: str) -> None:
    with pytest.raises(CredentialError):
        make_credential("k", user, now=0, ttl=60)


def test_user_part_of_exactly_the_maximum_length_is_allowed() -> None:
    from flaskrtc.turn.credentials import MAX_USER_LENGTH, validate_user

    assert MAX_USER_LENGTH == 128
    assert validate_user("u" * 128) == "u" * 128
    assert make_credential("s", "u" * 128, now=1000, ttl=60).username == "1060:" + "u" * 128
    with pytest.raises(CredentialError):
        validate_user("u" * 129)


def test_expiry_stamps_of_up_to_12_digits_are_read() -> None:
    # 12 decimal digits reach the year 33658; a longer stamp is not a REST username.
    stamp12 = "999999999999"
    assert check_credential("s", stamp12 + ":u", now=1000) == rest_password("s", stamp12 + ":u")
    assert check_credential("s", "0" + stamp12 + ":u", now=1000) is None
