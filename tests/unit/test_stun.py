"""The sans-I/O STUN/TURN codec: RFC 5769 vectors, every attribute, every error, fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flaskrtc.turn import stun
from flaskrtc.turn.stun import Attr, Class, Message, Method, StunError


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- RFC 5769 test vectors (typed in from the RFC text) -----------------------------------

SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
VECTOR_TID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")

# §2.1 Sample Request
SAMPLE_REQUEST = unhex(
    """
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86
    fa 87 df ae 80 22 00 10 53 54 55 4e 20 74 65 73
    74 20 63 6c 69 65 6e 74 00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36 00 06 00 09
    65 76 74 6a 3a 68 36 76 59 20 20 20 00 08 00 14
    9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49
    c1 b5 71 a2 80 28 00 04 e5 7a 3b cf
    """
)

# §2.2 Sample IPv4 Response
SAMPLE_IPV4_RESPONSE = unhex(
    """
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86
    fa 87 df ae 80 22 00 0b 74 65 73 74 20 76 65 63
    74 6f 72 20 00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9
    2a f9 ba 53 f0 6b e7 d7 80 28 00 04 c0 7d 4c 96
    """
)

# §2.3 Sample IPv6 Response
SAMPLE_IPV6_RESPONSE = unhex(
    """
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86
    fa 87 df ae 80 22 00 0b 74 65 73 74 20 76 65 63
    74 6f 72 20 00 20 00 14 00 02 a1 47 01 13 a9 fa
    a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9 00 08 00 14
    a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75
    bf e3 ed 41 80 28 00 04 c8 fb 0b 4c
    """
)

# §2.4 Sample Request with Long-Term Authentication
SAMPLE_LONG_TERM_REQUEST = unhex(
    """
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0
    29 da 41 2e 00 06 00 12 e3 83 9e e3 83 88 e3 83
    aa e3 83 83 e3 82 af e3 82 b9 00 00 00 15 00 1c
    66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34
    6f 4c 39 46 53 54 76 79 36 34 73 41 00 14 00 0b
    65 78 61 6d 70 6c 65 2e 6f 72 67 00 00 08 00 14
    f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2
    8c a8 96 66
    """
)
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # "matrix" in katakana
LONG_TERM_PASSWORD = "TheMatrIX"  # after SASLprep of "The<U+00AD>M<U+00AA>tr<U+2168>"
LONG_TERM_NONCE = "f//499k954d6OL34oL9FSTvy64sA"
LONG_TERM_REALM = "example.org"


def test_rfc5769_sample_request() -> None:
    msg = stun.parse(SAMPLE_REQUEST)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.BINDING, Class.REQUEST, VECTOR_TID)
    assert list(msg.attributes) == [
        Attr.SOFTWARE,
        Attr.PRIORITY,
        Attr.ICE_CONTROLLED,
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.FINGERPRINT,
    ]
    assert msg.get(Attr.SOFTWARE) == "STUN test client"
    assert msg.get(Attr.PRIORITY) == 0x6E0001FF
    assert msg.get(Attr.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert msg.get(Attr.USERNAME) == "evtj:h6vY"
    assert msg.get(Attr.MESSAGE_INTEGRITY) == unhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")
    assert msg.get(Attr.FINGERPRINT) == 0xE57A3BCF
    assert msg.integrity_offset == 76
    assert msg.raw == SAMPLE_REQUEST
    assert msg.unknown_required == ()
    # Short-term credentials: the key is the password itself (RFC 8489 §9.1.1).
    assert stun.check_integrity(msg, SHORT_TERM_PASSWORD)
    assert not stun.check_integrity(msg, b"VOkJxbRl1RmTxUk/WvJxBT")
    again = stun.serialize(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True, padding=b" ")
    assert again == SAMPLE_REQUEST
    # The padding bytes are covered by the HMAC and the CRC: zero padding changes both.
    zero_padded = stun.serialize(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
    assert zero_padded != SAMPLE_REQUEST
    assert zero_padded[:73] == SAMPLE_REQUEST[:73]
    assert stun.check_integrity(stun.parse(zero_padded), SHORT_TERM_PASSWORD)


def test_rfc5769_ipv4_response() -> None:
    msg = stun.parse(SAMPLE_IPV4_RESPONSE)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.BINDING, Class.SUCCESS, VECTOR_TID)
    assert msg.attributes == {
        Attr.SOFTWARE: "test vector",
        Attr.XOR_MAPPED_ADDRESS: ("192.0.2.1", 32853),
        Attr.MESSAGE_INTEGRITY: unhex("2b91f599fd9e90c38c7489f92af9ba53f06be7d7"),
        Attr.FINGERPRINT: 0xC07D4C96,
    }
    assert stun.check_integrity(msg, SHORT_TERM_PASSWORD)
    assert not stun.check_integrity(msg, b"")
    again = stun.serialize(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True, padding=b" ")
    assert again == SAMPLE_IPV4_RESPONSE


def test_rfc5769_ipv6_response() -> None:
    msg = stun.parse(SAMPLE_IPV6_RESPONSE)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.BINDING, Class.SUCCESS, VECTOR_TID)
    assert msg.attributes == {
        Attr.SOFTWARE: "test vector",
        Attr.XOR_MAPPED_ADDRESS: ("2001:db8:1234:5678:11:2233:4455:6677", 32853),
        Attr.MESSAGE_INTEGRITY: unhex("a382954e4be67bf11784c97c8292c275bfe3ed41"),
        Attr.FINGERPRINT: 0xC8FB0B4C,
    }
    assert stun.check_integrity(msg, SHORT_TERM_PASSWORD)
    again = stun.serialize(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True, padding=b" ")
    assert again == SAMPLE_IPV6_RESPONSE


def test_rfc5769_long_term_request() -> None:
    msg = stun.parse(SAMPLE_LONG_TERM_REQUEST)
    assert (msg.method, msg.cls) == (Method.BINDING, Class.REQUEST)
    assert msg.transaction_id == unhex("78 ad 34 33 c6 ad 72 c0 29 da 41 2e")
    assert msg.attributes == {
        Attr.USERNAME: LONG_TERM_USERNAME,
        Attr.NONCE: LONG_TERM_NONCE,
        Attr.REALM: LONG_TERM_REALM,
        Attr.MESSAGE_INTEGRITY: unhex("f67024656dd64a3e02b8e0712e85c9a28ca89666"),
    }
    assert Attr.FINGERPRINT not in msg.attributes  # this vector has none
    key = stun.long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD)
    assert stun.check_integrity(msg, key)
    assert not stun.check_integrity(msg, LONG_TERM_PASSWORD.encode())  # not a short-term key
    assert stun.serialize(msg, integrity_key=key) == SAMPLE_LONG_TERM_REQUEST


def test_long_term_key_is_md5_of_user_realm_password() -> None:
    expected = hashlib.md5(b"alice:example.org:s3cret").digest()
    assert stun.long_term_key("alice", "example.org", "s3cret") == expected
    assert len(expected) == 16


# --- raw message builder, independent of serialize() --------------------------------------

TID = bytes(range(1, 13))
COOKIE = b"\x21\x12\xa4\x42"


def attr(atype: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack("!HH", atype, len(value)) + value + pad * (-len(value) % 4)


def build(
    *attrs: bytes,
    msg_type: int = 0x0001,
    tid: bytes = TID,
    cookie: bytes = COOKIE,
    length: int | None = None,
    fingerprint: bool = False,
) -> bytes:
    body = b"".join(attrs)
    if fingerprint:
        head = struct.pack("!HH", msg_type, len(body) + 8) + cookie + tid
        crc = zlib.crc32(head + body) ^ 0x5354554E
        body += struct.pack("!HHI", 0x8028, 4, crc)
    size = len(body) if length is None else length
    return struct.pack("!HH", msg_type, size) + cookie + tid + body


# --- message type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "cls", "wire"),
    [
        (Method.BINDING, Class.REQUEST, 0x0001),
        (Method.BINDING, Class.SUCCESS, 0x0101),
        (Method.BINDING, Class.ERROR, 0x0111),
        (Method.ALLOCATE, Class.REQUEST, 0x0003),
        (Method.ALLOCATE, Class.SUCCESS, 0x0103),
        (Method.ALLOCATE, Class.ERROR, 0x0113),
        (Method.REFRESH, Class.ERROR, 0x0114),
        (Method.SEND, Class.INDICATION, 0x0016),
        (Method.DATA, Class.INDICATION, 0x0017),
        (Method.CREATE_PERMISSION, Class.REQUEST, 0x0008),
        (Method.CHANNEL_BIND, Class.SUCCESS, 0x0109),
        (Method.CONNECT, Class.REQUEST, 0x000A),
        (Method.CONNECTION_BIND, Class.SUCCESS, 0x010B),
        (Method.CONNECTION_ATTEMPT, Class.INDICATION, 0x001C),
        (0xFFF, Class.ERROR, 0x3FFF),
        (0x080, Class.REQUEST, 0x0200),  # M7 moves up past C1
        (0x010, Class.REQUEST, 0x0020),  # M4 moves up past C0
    ],
)
def test_message_type_interleaves_method_and_class_bits(method: int, cls: int, wire: int) -> None:
    data = stun.serialize(Message(method, cls, TID))
    assert data == struct.pack("!HH", wire, 0) + COOKIE + TID
    parsed = stun.parse(data)
    assert (parsed.method, parsed.cls) == (method, cls)


def test_every_method_and_class_round_trips() -> None:
    for method in range(0x1000):
        for cls in range(4):
            parsed = stun.parse(stun.serialize(Message(method, cls, TID)))
            assert (parsed.method, parsed.cls) == (method, cls)


def test_known_methods_and_classes_parse_as_enums() -> None:
    msg = stun.parse(build(msg_type=0x0113))
    assert msg.method is Method.ALLOCATE
    assert msg.cls is Class.ERROR
    unknown = stun.parse(build(msg_type=0x3EEF))  # method 0xFFF: not a Method, a plain int
    assert (unknown.method, unknown.cls) == (0xFFF, Class.REQUEST)


# --- attribute values ----------------------------------------------------------------------

ROUND_TRIPS: list[tuple[int, Any, bytes | None]] = [
    # (type, value, expected value bytes on the wire or None)
    (Attr.MAPPED_ADDRESS, ("192.0.2.1", 32853), unhex("0001 8055 c0000201")),
    (Attr.MAPPED_ADDRESS, ("2001:db8::1", 1), unhex("0002 0001 20010db8000000000000000000000001")),
    (Attr.ALTERNATE_SERVER, ("198.51.100.7", 3478), unhex("0001 0d96 c6336407")),
    (Attr.RESPONSE_ORIGIN, ("10.0.0.1", 3478), None),
    (Attr.OTHER_ADDRESS, ("::1", 3479), None),
    (Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 32853), unhex("0001 a147 e112a643")),
    (Attr.XOR_PEER_ADDRESS, ("203.0.113.5", 0), unhex("0001 2112 ea12d547")),
    # An IPv4-mapped IPv6 address stays IPv6 (str() spelling differs between Pythons).
    (Attr.XOR_RELAYED_ADDRESS, (str(ipaddress.ip_address("::ffff:127.0.0.1")), 65535), None),
    (Attr.XOR_PEER_ADDRESS, ("fe80::1", 49152), None),
    (Attr.USERNAME, "1700000000:alice", b"1700000000:alice"),
    (Attr.USERNAME, "\u00e9l\u00e8ve", "\u00e9l\u00e8ve".encode()),
    (Attr.REALM, "flaskrtc", b"flaskrtc"),
    (Attr.NONCE, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA", None),
    (Attr.SOFTWARE, "flaskrtc 1.0", b"flaskrtc 1.0"),
    (Attr.ALTERNATE_DOMAIN, "turn.example.org", b"turn.example.org"),
    (Attr.USERNAME, "", b""),
    (Attr.ERROR_CODE, (401, "Unauthorized"), unhex("00000401") + b"Unauthorized"),
    (Attr.ERROR_CODE, (420, "Unknown Attribute"), unhex("00000414") + b"Unknown Attribute"),
    (Attr.ERROR_CODE, (438, "Stale Nonce"), unhex("00000426") + b"Stale Nonce"),
    (Attr.ERROR_CODE, (441, "Wrong Credentials"), unhex("00000429") + b"Wrong Credentials"),
    (Attr.ERROR_CODE, (486, "Allocation Quota Reached"), None),
    (Attr.ERROR_CODE, (508, "Insufficient Capacity"), unhex("00000508") + b"Insufficient Capacity"),
    (Attr.ERROR_CODE, (300, ""), unhex("00000300")),
    (Attr.ERROR_CODE, (699, "x"), unhex("00000663") + b"x"),
    (Attr.ADDRESS_ERROR_CODE, (2, 440, "Address Family not Supported"), None),
    (Attr.ADDRESS_ERROR_CODE, (1, 508, ""), unhex("01000508")),
    (Attr.UNKNOWN_ATTRIBUTES, (0x0003, 0x7FFF, 0x001B), unhex("0003 7fff 001b")),
    (Attr.UNKNOWN_ATTRIBUTES, (), b""),
    (Attr.LIFETIME, 600, unhex("00000258")),
    (Attr.LIFETIME, 0, unhex("00000000")),
    (Attr.LIFETIME, 0xFFFFFFFF, unhex("ffffffff")),
    (Attr.PRIORITY, 0x6E0001FF, unhex("6e0001ff")),
    (Attr.CONNECTION_ID, 0x12345678, unhex("12345678")),
    (Attr.ICE_CONTROLLED, 0x932FF9B151263B36, unhex("932ff9b151263b36")),
    (Attr.ICE_CONTROLLING, 1, unhex("0000000000000001")),
    (Attr.CHANNEL_NUMBER, 0x4000, unhex("40000000")),
    (Attr.CHANNEL_NUMBER, 0x4FFF, unhex("4fff0000")),
    (Attr.REQUESTED_TRANSPORT, 17, unhex("11000000")),
    (Attr.REQUESTED_TRANSPORT, 6, unhex("06000000")),
    (Attr.REQUESTED_ADDRESS_FAMILY, 0x02, unhex("02000000")),
    (Attr.REQUESTED_ADDRESS_FAMILY, 0x07, unhex("07000000")),  # the server answers 440
    (Attr.ADDITIONAL_ADDRESS_FAMILY, 0x02, unhex("02000000")),
    (Attr.EVEN_PORT, True, unhex("80")),
    (Attr.EVEN_PORT, False, unhex("00")),
    (Attr.DONT_FRAGMENT, True, b""),
    (Attr.USE_CANDIDATE, True, b""),
    (Attr.DATA, b"\x00\x01payload", b"\x00\x01payload"),
    (Attr.DATA, b"", b""),
    (Attr.RESERVATION_TOKEN, b"12345678", b"12345678"),
    (Attr.USERHASH, bytes(range(32)), bytes(range(32))),
    (Attr.MESSAGE_INTEGRITY_SHA256, bytes(16), bytes(16)),
    (Attr.MESSAGE_INTEGRITY_SHA256, bytes(range(32)), bytes(range(32))),
    (Attr.PASSWORD_ALGORITHM, (2, b""), unhex("00020000")),
    (Attr.PASSWORD_ALGORITHM, (7, b"abc"), unhex("00070003") + b"abc"),
    (Attr.PASSWORD_ALGORITHMS, ((1, b""), (2, b"")), unhex("00010000 00020000")),
    (Attr.PASSWORD_ALGORITHMS, ((9, b"xy"), (2, b"")), unhex("00090002 78790000 00020000")),
    (Attr.ICMP, (3, 4, 1400), unhex("00000304 00000578")),
    (0x8123, b"optional unknown", b"optional unknown"),
]


@pytest.mark.parametrize(("atype", "value", "wire"), ROUND_TRIPS)
def test_attribute_round_trip(atype: int, value: Any, wire: bytes | None) -> None:
    data = stun.serialize(Message(Method.ALLOCATE, Class.REQUEST, TID, {atype: value}))
    assert len(data) % 4 == 0
    if wire is not None:
        assert data[20:] == attr(atype, wire)
    assert stun.parse(data).attributes == {atype: value}


def test_xor_ipv6_address_uses_the_transaction_id() -> None:
    value = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    one = stun.serialize(Message(1, 0, TID, {Attr.XOR_PEER_ADDRESS: value}))
    other = stun.serialize(Message(1, 0, bytes(12), {Attr.XOR_PEER_ADDRESS: value}))
    assert one[28:32] == other[28:32]  # the first 32 bits are XORed with the cookie only
    assert one[32:] != other[32:]
    # Decoding with the wrong transaction id gives another address.
    swapped = stun.parse(one[:8] + bytes(12) + one[20:])
    assert swapped.get(Attr.XOR_PEER_ADDRESS) != value
    # IPv4 does not involve the transaction id.
    v4 = stun.serialize(Message(1, 0, TID, {Attr.XOR_PEER_ADDRESS: ("10.1.2.3", 5)}))
    assert stun.parse(v4[:8] + bytes(12) + v4[20:]).get(Attr.XOR_PEER_ADDRESS) == ("10.1.2.3", 5)


def test_tie_breaker_may_be_given_as_bytes() -> None:
    value = unhex("932ff9b151263b36")
    data = stun.serialize(Message(1, 0, TID, {Attr.ICE_CONTROLLING: value}))
    assert stun.parse(data).get(Attr.ICE_CONTROLLING) == 0x932FF9B151263B36


def test_channel_number_ignores_the_rffu_bits() -> None:
    msg = stun.parse(build(attr(Attr.CHANNEL_NUMBER, unhex("4001 ffff"))))
    assert msg.get(Attr.CHANNEL_NUMBER) == 0x4001


def test_first_byte_attributes_ignore_the_rffu_bits() -> None:
    msg = stun.parse(
        build(
            attr(Attr.REQUESTED_TRANSPORT, unhex("11 ffffff")),
            attr(Attr.REQUESTED_ADDRESS_FAMILY, unhex("01 000001")),
            attr(Attr.EVEN_PORT, unhex("ff")),
        )
    )
    assert msg.get(Attr.REQUESTED_TRANSPORT) == 17
    assert msg.get(Attr.REQUESTED_ADDRESS_FAMILY) == 1
    assert msg.get(Attr.EVEN_PORT) is True
    assert stun.parse(build(attr(Attr.EVEN_PORT, unhex("7f")))).get(Attr.EVEN_PORT) is False


def test_address_ignores_its_first_byte() -> None:
    msg = stun.parse(build(attr(Attr.MAPPED_ADDRESS, unhex("ff01 0050 7f000001"))))
    assert msg.get(Attr.MAPPED_ADDRESS) == ("127.0.0.1", 80)


def test_error_code_ignores_reserved_bits() -> None:
    msg = stun.parse(build(attr(Attr.ERROR_CODE, unhex("fffffc26") + b"Stale Nonce")))
    assert msg.get(Attr.ERROR_CODE) == (438, "Stale Nonce")


def test_serialize_pads_with_the_given_byte() -> None:
    msg = Message(1, 0, TID, {Attr.USERNAME: "abcde"})
    assert stun.serialize(msg)[-3:] == b"\x00\x00\x00"
    assert stun.serialize(msg, padding=b" ")[-3:] == b"   "
    # The attribute length counts the value only (RFC 8489 §14).
    assert stun.serialize(msg)[20:24] == unhex("0006 0005")


def test_parse_accepts_bytearray_and_memoryview() -> None:
    for data in (bytearray(SAMPLE_REQUEST), memoryview(SAMPLE_REQUEST)):
        msg = stun.parse(data)  # type: ignore[arg-type]
        assert type(msg.raw) is bytes
        assert type(msg.transaction_id) is bytes
        assert stun.check_integrity(msg, SHORT_TERM_PASSWORD)


# --- message-level rules -------------------------------------------------------------------


def test_unknown_comprehension_required_attributes_are_reported() -> None:
    msg = stun.parse(
        build(
            attr(0x0003, unhex("00000004")),  # CHANGE-REQUEST (RFC 5780): not supported here
            attr(Attr.LIFETIME, unhex("00000258")),
            attr(0x7FFF, b"x"),
            attr(0x0000, b""),
        )
    )
    assert msg.unknown_required == (0x0003, 0x7FFF, 0x0000)
    # Unknown types are kept as raw bytes.
    assert msg.attributes == {0x0003: unhex("00000004"), Attr.LIFETIME: 600, 0x7FFF: b"x", 0: b""}


def test_unknown_comprehension_optional_attributes_are_not_reported() -> None:
    msg = stun.parse(build(attr(0x8000 + 0x7FF, b"abc"), attr(0xFFFF, b"")))
    assert msg.unknown_required == ()
    assert msg.attributes == {0x87FF: b"abc", 0xFFFF: b""}


def test_duplicate_attributes_keep_the_first() -> None:
    msg = stun.parse(
        build(
            attr(Attr.LIFETIME, unhex("00000258")),
            attr(Attr.LIFETIME, unhex("00000000")),
            attr(0x7FF0, b"first"),
            attr(0x7FF0, b"second"),
        )
    )
    # get() sees the first occurrence (RFC 8489 §14); the others are kept aside.
    assert msg.attributes == {Attr.LIFETIME: 600, 0x7FF0: b"first"}
    assert msg.get(Attr.LIFETIME) == 600
    assert msg.repeated == [(Attr.LIFETIME, 0), (0x7FF0, b"second")]
    assert msg.unknown_required == (0x7FF0,)
    # Repeats are decoded, so a malformed one is an error like any other.
    with pytest.raises(StunError) as info:
        stun.parse(build(attr(Attr.LIFETIME, unhex("00000258")), attr(Attr.LIFETIME, b"x")))
    assert info.value.code == 400


def test_create_permission_with_several_peers() -> None:
    # RFC 8656 §10.1: a CreatePermission request may carry several XOR-PEER-ADDRESSes.
    peers = [("192.0.2.1", 1000), ("2001:db8::7", 2000), ("198.51.100.3", 3000)]
    request = Message(
        Method.CREATE_PERMISSION,
        Class.REQUEST,
        TID,
        {Attr.XOR_PEER_ADDRESS: peers[0], Attr.USERNAME: "u"},
        [(Attr.XOR_PEER_ADDRESS, peers[1]), (Attr.XOR_PEER_ADDRESS, peers[2])],
    )
    data = stun.serialize(request, integrity_key=b"k", fingerprint=True)
    msg = stun.parse(data)
    assert msg.get_all(Attr.XOR_PEER_ADDRESS) == peers
    assert msg.get_all(Attr.USERNAME) == ["u"]
    assert msg.get_all(Attr.LIFETIME) == []
    assert stun.check_integrity(msg, b"k")
    # Written after the first occurrences, before MESSAGE-INTEGRITY.
    assert [t for t, _ in iter_attributes(data)] == [0x0012, 0x0006, 0x0012, 0x0012, 0x0008, 0x8028]
    # Repeats after MESSAGE-INTEGRITY are ignored like everything else there.
    late = build(attr(Attr.MESSAGE_INTEGRITY, bytes(20)), attr(Attr.MESSAGE_INTEGRITY, bytes(20)))
    assert stun.parse(late).repeated == []


def iter_attributes(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 20
    while pos < len(data):
        atype, alen = struct.unpack_from("!HH", data, pos)
        out.append((atype, data[pos + 4 : pos + 4 + alen]))
        pos += 4 + alen + (-alen % 4)
    return out


def test_attributes_after_message_integrity_are_ignored() -> None:
    key = b"key"
    head = stun.serialize(Message(1, 0, TID, {Attr.USERNAME: "u"}), integrity_key=key)
    body = head[20:] + attr(Attr.REALM, b"late") + attr(0x0003, b"") + attr(Attr.LIFETIME, b"x")
    data = head[:2] + struct.pack("!H", len(body)) + head[4:20] + body
    msg = stun.parse(data)
    assert list(msg.attributes) == [Attr.USERNAME, Attr.MESSAGE_INTEGRITY]
    assert msg.unknown_required == ()  # the unknown type came after MESSAGE-INTEGRITY
    assert msg.integrity_offset == 28
    # The HMAC is checked with the length field cut back to end after MESSAGE-INTEGRITY.
    assert stun.check_integrity(msg, key)
    assert not stun.check_integrity(msg, b"other")


def test_integrity_sha256_and_fingerprint_may_follow_message_integrity() -> None:
    mi = bytes(20)
    sha = bytes(range(32))
    msg = stun.parse(
        build(
            attr(Attr.USERNAME, b"u"),
            attr(Attr.MESSAGE_INTEGRITY, mi),
            attr(Attr.NONCE, b"ignored"),
            attr(Attr.MESSAGE_INTEGRITY_SHA256, sha),
            attr(Attr.REALM, b"ignored too"),
            attr(Attr.MESSAGE_INTEGRITY_SHA256, bytes(32)),  # only FINGERPRINT counts now
            fingerprint=True,
        )
    )
    assert msg.repeated == []
    assert msg.get(Attr.MESSAGE_INTEGRITY_SHA256) == sha
    assert list(msg.attributes) == [
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.MESSAGE_INTEGRITY_SHA256,
        Attr.FINGERPRINT,
    ]
    assert msg.integrity_offset == 28


def test_only_fingerprint_counts_after_message_integrity_sha256() -> None:
    msg = stun.parse(
        build(
            attr(Attr.MESSAGE_INTEGRITY_SHA256, bytes(32)),
            attr(Attr.MESSAGE_INTEGRITY, bytes(20)),
            attr(Attr.USERNAME, b"u"),
            fingerprint=True,
        )
    )
    assert list(msg.attributes) == [Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT]
    assert msg.integrity_offset is None
    assert not stun.check_integrity(msg, b"any")


def test_integrity_covers_the_attributes_before_it() -> None:
    key = stun.long_term_key("alice", "realm", "pw")
    data = stun.serialize(
        Message(Method.ALLOCATE, Class.REQUEST, TID, {Attr.USERNAME: "alice", Attr.LIFETIME: 60}),
        integrity_key=key,
    )
    assert stun.check_integrity(stun.parse(data), key)
    tampered = data[:-28] + b"\x00\x00\x0e\x10" + data[-24:]  # LIFETIME 60 -> 3600
    msg = stun.parse(tampered)
    assert msg.get(Attr.LIFETIME) == 3600
    assert not stun.check_integrity(msg, key)


def test_check_integrity_is_false_without_message_integrity() -> None:
    assert not stun.check_integrity(stun.parse(build(attr(Attr.USERNAME, b"u"))), b"key")
    assert not stun.check_integrity(Message(1, 0, TID, {Attr.MESSAGE_INTEGRITY: bytes(20)}), b"")
    truncated = Message(1, 0, TID, raw=SAMPLE_REQUEST[:90], integrity_offset=76)
    assert not stun.check_integrity(truncated, SHORT_TERM_PASSWORD)


def test_serialize_computes_integrity_and_fingerprint_itself() -> None:
    # Stale MESSAGE-INTEGRITY / FINGERPRINT entries (from a parsed message) are not copied.
    msg = stun.parse(SAMPLE_REQUEST)
    plain = stun.serialize(msg, padding=b" ")
    assert plain[2:4] == struct.pack("!H", 88 - 24 - 8)
    assert Attr.MESSAGE_INTEGRITY not in stun.parse(plain).attributes
    only_fp = stun.parse(stun.serialize(msg, fingerprint=True))
    assert list(only_fp.attributes)[-1] == Attr.FINGERPRINT
    assert only_fp.integrity_offset is None


def test_fingerprint_is_crc32_xor_stun() -> None:
    data = stun.serialize(Message(1, 0, TID, {Attr.SOFTWARE: "x"}), fingerprint=True)
    assert data[-8:-4] == unhex("8028 0004")
    crc = zlib.crc32(data[:-8]) ^ 0x5354554E
    assert data[-4:] == struct.pack("!I", crc)
    assert stun.parse(data).get(Attr.FINGERPRINT) == crc


def test_integrity_then_fingerprint_layout() -> None:
    key = b"k"
    data = stun.serialize(
        Message(1, 0, TID, {Attr.USERNAME: "u"}), integrity_key=key, fingerprint=True
    )
    assert data[28:32] == unhex("0008 0014")
    head = data[:2] + struct.pack("!H", 8 + 24) + data[4:20]
    assert data[32:52] == hmac.new(key, head + data[20:28], hashlib.sha1).digest()
    msg = stun.parse(data)
    assert stun.check_integrity(msg, key)
    assert msg.integrity_offset == 28


def test_response_keeps_method_and_transaction_id() -> None:
    request = stun.parse(SAMPLE_REQUEST)
    response = request.response(Class.SUCCESS, {Attr.XOR_MAPPED_ADDRESS: ("192.0.2.1", 32853)})
    assert (response.method, response.cls) == (Method.BINDING, Class.SUCCESS)
    assert response.transaction_id == VECTOR_TID
    assert response.attributes == {Attr.XOR_MAPPED_ADDRESS: ("192.0.2.1", 32853)}
    assert request.response(Class.ERROR).attributes == {}


def test_message_defaults() -> None:
    one, two = Message(Method.BINDING, Class.REQUEST), Message(Method.BINDING, Class.REQUEST)
    assert len(one.transaction_id) == 12
    assert one.transaction_id != two.transaction_id  # random, RFC 8489 §5
    assert one.get(Attr.USERNAME) is None
    assert one.get(Attr.USERNAME, "x") == "x"
    # Parse-time details do not take part in comparisons.
    parsed = stun.parse(stun.serialize(one))
    assert parsed == one
    assert parsed.raw != one.raw


def test_error_reasons_cover_the_turn_codes() -> None:
    for code in (300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508):
        assert stun.ERROR_REASONS[code]


def test_constants() -> None:
    assert stun.MAGIC_COOKIE == 0x2112A442
    assert stun.FINGERPRINT_XOR == 0x5354554E
    assert stun.HEADER_SIZE == 20


# --- parse errors --------------------------------------------------------------------------


def test_header_errors_are_dropped_silently() -> None:
    good = build(attr(Attr.LIFETIME, unhex("00000258")))
    bad_inputs = {
        "short": good[:19],
        "empty": b"",
        "top bits": b"\x80" + good[1:],
        "second bit": b"\x40" + good[1:],
        "cookie": build(attr(Attr.LIFETIME, unhex("00000258")), cookie=b"\x21\x12\xa4\x43"),
        "length not multiple of 4": build(attr(Attr.USERNAME, b"ab", pad=b""), length=6),
        "length too long": build(attr(Attr.LIFETIME, unhex("00000258")), length=12),
        "length too short": build(attr(Attr.LIFETIME, unhex("00000258")), length=4),
        "trailing bytes": good + bytes(4),
    }
    for name, data in bad_inputs.items():
        with pytest.raises(StunError) as info:
            stun.parse(data)
        assert info.value.code is None, name
        assert info.value.error_response() is None, name


def test_empty_message_is_fine() -> None:
    msg = stun.parse(build())
    assert msg.attributes == {}


def test_truncated_attribute() -> None:
    # USERNAME claims 12 bytes in an 8-byte body.
    with pytest.raises(StunError):
        stun.parse(build(struct.pack("!HH", 6, 12) + b"abcd"))
    # The last attribute must be padded too.
    with pytest.raises(StunError):
        stun.parse(build(struct.pack("!HH", 6, 5) + b"abcd", length=8))


BAD_VALUES: list[tuple[int, bytes]] = [
    (Attr.MAPPED_ADDRESS, unhex("0001 0050 7f0000")),  # IPv4, 3 address bytes
    (Attr.MAPPED_ADDRESS, unhex("0002 0050 7f000001")),  # IPv6 family, IPv4 length
    (Attr.MAPPED_ADDRESS, unhex("0001") + bytes(18)),  # IPv4 family, IPv6 length
    (Attr.MAPPED_ADDRESS, unhex("0003 0050 7f000001")),  # no family 3
    (Attr.MAPPED_ADDRESS, unhex("0001")),
    (Attr.XOR_MAPPED_ADDRESS, unhex("0001 a147 e112a643 00000000")),
    (Attr.XOR_PEER_ADDRESS, unhex("0000 a147 e112a643")),  # family 0
    (Attr.XOR_RELAYED_ADDRESS, unhex("0002 a147 e112a643")),
    (Attr.XOR_PEER_ADDRESS, b""),
    (Attr.USERNAME, b"\xff\xfe"),  # not UTF-8
    (Attr.REALM, b"\xc3"),  # truncated UTF-8
    (Attr.NONCE, b"n" * 764),  # RFC 8489 §14.10: at most 763 bytes
    (Attr.SOFTWARE, b"\xed\xa0\x80"),  # an encoded surrogate is not UTF-8
    (Attr.ERROR_CODE, unhex("000004")),
    (Attr.ERROR_CODE, unhex("00000200")),  # class 2
    (Attr.ERROR_CODE, unhex("00000700")),  # class 7
    (Attr.ERROR_CODE, unhex("00000464")),  # number 100
    (Attr.ERROR_CODE, unhex("00000401") + b"\x80"),
    (Attr.ADDRESS_ERROR_CODE, unhex("01")),
    (Attr.UNKNOWN_ATTRIBUTES, unhex("000300")),  # odd length
    (Attr.LIFETIME, unhex("000258")),
    (Attr.LIFETIME, unhex("0000025800")),
    (Attr.PRIORITY, b""),
    (Attr.CONNECTION_ID, bytes(8)),
    (Attr.ICE_CONTROLLED, bytes(4)),
    (Attr.ICE_CONTROLLING, bytes(9)),
    (Attr.CHANNEL_NUMBER, unhex("4000")),
    (Attr.REQUESTED_TRANSPORT, unhex("11")),
    (Attr.REQUESTED_TRANSPORT, unhex("1100000000000000")),
    (Attr.REQUESTED_ADDRESS_FAMILY, unhex("01")),
    (Attr.ADDITIONAL_ADDRESS_FAMILY, b""),
    (Attr.EVEN_PORT, unhex("80000000")),
    (Attr.EVEN_PORT, b""),
    (Attr.DONT_FRAGMENT, b"\x00"),
    (Attr.USE_CANDIDATE, bytes(4)),
    (Attr.RESERVATION_TOKEN, bytes(7)),
    (Attr.RESERVATION_TOKEN, bytes(9)),
    (Attr.MESSAGE_INTEGRITY, bytes(16)),
    (Attr.MESSAGE_INTEGRITY, bytes(32)),
    (Attr.USERHASH, bytes(31)),
    (Attr.MESSAGE_INTEGRITY_SHA256, bytes(12)),
    (Attr.MESSAGE_INTEGRITY_SHA256, bytes(36)),
    (Attr.MESSAGE_INTEGRITY_SHA256, bytes(18)),
    (Attr.PASSWORD_ALGORITHM, unhex("0001")),
    (Attr.PASSWORD_ALGORITHM, unhex("0001 0004 ab")),
    (Attr.PASSWORD_ALGORITHMS, unhex("0001 0000 00")),
    (Attr.PASSWORD_ALGORITHMS, unhex("0001 0008 abcd")),
    (Attr.ICMP, bytes(4)),
]


@pytest.mark.parametrize(("atype", "value"), BAD_VALUES)
def test_malformed_attribute_value(atype: int, value: bytes) -> None:
    data = build(attr(0x8123, b"u"), attr(atype, value), msg_type=0x0003)
    with pytest.raises(StunError) as info:
        stun.parse(data)
    # The header was fine: a request gets a 400 with the same transaction id.
    assert info.value.code == 400
    assert info.value.error_response() == Message(
        Method.ALLOCATE, Class.ERROR, TID, {Attr.ERROR_CODE: (400, "Bad Request")}
    )


def test_malformed_indication_or_response_gets_no_reply() -> None:
    for msg_type in (0x0016, 0x0101, 0x0111):
        with pytest.raises(StunError) as info:
            stun.parse(build(attr(Attr.LIFETIME, b"x"), msg_type=msg_type))
        assert info.value.code == 400
        assert info.value.error_response() is None


def test_error_response_serializes() -> None:
    with pytest.raises(StunError) as info:
        stun.parse(build(attr(Attr.CHANNEL_NUMBER, b"")))
    reply = info.value.error_response()
    assert reply is not None
    assert stun.parse(stun.serialize(reply)).get(Attr.ERROR_CODE) == (400, "Bad Request")


def test_bad_fingerprint() -> None:
    good = build(attr(Attr.SOFTWARE, b"client"), fingerprint=True)
    assert stun.parse(good).get(Attr.FINGERPRINT) is not None
    for data in (
        good[:-1] + bytes([good[-1] ^ 1]),  # wrong CRC
        good[:20] + b"C" + good[21:],  # body changed after the CRC was computed
    ):
        with pytest.raises(StunError, match="FINGERPRINT") as info:
            stun.parse(data)
        assert info.value.error_response() is None  # RFC 8489 §6.3: discard silently
    with pytest.raises(StunError):
        stun.parse(build(attr(Attr.FINGERPRINT, bytes(8))))
    with pytest.raises(StunError):
        stun.parse(build(attr(Attr.FINGERPRINT, b"")))
    # Eight bytes whose value as a number is the right CRC are still not a FINGERPRINT.
    head = struct.pack("!HH", 0x0001, 12) + COOKIE + TID
    crc = zlib.crc32(head) ^ 0x5354554E
    with pytest.raises(StunError, match="FINGERPRINT length"):
        stun.parse(head + attr(Attr.FINGERPRINT, bytes(4) + struct.pack("!I", crc)))


def test_attribute_after_fingerprint() -> None:
    with_fp = build(attr(Attr.SOFTWARE, b"client"), fingerprint=True)
    body = with_fp[20:] + attr(Attr.USERNAME, b"u")
    data = with_fp[:2] + struct.pack("!H", len(body)) + with_fp[4:20] + body
    with pytest.raises(StunError, match="after FINGERPRINT"):
        stun.parse(data)


def test_fingerprint_counts_the_whole_header() -> None:
    # The CRC covers the header too: the same body under another transaction id fails.
    good = build(attr(Attr.SOFTWARE, b"client"), fingerprint=True)
    with pytest.raises(StunError):
        stun.parse(good[:8] + bytes(12) + good[20:])


# --- serialize errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("atype", "value"),
    [
        (Attr.XOR_PEER_ADDRESS, ("10.0.0.1", 70000)),
        (Attr.XOR_PEER_ADDRESS, ("10.0.0.1", -1)),
        (Attr.MAPPED_ADDRESS, ("not an ip", 1)),
        (Attr.MAPPED_ADDRESS, ("10.0.0.1",)),
        (Attr.ERROR_CODE, (200, "OK")),
        (Attr.ERROR_CODE, (700, "")),
        (Attr.ERROR_CODE, (400, b"bytes reason")),
        (Attr.USERNAME, "u" * 764),
        (Attr.USERNAME, b"bytes"),
        (Attr.LIFETIME, -1),
        (Attr.LIFETIME, 1 << 32),
        (Attr.CHANNEL_NUMBER, 0x10000),
        (Attr.REQUESTED_TRANSPORT, 256),
        (Attr.RESERVATION_TOKEN, bytes(7)),
        (Attr.USERHASH, "text"),
        (Attr.ICE_CONTROLLED, bytes(7)),
        (Attr.MESSAGE_INTEGRITY_SHA256, bytes(18)),
        (Attr.UNKNOWN_ATTRIBUTES, (0x10000,)),
        (Attr.PASSWORD_ALGORITHM, (1, 5)),
        (Attr.DATA, bytes(0x10000)),
        (0x8123, "not bytes"),
        (0x10000, b""),
    ],
)
def test_serialize_rejects_unencodable_values(atype: int, value: Any) -> None:
    with pytest.raises(StunError):
        stun.serialize(Message(1, 0, TID, {atype: value}))


def test_serialize_rejects_bad_message_fields() -> None:
    with pytest.raises(StunError):
        stun.serialize(Message(1, 0, bytes(11)))
    with pytest.raises(StunError):
        stun.serialize(Message(0x1000, 0, TID))
    with pytest.raises(StunError):
        stun.serialize(Message(1, 4, TID))
    with pytest.raises(StunError):
        stun.serialize(Message(1, 0, TID), padding=b"  ")
    with pytest.raises(StunError):  # 65532 + 8 bytes of attributes
        stun.serialize(Message(1, 0, TID, {Attr.DATA: bytes(0xFFF8), Attr.SOFTWARE: "x"}))
    assert len(stun.serialize(Message(1, 0, TID, {Attr.DATA: bytes(0xFFF8)}))) == 20 + 0xFFFC


# --- classifiers, ChannelData, framing ------------------------------------------------------


def test_is_stun() -> None:
    assert stun.is_stun(SAMPLE_REQUEST)
    assert stun.is_stun(build())
    assert not stun.is_stun(build()[:19])
    assert not stun.is_stun(build(cookie=bytes(4)))
    assert not stun.is_stun(b"\x40" + build()[1:])
    assert not stun.is_stun(b"\x80" + build()[1:])
    assert not stun.is_stun(stun.encode_channel_data(0x4000, bytes(40)))


def test_is_channel_data() -> None:
    for first in (0x40, 0x4F, 0x50, 0x7F):
        assert stun.is_channel_data(bytes([first, 0, 0, 0]))
    for first in (0x00, 0x3F, 0x80, 0xFF):
        assert not stun.is_channel_data(bytes([first, 0, 0, 0]))
    assert not stun.is_channel_data(b"\x40\x00\x00")
    assert not stun.is_channel_data(SAMPLE_REQUEST)


def test_channel_data_encoding() -> None:
    assert stun.encode_channel_data(0x4001, b"abc") == unhex("4001 0003 616263")
    assert stun.encode_channel_data(0x4001, b"abc", pad=True) == unhex("4001 0003 61626300")
    assert stun.encode_channel_data(0x4FFF, b"abcd", pad=True) == unhex("4fff 0004 61626364")
    assert stun.encode_channel_data(0x4000, b"") == unhex("4000 0000")
    assert stun.encode_channel_data(0x4000, b"", pad=True) == unhex("4000 0000")


@pytest.mark.parametrize("payload", [b"", b"x", b"ab", b"abc", b"abcd", bytes(1000), bytes(0xFFFF)])
@pytest.mark.parametrize("pad", [False, True])
def test_channel_data_round_trip(payload: bytes, pad: bool) -> None:
    data = stun.encode_channel_data(0x4123, payload, pad=pad)
    assert stun.decode_channel_data(data) == (0x4123, payload)
    assert len(data) % 4 == 0 or not pad
    assert stun.is_channel_data(data)


def test_channel_data_decode_errors() -> None:
    with pytest.raises(StunError):
        stun.decode_channel_data(unhex("4000 0005 61626364"))  # length exceeds the data
    with pytest.raises(StunError):
        stun.decode_channel_data(unhex("4000 00"))
    with pytest.raises(StunError):
        stun.decode_channel_data(unhex("0001 0000"))  # STUN, not ChannelData
    with pytest.raises(StunError):
        stun.decode_channel_data(unhex("8000 0000"))
    # Extra bytes (UDP padding) are ignored.
    assert stun.decode_channel_data(unhex("4000 0001 61 000000 ff")) == (0x4000, b"a")


def test_channel_data_encode_errors() -> None:
    for channel in (0x3FFF, 0x8000, -1):
        with pytest.raises(StunError):
            stun.encode_channel_data(channel, b"x")
    with pytest.raises(StunError):
        stun.encode_channel_data(0x4000, bytes(0x10000))


def test_next_frame_length() -> None:
    assert stun.next_frame_length(b"") is None
    assert stun.next_frame_length(b"\x00\x01\x00") is None
    assert stun.next_frame_length(SAMPLE_REQUEST[:4]) == len(SAMPLE_REQUEST)
    assert stun.next_frame_length(SAMPLE_REQUEST) == len(SAMPLE_REQUEST)
    assert stun.next_frame_length(unhex("4000 0005")) == 12  # padded over streams
    assert stun.next_frame_length(unhex("4000 0004")) == 8
    assert stun.next_frame_length(bytearray(unhex("4000 0000"))) == 4
    for garbage in (b"\x80\x00\x00\x00", b"\xc0\x00\x00\x00", b"\xbf\xff\xff\xff\xff"):
        with pytest.raises(StunError):
            stun.next_frame_length(garbage)
    # A TLS record header also starts with 00 bits: framed as STUN, parse() rejects it.
    assert stun.next_frame_length(b"\x16\x03\x01\x00") == 20 + 0x0100


def test_stream_starts_with_stun() -> None:
    assert stun.stream_starts_with_stun(SAMPLE_REQUEST) is True
    assert stun.stream_starts_with_stun(bytearray(SAMPLE_REQUEST[:8])) is True
    assert stun.stream_starts_with_stun(SAMPLE_REQUEST[:7]) is None  # cookie not in yet
    for garbage in (
        b"GET / HTTP/1.1\r\n",  # 'G' would frame as ChannelData 0x4745
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",  # a TLS ClientHello on the plain port
        stun.encode_channel_data(0x4000, b"data", pad=True),  # ChannelData before any Allocate
        SAMPLE_REQUEST[:4] + b"\x00\x00\x00\x00" + SAMPLE_REQUEST[8:],  # wrong cookie
    ):
        assert stun.stream_starts_with_stun(garbage) is False, garbage


def test_stream_of_mixed_frames_splits_back() -> None:
    frames = [
        SAMPLE_REQUEST,
        stun.encode_channel_data(0x4000, b"hello", pad=True),
        stun.encode_channel_data(0x4001, b"", pad=True),
        SAMPLE_IPV6_RESPONSE,
        stun.encode_channel_data(0x4002, bytes(1001), pad=True),
    ]
    stream = bytearray(b"".join(frames))
    out = []
    while stream:
        size = stun.next_frame_length(stream)
        assert size is not None and size <= len(stream)
        out.append(bytes(stream[:size]))
        del stream[:size]
    assert out == frames
    assert stun.parse(out[3]).get(Attr.XOR_MAPPED_ADDRESS)[1] == 32853
    assert stun.decode_channel_data(out[1]) == (0x4000, b"hello")


# --- property tests ------------------------------------------------------------------------

PORTS = st.integers(0, 0xFFFF)
ADDRESSES = st.tuples(st.ip_addresses(v=4).map(str), PORTS) | st.tuples(
    st.ip_addresses(v=6).map(str), PORTS
)
TEXT = st.text(max_size=40)
U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
ERROR_CODES = st.integers(300, 699)

VALUES: dict[int, st.SearchStrategy[Any]] = {
    Attr.MAPPED_ADDRESS: ADDRESSES,
    Attr.USERNAME: TEXT,
    Attr.ERROR_CODE: st.tuples(ERROR_CODES, TEXT),
    Attr.UNKNOWN_ATTRIBUTES: st.lists(U16, max_size=6).map(tuple),
    Attr.CHANNEL_NUMBER: U16,
    Attr.LIFETIME: U32,
    Attr.XOR_PEER_ADDRESS: ADDRESSES,
    Attr.DATA: st.binary(max_size=64),
    Attr.REALM: TEXT,
    Attr.NONCE: TEXT,
    Attr.XOR_RELAYED_ADDRESS: ADDRESSES,
    Attr.REQUESTED_ADDRESS_FAMILY: U8,
    Attr.EVEN_PORT: st.booleans(),
    Attr.REQUESTED_TRANSPORT: U8,
    Attr.DONT_FRAGMENT: st.just(True),
    Attr.PASSWORD_ALGORITHM: st.tuples(U16, st.binary(max_size=9)),
    Attr.USERHASH: st.binary(min_size=32, max_size=32),
    Attr.XOR_MAPPED_ADDRESS: ADDRESSES,
    Attr.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    Attr.PRIORITY: U32,
    Attr.USE_CANDIDATE: st.just(True),
    Attr.CONNECTION_ID: U32,
    Attr.ADDITIONAL_ADDRESS_FAMILY: U8,
    Attr.ADDRESS_ERROR_CODE: st.tuples(U8, ERROR_CODES, TEXT),
    Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT: U8,
    Attr.ADDRESS_ERROR_CODE_DRAFT: st.tuples(U8, ERROR_CODES, TEXT),
    Attr.PASSWORD_ALGORITHMS: st.lists(st.tuples(U16, st.binary(max_size=9)), max_size=3).map(
        tuple
    ),
    Attr.ALTERNATE_DOMAIN: TEXT,
    Attr.ICMP: st.tuples(U8, U8, U32),
    Attr.SOFTWARE: TEXT,
    Attr.ALTERNATE_SERVER: ADDRESSES,
    Attr.ICE_CONTROLLED: st.integers(0, 2**64 - 1),
    Attr.ICE_CONTROLLING: st.integers(0, 2**64 - 1),
    Attr.RESPONSE_ORIGIN: ADDRESSES,
    Attr.OTHER_ADDRESS: ADDRESSES,
}
# Written by serialize itself, or ending the part of the message that counts.
NOT_GENERATED = {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}
UNKNOWN_TYPES = U16.filter(lambda t: t not in stun.ATTRIBUTES)


def test_every_table_attribute_is_generated() -> None:
    assert set(VALUES) | NOT_GENERATED == set(stun.ATTRIBUTES) == set(Attr)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    known = draw(st.lists(st.sampled_from(sorted(VALUES)), unique=True, max_size=8))
    unknown = draw(st.lists(UNKNOWN_TYPES, unique=True, max_size=3))
    order = draw(st.permutations(known + unknown))

    def value(t: int) -> Any:
        return draw(VALUES[t]) if t in VALUES else draw(st.binary(max_size=20))

    attributes = {t: value(t) for t in order}
    # Repeats of attributes already present (after all of them, as serialize writes them).
    repeated: list[tuple[int, Any]] = []
    if order:
        repeated = [(t, value(t)) for t in draw(st.lists(st.sampled_from(order), max_size=3))]
    return Message(
        draw(st.integers(0, 0xFFF)),
        draw(st.integers(0, 3)),
        draw(st.binary(min_size=12, max_size=12)),
        attributes,
        repeated,
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.sampled_from([b"\x00", b" ", b"\xff"]))
def test_round_trip_of_generated_messages(msg: Message, padding: bytes) -> None:
    data = stun.serialize(msg, padding=padding)
    parsed = stun.parse(data)
    assert parsed == msg
    assert list(parsed.attributes.items()) == list(msg.attributes.items())
    assert parsed.repeated == msg.repeated
    assert parsed.unknown_required == tuple(
        t for t in msg.attributes if t < 0x8000 and t not in stun.ATTRIBUTES
    )
    assert stun.serialize(parsed, padding=padding) == data


@settings(max_examples=100)
@given(messages(), st.binary(max_size=32))
def test_round_trip_with_integrity_and_fingerprint(msg: Message, key: bytes) -> None:
    data = stun.serialize(msg, integrity_key=key, fingerprint=True)
    parsed = stun.parse(data)
    assert stun.check_integrity(parsed, key)
    assert not stun.check_integrity(parsed, key + b"!")
    assert list(parsed.attributes)[-2:] == [Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]
    del parsed.attributes[Attr.MESSAGE_INTEGRITY], parsed.attributes[Attr.FINGERPRINT]
    assert parsed == msg
    assert stun.serialize(parsed, integrity_key=key, fingerprint=True) == data


def parse_or_stun_error(data: bytes) -> Message | None:
    """Parse, allowing StunError only; a parsed message must re-encode and check cleanly."""
    try:
        msg = stun.parse(data)
    except StunError as exc:
        reply = exc.error_response()
        if reply is not None:
            stun.serialize(reply)
        return None
    if msg.integrity_offset is None:
        # No MESSAGE-INTEGRITY: nothing can check (RFC 8489 §14.5).
        assert stun.check_integrity(msg, b"key") is False
    stun.serialize(msg)
    return msg


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_stun_error(data: bytes) -> None:
    parse_or_stun_error(data)
    assert stun.is_stun(data) in (True, False)
    assert stun.is_channel_data(data) in (True, False)


@settings(max_examples=500)
@given(U16.filter(lambda t: t < 0x4000), st.binary(min_size=12, max_size=12), st.data())
def test_stun_shaped_bytes_raise_only_stun_error(
    msg_type: int, tid: bytes, data: st.DataObject
) -> None:
    # A sound header over random attributes, so the attribute parsing gets exercised.
    pieces = data.draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(stun.ATTRIBUTES)) | U16, st.binary(max_size=40)),
            max_size=6,
        )
    )
    body = b"".join(attr(t, v) for t, v in pieces)
    parse_or_stun_error(build(body, msg_type=msg_type, tid=tid))
    parse_or_stun_error(build(body, msg_type=msg_type, tid=tid, fingerprint=True))


ALLOCATE_KEY = stun.long_term_key("1700000000:alice", "flaskrtc.test", "s3cret")
ALLOCATE_MESSAGE = Message(
    Method.ALLOCATE,
    Class.REQUEST,
    TID,
    {
        Attr.REQUESTED_TRANSPORT: 17,
        Attr.LIFETIME: 600,
        Attr.EVEN_PORT: True,
        Attr.DONT_FRAGMENT: True,
        Attr.USERNAME: "1700000000:alice",
        Attr.REALM: "flaskrtc.test",
        Attr.NONCE: "AAABjK3hE9g4Y2ZmZDc3NjE0ZGI2",
        Attr.SOFTWARE: "flaskrtc test client",
    },
)
ALLOCATE = stun.serialize(ALLOCATE_MESSAGE, integrity_key=ALLOCATE_KEY, fingerprint=True)
ALLOCATE_NO_FINGERPRINT = stun.serialize(ALLOCATE_MESSAGE, integrity_key=ALLOCATE_KEY)

MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "truncate", "extend", "delete", "insert"]),
        st.integers(0, 1000),
        U8,
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, byte in ops:
        pos = where % (len(out) + 1)
        if op == "flip" and out:
            out[pos % len(out)] ^= 1 << (byte % 8)
        elif op == "set" and out:
            out[pos % len(out)] = byte
        elif op == "truncate":
            del out[pos:]
        elif op == "extend":
            out += bytes([byte]) * (where % 9)
        elif op == "delete":
            del out[pos : pos + 1]
        elif op == "insert":
            out[pos:pos] = bytes([byte])
    return bytes(out)


def test_the_allocate_fixture_is_valid() -> None:
    msg = stun.parse(ALLOCATE)
    assert stun.check_integrity(msg, ALLOCATE_KEY)
    assert msg.get(Attr.REQUESTED_TRANSPORT) == 17


@settings(max_examples=500)
@given(MUTATIONS)
def test_mutated_allocate_raises_only_stun_error(ops: list[tuple[str, int, int]]) -> None:
    parse_or_stun_error(mutate(ALLOCATE, ops))


@settings(max_examples=500)
@given(MUTATIONS)
def test_mutated_allocate_with_repaired_length_and_fingerprint(
    ops: list[tuple[str, int, int]],
) -> None:
    # Repairing the length field and FINGERPRINT gets mutations past the first checks, into
    # the attribute parsing and the integrity check.
    data = mutate(ALLOCATE_NO_FINGERPRINT, ops)
    if len(data) < 20:
        return
    body = data[20:]
    head = data[:2] + struct.pack("!H", (len(body) + 8) & 0xFFFF) + data[4:20]
    crc = zlib.crc32(head + body) ^ 0x5354554E
    msg = parse_or_stun_error(head + body + struct.pack("!HHI", 0x8028, 4, crc))
    if msg is not None and stun.check_integrity(msg, ALLOCATE_KEY):
        # Whatever passes the HMAC is the original up to MESSAGE-INTEGRITY (only the length
        # field may differ, when ignored attributes were added after it).
        end = (msg.integrity_offset or 0) + 24
        assert msg.raw[:2] + msg.raw[4:end] == ALLOCATE[:2] + ALLOCATE[4:end]


@settings(max_examples=500)
@given(st.binary(max_size=40))
def test_channel_data_and_framing_on_arbitrary_bytes(data: bytes) -> None:
    try:
        channel, payload = stun.decode_channel_data(data)
    except StunError:
        pass
    else:
        assert 0x4000 <= channel <= 0x7FFF
        assert data[4:].startswith(payload)
    try:
        size = stun.next_frame_length(data)
    except StunError:
        assert data[0] >= 0x80
    else:
        assert size is None or size >= 4
        assert (size is None) == (len(data) < 4)


# The IANA "STUN Attributes" registry, as RFC 8489 §18.3, RFC 8656 §18, RFC 8445 §16.1,
# RFC 5780 §7 and RFC 6062 §6.2 assign the codes (a wrong code still round-trips through
# our own codec, so only this table catches it).
IANA_ATTRIBUTES = {
    "MAPPED_ADDRESS": 0x0001,
    "USERNAME": 0x0006,
    "MESSAGE_INTEGRITY": 0x0008,
    "ERROR_CODE": 0x0009,
    "UNKNOWN_ATTRIBUTES": 0x000A,
    "CHANNEL_NUMBER": 0x000C,
    "LIFETIME": 0x000D,
    "XOR_PEER_ADDRESS": 0x0012,
    "DATA": 0x0013,
    "REALM": 0x0014,
    "NONCE": 0x0015,
    "XOR_RELAYED_ADDRESS": 0x0016,
    "REQUESTED_ADDRESS_FAMILY": 0x0017,
    "EVEN_PORT": 0x0018,
    "REQUESTED_TRANSPORT": 0x0019,
    "DONT_FRAGMENT": 0x001A,
    "MESSAGE_INTEGRITY_SHA256": 0x001C,
    "PASSWORD_ALGORITHM": 0x001D,
    "USERHASH": 0x001E,
    "XOR_MAPPED_ADDRESS": 0x0020,
    "RESERVATION_TOKEN": 0x0022,
    "PRIORITY": 0x0024,
    "USE_CANDIDATE": 0x0025,
    "CONNECTION_ID": 0x002A,
    "ADDITIONAL_ADDRESS_FAMILY": 0x8000,
    "ADDRESS_ERROR_CODE": 0x8001,
    "PASSWORD_ALGORITHMS": 0x8002,
    "ALTERNATE_DOMAIN": 0x8003,
    "ICMP": 0x8004,
    "SOFTWARE": 0x8022,
    "ALTERNATE_SERVER": 0x8023,
    "FINGERPRINT": 0x8028,
    "ICE_CONTROLLED": 0x8029,
    "ICE_CONTROLLING": 0x802A,
    "RESPONSE_ORIGIN": 0x802B,
    "OTHER_ADDRESS": 0x802C,
}
# Not IANA's: the numbers draft-ietf-tram-turnbis used before RFC 8656, which coturn still
# sends and reads (turnutils_uclient -Z).
DRAFT_ATTRIBUTES = {"ADDITIONAL_ADDRESS_FAMILY_DRAFT": 0x8032, "ADDRESS_ERROR_CODE_DRAFT": 0x8033}


def test_attribute_codes_are_the_iana_ones() -> None:
    assert {a.name: a.value for a in Attr} == IANA_ATTRIBUTES | DRAFT_ATTRIBUTES
