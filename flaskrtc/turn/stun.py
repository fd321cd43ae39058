"""A sans-I/O STUN/TURN message codec (RFC 8489 STUN, RFC 8656 TURN, RFC 6062 TURN-TCP).

:func:`parse` turns the bytes of one STUN message into a :class:`Message`, :func:`serialize`
does the reverse and appends MESSAGE-INTEGRITY / FINGERPRINT on request. Attribute values are
plain Python values (addresses are ``(ip, port)`` tuples, ERROR-CODE is ``(code, reason)``...)
converted by a table of pack/unpack functions, so the TURN server never looks at attribute
bytes. Malformed input raises :class:`StunError` and nothing else; the error says whether and
how to answer. The relay hot path uses :func:`is_channel_data` / :func:`decode_channel_data`
and :func:`next_frame_length`, which look at the 4-byte ChannelData header only.

Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import itertools
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any

MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7: "STUN" in ASCII
HEADER_SIZE = 20

_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_HH = struct.Struct("!HH")
_unpack_hh = _HH.unpack_from  # bound once: decode_channel_data is on the relay hot path
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")

# RFC 8489 §14.3, §14.8-§14.10, §14.14: text attributes are "fewer than 128 characters", which
# receivers must accept up to 763 bytes of UTF-8 (the RFC 5389 compatibility bound).
MAX_TEXT_BYTES = 763


class Method(IntEnum):
    """STUN methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class Class(IntEnum):
    """Message classes, as the two bits C1 C0 of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(IntEnum):
    """Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 8445 ICE, RFC 5780, RFC 6062)."""

    # Comprehension-required range 0x0000-0x7FFF.
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    CONNECTION_ID = 0x002A
    # Comprehension-optional range 0x8000-0xFFFF.
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    # The numbers of draft-ietf-tram-turnbis before RFC 8656 gave 0x8000/0x8001, still used
    # by coturn (turnserver and turnutils_uclient -Z): read and answered as the RFC ones.
    ADDITIONAL_ADDRESS_FAMILY_DRAFT = 0x8032
    ADDRESS_ERROR_CODE_DRAFT = 0x8033
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


# Reason phrases of the error codes a STUN/TURN server sends (RFC 8489 §14.8, RFC 8656 §19,
# RFC 6062 §6.3). Short on purpose: replies to unauthenticated requests stay small.
ERROR_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}

# Module-level ints: cheaper than enum attribute lookups in the parse loop.
_MI = 0x0008
_MI_SHA256 = 0x001C
_FINGERPRINT = 0x8028
_FINGERPRINT_KEY = Attr.FINGERPRINT
_METHODS: dict[int, Method] = {int(m): m for m in Method}
_CLASSES: tuple[Class, ...] = tuple(Class)
_ATTRS: dict[int, Attr] = {int(a): a for a in Attr}


class StunError(ValueError):
    """Malformed STUN input, or a value :func:`serialize` cannot encode.

    The only exception the parse functions raise. ``code`` is the error code to answer with
    (400) when the header was sound and names a request, else None: RFC 8489 §6.3 says to
    discard messages failing the basic checks (header, length, FINGERPRINT) silently.
    ``method``, ``cls`` and ``transaction_id`` are set when the header could be read.
    """

    def __init__(
        self,
        text: str,
        *,
        code: int | None = None,
        method: int | None = None,
        cls: int | None = None,
        transaction_id: bytes | None = None,
    ) -> None:
        super().__init__(text)
        self.code = code
        self.method = method
        self.cls = cls
        self.transaction_id = transaction_id

    def error_response(self) -> Message | None:
        """The error response to send back, or None when the input must be dropped.

        Only requests are answered (RFC 8489 §6.3.2: no responses to indications). The
        reason phrase is the short standard one, not the parser's diagnostic.
        """
        if (
            self.code is None
            or self.cls != Class.REQUEST
            or self.method is None
            or self.transaction_id is None
        ):
            return None
        reason = ERROR_REASONS.get(self.code, "")
        return Message(
            self.method,
            Class.ERROR,
            self.transaction_id,
            {Attr.ERROR_CODE: (self.code, reason)},
            [],
        )


@dataclass(slots=True)
class Message:
    """One STUN message. ``attributes`` keeps wire order; values are decoded.

    ``attributes`` holds the first occurrence of each type (RFC 8489 §14: by default only
    that one counts); later ones go to ``repeated``, for the attributes that may repeat,
    such as the XOR-PEER-ADDRESSes of a CreatePermission (RFC 8656 §10.1): see
    :meth:`get_all`. ``unknown_required``, ``raw`` and ``integrity_offset`` are filled in by
    :func:`parse` and left out of comparisons: two messages are equal when their contents are.
    """

    method: int
    cls: int
    # RFC 8489 §5: cryptographically random, 96 bits.
    transaction_id: bytes = field(default_factory=lambda: secrets.token_bytes(12))
    attributes: dict[int, Any] = field(default_factory=dict)
    # (type, value) of the second and later occurrences, in wire order; serialize writes
    # them after ``attributes``.
    repeated: list[tuple[int, Any]] = field(default_factory=list)
    # Comprehension-required types (0x0000-0x7FFF) this codec does not know: a server
    # answers a request carrying any with 420 and UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1).
    unknown_required: tuple[int, ...] = field(default=(), compare=False)
    raw: bytes = field(default=b"", compare=False, repr=False)
    # Offset of the MESSAGE-INTEGRITY attribute header in ``raw``, if one counts.
    integrity_offset: int | None = field(default=None, compare=False)

    def get(self, attr: int, default: Any = None) -> Any:
        """The decoded value of attribute ``attr``, or ``default`` when absent."""
        return self.attributes.get(attr, default)

    def get_all(self, attr: int) -> list[Any]:
        """Every decoded occurrence of attribute ``attr``, first one first."""
        if attr not in self.attributes:
            return []
        return [self.attributes[attr], *(value for t, value in self.repeated if t == attr)]

    def response(self, cls: int, attributes: dict[int, Any] | None = None) -> Message:
        """A response (``cls`` SUCCESS or ERROR) with this method and transaction id."""
        return Message(self.method, cls, self.transaction_id, dict(attributes or {}), [])


# --- attribute values ----------------------------------------------------------------------
# Every unpacker takes (value bytes, transaction id) and may raise StunError (or ValueError,
# caught by parse); every packer takes (python value, transaction id) and returns the bytes.

_Unpack = Callable[[bytes, bytes], Any]
_Pack = Callable[[Any, bytes], bytes]


def _check_len(value: bytes, size: int) -> None:
    if len(value) != size:
        raise StunError(f"length {len(value)}, expected {size}")


@lru_cache(maxsize=4096)
def _ip_bytes(ip: str) -> tuple[int, bytes]:
    # Servers pack the same few addresses over and over (their relay address, clients' and
    # peers' addresses); ipaddress is the slow part, hence the cache.
    addr = ipaddress.ip_address(ip)
    return (1 if addr.version == 4 else 2), addr.packed


def _unpack_address(value: bytes, tid: bytes) -> tuple[str, int]:
    # RFC 8489 §14.1: 8 ignored bits, family (0x01 IPv4, 0x02 IPv6), port, address.
    n = len(value)
    if n < 4:
        raise StunError("address too short")
    family = value[1]
    port = (value[2] << 8) | value[3]
    if family == 1 and n == 8:
        return f"{value[4]}.{value[5]}.{value[6]}.{value[7]}", port
    if family == 2 and n == 20:
        return str(ipaddress.IPv6Address(value[4:])), port
    if family not in (1, 2):
        raise StunError(f"unknown address family {family}")
    raise StunError(f"address length {n} does not match family {family}")


def _pack_address(value: tuple[str, int], tid: bytes) -> bytes:
    ip, port = value
    family, packed = _ip_bytes(ip)
    return bytes((0, family)) + port.to_bytes(2, "big") + packed


def _unpack_xor_address(value: bytes, tid: bytes) -> tuple[str, int]:
    # RFC 8489 §14.2: the port is XORed with the cookie's top 16 bits, an IPv4 address with
    # the cookie, an IPv6 address with the cookie followed by the transaction id.
    n = len(value)
    if n < 4:
        raise StunError("address too short")
    family = value[1]
    port = ((value[2] << 8) | value[3]) ^ (MAGIC_COOKIE >> 16)
    if family == 1 and n == 8:
        a = int.from_bytes(value[4:8], "big") ^ MAGIC_COOKIE
        return f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}", port
    if family == 2 and n == 20:
        a = int.from_bytes(value[4:20], "big") ^ int.from_bytes(_COOKIE_BYTES + tid, "big")
        return str(ipaddress.IPv6Address(a)), port
    if family not in (1, 2):
        raise StunError(f"unknown address family {family}")
    raise StunError(f"address length {n} does not match family {family}")


def _pack_xor_address(value: tuple[str, int], tid: bytes) -> bytes:
    ip, port = value
    family, packed = _ip_bytes(ip)
    mask = _COOKIE_BYTES if family == 1 else _COOKIE_BYTES + tid
    xored = (int.from_bytes(packed, "big") ^ int.from_bytes(mask, "big")).to_bytes(
        len(packed), "big"
    )
    return bytes((0, family)) + (port ^ (MAGIC_COOKIE >> 16)).to_bytes(2, "big") + xored


def _unpack_text(value: bytes, tid: bytes) -> str:
    if len(value) > MAX_TEXT_BYTES:
        raise StunError(f"text longer than {MAX_TEXT_BYTES} bytes")
    return value.decode("utf-8")


def _pack_text(value: str, tid: bytes) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES:
        raise StunError(f"text longer than {MAX_TEXT_BYTES} bytes")
    return data


def _unpack_error_code(value: bytes, tid: bytes) -> tuple[int, str]:
    # RFC 8489 §14.8: 21 reserved bits, class (hundreds digit, 3-6), number (0-99), reason.
    if len(value) < 4:
        raise StunError("ERROR-CODE too short")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunError(f"error class {klass} / number {number} out of range")
    return klass * 100 + number, _unpack_text(value[4:], tid)


def _pack_error_code(value: tuple[int, str], tid: bytes) -> bytes:
    code, reason = value
    if not 300 <= code <= 699:
        raise StunError(f"error code {code} outside 300-699")
    return bytes((0, 0, code // 100, code % 100)) + _pack_text(reason, tid)


def _unpack_address_error_code(value: bytes, tid: bytes) -> tuple[int, int, str]:
    # RFC 8656 §18.12: family (8 bits), 13 reserved bits, then ERROR-CODE's class/number.
    family = value[0] if value else 0
    code, reason = _unpack_error_code(value, tid)
    return family, code, reason


def _pack_address_error_code(value: tuple[int, int, str], tid: bytes) -> bytes:
    family, code, reason = value
    return bytes((family,)) + _pack_error_code((code, reason), tid)[1:]


def _unpack_unknown_attributes(value: bytes, tid: bytes) -> tuple[int, ...]:
    # RFC 8489 §14.13: a list of 16-bit types, so an even length.
    if len(value) % 2:
        raise StunError("odd UNKNOWN-ATTRIBUTES length")
    return struct.unpack(f"!{len(value) // 2}H", value)


def _pack_unknown_attributes(value: tuple[int, ...], tid: bytes) -> bytes:
    return struct.pack(f"!{len(value)}H", *value)


def _unpack_u32(value: bytes, tid: bytes) -> int:
    _check_len(value, 4)
    result: int = _U32.unpack(value)[0]
    return result


def _pack_u32(value: int, tid: bytes) -> bytes:
    return _U32.pack(value)


def _unpack_u64(value: bytes, tid: bytes) -> int:
    # ICE-CONTROLLED / ICE-CONTROLLING tie-breakers (RFC 8445 §16.1).
    _check_len(value, 8)
    result: int = _U64.unpack(value)[0]
    return result


def _pack_u64(value: int | bytes, tid: bytes) -> bytes:
    if isinstance(value, bytes | bytearray):
        if len(value) != 8:
            raise StunError("a 64-bit value needs 8 bytes")
        return bytes(value)
    return _U64.pack(value)


def _unpack_channel_number(value: bytes, tid: bytes) -> int:
    # RFC 8656 §18.1: 16-bit channel number, then 16 RFFU bits that receivers ignore.
    _check_len(value, 4)
    return (value[0] << 8) | value[1]


def _pack_channel_number(value: int, tid: bytes) -> bytes:
    return _HH.pack(value, 0)


def _unpack_first_byte(value: bytes, tid: bytes) -> int:
    # REQUESTED-TRANSPORT (RFC 8656 §18.8: protocol number) and REQUESTED-/ADDITIONAL-
    # ADDRESS-FAMILY (§18.6, §18.11: 0x01 IPv4, 0x02 IPv6): 8 bits, then 24 RFFU bits. Values
    # are not checked here: the server answers 442 / 440 for ones it does not support.
    _check_len(value, 4)
    return value[0]


def _pack_first_byte(value: int, tid: bytes) -> bytes:
    return bytes((value, 0, 0, 0))


def _unpack_even_port(value: bytes, tid: bytes) -> bool:
    # RFC 8656 §18.7: one byte, the R bit first, 7 RFFU bits (the attribute is padded to 4).
    _check_len(value, 1)
    return bool(value[0] & 0x80)


def _pack_even_port(value: bool, tid: bytes) -> bytes:
    return b"\x80" if value else b"\x00"


def _unpack_flag(value: bytes, tid: bytes) -> bool:
    # DONT-FRAGMENT (RFC 8656 §18.9), USE-CANDIDATE (RFC 8445 §16.1): no value at all.
    _check_len(value, 0)
    return True


def _pack_flag(value: object, tid: bytes) -> bytes:
    return b""


def _unpack_bytes(value: bytes, tid: bytes) -> bytes:
    return value


def _pack_bytes(value: bytes, tid: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise StunError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def _fixed_bytes(size: int) -> tuple[_Pack, _Unpack]:
    def unpack(value: bytes, tid: bytes) -> bytes:
        _check_len(value, size)
        return value

    def pack(value: bytes, tid: bytes) -> bytes:
        data = _pack_bytes(value, tid)
        _check_len(data, size)
        return data

    return pack, unpack


def _unpack_integrity_sha256(value: bytes, tid: bytes) -> bytes:
    # RFC 8489 §14.6: 16 to 32 bytes (a truncated HMAC-SHA256), a multiple of 4.
    if not 16 <= len(value) <= 32 or len(value) % 4:
        raise StunError(f"MESSAGE-INTEGRITY-SHA256 length {len(value)}")
    return value


def _pack_integrity_sha256(value: bytes, tid: bytes) -> bytes:
    return _unpack_integrity_sha256(_pack_bytes(value, tid), tid)


def _unpack_password_algorithm(value: bytes, tid: bytes) -> tuple[int, bytes]:
    # RFC 8489 §14.12: algorithm (16 bits), parameters length (16 bits), parameters.
    if len(value) < 4:
        raise StunError("PASSWORD-ALGORITHM too short")
    algorithm, size = _HH.unpack_from(value)
    if 4 + size != len(value):
        raise StunError("PASSWORD-ALGORITHM parameters length mismatch")
    return algorithm, value[4:]


def _pack_password_algorithm(value: tuple[int, bytes], tid: bytes) -> bytes:
    algorithm, params = value
    data = _pack_bytes(params, tid)
    return _HH.pack(algorithm, len(data)) + data


def _unpack_password_algorithms(value: bytes, tid: bytes) -> tuple[tuple[int, bytes], ...]:
    # RFC 8489 §14.11: a list of PASSWORD-ALGORITHM bodies, each padded to 4 bytes.
    result = []
    pos, n = 0, len(value)
    while pos < n:
        if pos + 4 > n:
            raise StunError("PASSWORD-ALGORITHMS entry truncated")
        algorithm, size = _HH.unpack_from(value, pos)
        if pos + 4 + size > n:
            raise StunError("PASSWORD-ALGORITHMS parameters truncated")
        result.append((algorithm, value[pos + 4 : pos + 4 + size]))
        pos += 4 + ((size + 3) & ~3)
    return tuple(result)


def _pack_password_algorithms(value: tuple[tuple[int, bytes], ...], tid: bytes) -> bytes:
    out = []
    for algorithm, params in value:
        data = _pack_bytes(params, tid)
        out.append(_HH.pack(algorithm, len(data)) + data + b"\x00" * (-len(data) % 4))
    return b"".join(out)


def _unpack_icmp(value: bytes, tid: bytes) -> tuple[int, int, int]:
    # RFC 8656 §18.13: 16 reserved bits, ICMP type, ICMP code, 32 bits of error data.
    _check_len(value, 8)
    return value[2], value[3], _U32.unpack_from(value, 4)[0]


def _pack_icmp(value: tuple[int, int, int], tid: bytes) -> bytes:
    icmp_type, icmp_code, error_data = value
    return bytes((0, 0, icmp_type, icmp_code)) + _U32.pack(error_data)


_ADDRESS = (_pack_address, _unpack_address)
_XOR_ADDRESS = (_pack_xor_address, _unpack_xor_address)
_TEXT = (_pack_text, _unpack_text)
_U32_CODEC = (_pack_u32, _unpack_u32)
_U64_CODEC = (_pack_u64, _unpack_u64)
_FIRST_BYTE = (_pack_first_byte, _unpack_first_byte)
_FLAG = (_pack_flag, _unpack_flag)

# The attribute table: type -> (pack, unpack). Types missing here are kept as raw bytes.
ATTRIBUTES: dict[int, tuple[_Pack, _Unpack]] = {
    Attr.MAPPED_ADDRESS: _ADDRESS,
    Attr.USERNAME: _TEXT,
    Attr.MESSAGE_INTEGRITY: _fixed_bytes(20),  # HMAC-SHA1, RFC 8489 §14.5
    Attr.ERROR_CODE: (_pack_error_code, _unpack_error_code),
    Attr.UNKNOWN_ATTRIBUTES: (_pack_unknown_attributes, _unpack_unknown_attributes),
    Attr.CHANNEL_NUMBER: (_pack_channel_number, _unpack_channel_number),
    Attr.LIFETIME: _U32_CODEC,
    Attr.XOR_PEER_ADDRESS: _XOR_ADDRESS,
    Attr.DATA: (_pack_bytes, _unpack_bytes),
    Attr.REALM: _TEXT,
    Attr.NONCE: _TEXT,
    Attr.XOR_RELAYED_ADDRESS: _XOR_ADDRESS,
    Attr.REQUESTED_ADDRESS_FAMILY: _FIRST_BYTE,
    Attr.EVEN_PORT: (_pack_even_port, _unpack_even_port),
    Attr.REQUESTED_TRANSPORT: _FIRST_BYTE,
    Attr.DONT_FRAGMENT: _FLAG,
    Attr.MESSAGE_INTEGRITY_SHA256: (_pack_integrity_sha256, _unpack_integrity_sha256),
    Attr.PASSWORD_ALGORITHM: (_pack_password_algorithm, _unpack_password_algorithm),
    Attr.USERHASH: _fixed_bytes(32),  # SHA-256, RFC 8489 §14.4
    Attr.XOR_MAPPED_ADDRESS: _XOR_ADDRESS,
    Attr.RESERVATION_TOKEN: _fixed_bytes(8),  # RFC 8656 §18.10
    Attr.PRIORITY: _U32_CODEC,
    Attr.USE_CANDIDATE: _FLAG,
    Attr.CONNECTION_ID: _U32_CODEC,  # RFC 6062 §6.2.1
    Attr.ADDITIONAL_ADDRESS_FAMILY: _FIRST_BYTE,
    Attr.ADDRESS_ERROR_CODE: (_pack_address_error_code, _unpack_address_error_code),
    Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT: _FIRST_BYTE,
    Attr.ADDRESS_ERROR_CODE_DRAFT: (_pack_address_error_code, _unpack_address_error_code),
    Attr.PASSWORD_ALGORITHMS: (_pack_password_algorithms, _unpack_password_algorithms),
    Attr.ALTERNATE_DOMAIN: _TEXT,
    Attr.ICMP: (_pack_icmp, _unpack_icmp),
    Attr.SOFTWARE: _TEXT,
    Attr.ALTERNATE_SERVER: _ADDRESS,
    Attr.FINGERPRINT: _U32_CODEC,
    Attr.ICE_CONTROLLED: _U64_CODEC,
    Attr.ICE_CONTROLLING: _U64_CODEC,
    Attr.RESPONSE_ORIGIN: _ADDRESS,
    Attr.OTHER_ADDRESS: _ADDRESS,
}
# Plain-int keyed copy of the unpackers for the parse loop, with the enum member to use as
# the dict key (so reprs read Attr.USERNAME rather than 6).
_UNPACKERS: dict[int, tuple[Attr, _Unpack]] = {
    int(t): (_ATTRS[t], unpack) for t, (_pack, unpack) in ATTRIBUTES.items()
}


# --- messages ------------------------------------------------------------------------------


def _message_type(method: int, cls: int) -> int:
    # RFC 8489 §5: M11..M7 C1 M6..M4 C0 M3..M0 (the class bits sit at 0x100 and 0x010).
    return (
        ((method & 0xF80) << 2)
        | ((method & 0x070) << 1)
        | (method & 0x00F)
        | ((cls & 2) << 7)
        | ((cls & 1) << 4)
    )


def _bad_request(text: str, method: int, cls: int, tid: bytes) -> StunError:
    # The header was sound: a request is answered 400 Bad Request (RFC 8489 §6.3.1).
    return StunError(text, code=400, method=method, cls=cls, transaction_id=tid)


def parse(data: bytes) -> Message:
    """Decode one STUN message (a whole UDP datagram or one stream frame).

    Applies the RFC 8489 §5 / §6.3 checks and verifies FINGERPRINT when present; raises
    StunError on any malformed input. MESSAGE-INTEGRITY is located, not checked: call
    :func:`check_integrity` with the key once the username is known.
    """
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n < HEADER_SIZE:
        raise StunError("shorter than a STUN header")
    msg_type, length = _HH.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError("first two bits are not zero")
    if data[4:8] != _COOKIE_BYTES:
        raise StunError("no magic cookie")
    # §5: the length counts the attributes only, which are padded to 4 bytes each.
    if length & 3 or length != n - HEADER_SIZE:
        raise StunError(f"length field {length} does not match {n - HEADER_SIZE} bytes")
    m = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    method: int = _METHODS.get(m, m)
    cls: int = _CLASSES[((msg_type >> 4) & 1) | ((msg_type >> 7) & 2)]
    tid = data[8:20]
    attributes: dict[int, Any] = {}
    repeated: list[tuple[int, Any]] = []
    unknown: list[int] = []
    integrity_offset: int | None = None
    # Once MESSAGE-INTEGRITY(-SHA256) is seen, later attributes are ignored, except
    # MESSAGE-INTEGRITY-SHA256 after MESSAGE-INTEGRITY (§14.5) and FINGERPRINT (§14.6).
    sealed = False
    pos = HEADER_SIZE
    # pos and n are multiples of 4, so an attribute header always fits when pos < n.
    while pos < n:
        atype, alen = _HH.unpack_from(data, pos)
        start = pos + 4
        end = start + alen
        following = start + ((alen + 3) & ~3)
        if following > n:
            raise _bad_request(f"attribute 0x{atype:04x} runs past the message", method, cls, tid)
        if atype == _FINGERPRINT:
            # §14.7: the last attribute; CRC-32 of everything before it, header length
            # already counting it, XORed with 0x5354554e. A mismatch means "not STUN".
            if following != n:
                raise StunError("attributes after FINGERPRINT", method=method, cls=cls)
            if alen != 4:
                raise StunError("FINGERPRINT length is not 4", method=method, cls=cls)
            crc = int.from_bytes(data[start:end], "big")
            if crc != binascii.crc32(data[:pos]) ^ FINGERPRINT_XOR:
                raise StunError("FINGERPRINT mismatch", method=method, cls=cls)
            attributes[_FINGERPRINT_KEY] = crc
            break
        if sealed and (atype != _MI_SHA256 or atype in attributes):
            pos = following  # past the integrity attributes: ignored
            continue
        entry = _UNPACKERS.get(atype)
        if entry is None:
            key: int = atype
            value = data[start:end]  # unknown types are kept as bytes
        else:
            member, unpack = entry
            key = member
            try:
                value = unpack(data[start:end], tid)
            except (ValueError, struct.error, IndexError) as exc:
                raise _bad_request(f"malformed {member.name}: {exc}", method, cls, tid) from None
        if atype in attributes:
            repeated.append((key, value))
        else:
            attributes[key] = value
            if entry is None and atype < 0x8000:
                unknown.append(atype)
            elif atype == _MI:
                integrity_offset = pos
                sealed = True
            elif atype == _MI_SHA256:
                sealed = True
        pos = following
    return Message(method, cls, tid, attributes, repeated, tuple(unknown), data, integrity_offset)


def serialize(
    msg: Message,
    *,
    integrity_key: bytes | None = None,
    fingerprint: bool = False,
    padding: bytes = b"\x00",
) -> bytes:
    """Encode ``msg``; append MESSAGE-INTEGRITY (with ``integrity_key``) and FINGERPRINT.

    MESSAGE-INTEGRITY and FINGERPRINT entries in ``msg.attributes`` are not written: they
    are computed here, last, in that order (RFC 8489 §14.5, §14.7). ``padding`` is the byte
    filling attributes up to 4 bytes; RFC 5769's vectors use spaces. Raises StunError for
    values that cannot be encoded.
    """
    tid = msg.transaction_id
    if len(tid) != 12:
        raise StunError("transaction id must be 12 bytes")
    if len(padding) != 1:
        raise StunError("padding must be one byte")
    if not 0 <= msg.method <= 0xFFF or not 0 <= msg.cls <= 3:
        raise StunError(f"bad method 0x{msg.method:x} or class {msg.cls}")
    parts: list[bytes] = []
    for atype, value in itertools.chain(msg.attributes.items(), msg.repeated):
        if atype == _MI or atype == _FINGERPRINT:
            continue
        codec = ATTRIBUTES.get(atype)
        try:
            data = _pack_bytes(value, tid) if codec is None else codec[0](value, tid)
        except (ValueError, TypeError, AttributeError, struct.error, OverflowError) as exc:
            raise StunError(f"cannot encode attribute 0x{atype:04x}: {exc}") from None
        size = len(data)
        if size > 0xFFFF or not 0 <= atype <= 0xFFFF:
            raise StunError(f"attribute 0x{atype:04x} cannot be encoded")
        parts.append(_HH.pack(atype, size))
        parts.append(data)
        if size & 3:
            parts.append(padding * (4 - (size & 3)))
    body = b"".join(parts)
    msg_type = _message_type(msg.method, msg.cls)
    tail = _COOKIE_BYTES + tid
    if integrity_key is not None:
        # §14.5: the HMAC covers the header with a length that already counts the 24-byte
        # MESSAGE-INTEGRITY attribute, and every attribute before it.
        head = _HH.pack(msg_type, len(body) + 24) + tail
        body += _HH.pack(_MI, 20) + hmac.digest(integrity_key, head + body, "sha1")
    if fingerprint:
        head = _HH.pack(msg_type, len(body) + 8) + tail
        crc = binascii.crc32(head + body) ^ FINGERPRINT_XOR
        body += _HH.pack(_FINGERPRINT, 4) + _U32.pack(crc)
    if len(body) > 0xFFFF:
        raise StunError("message longer than 65535 bytes")
    return _HH.pack(msg_type, len(body)) + tail + body


def check_integrity(msg: Message, key: bytes) -> bool:
    """Whether the parsed ``msg`` carries a MESSAGE-INTEGRITY made with ``key``.

    Recomputes HMAC-SHA1 over the message up to the attribute, with the header length
    adjusted to end right after it (RFC 8489 §14.5). False when there is none.
    """
    offset = msg.integrity_offset
    if offset is None:
        return False
    raw = msg.raw
    head = raw[:2] + (offset + 24 - HEADER_SIZE).to_bytes(2, "big") + raw[4:HEADER_SIZE]
    mac = hmac.digest(key, head + raw[HEADER_SIZE:offset], "sha1")
    return hmac.compare_digest(mac, raw[offset + 4 : offset + 24])


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The long-term credential key MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).

    The strings are UTF-8 encoded as given: the OpaqueString (formerly SASLprep) profile is
    not applied, like coturn, which makes no difference for ASCII credentials such as the
    TURN REST ones.
    """
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


# --- fast classifiers, ChannelData and stream framing -------------------------------------


def is_stun(data: bytes) -> bool:
    """Cheap test (no parsing): a header with the top two bits 00 and the magic cookie."""
    return len(data) >= HEADER_SIZE and data[0] < 0x40 and data[4:8] == _COOKIE_BYTES


def is_channel_data(data: bytes) -> bool:
    """Cheap test: the first two bits are 01, i.e. a channel 0x4000-0x7FFF (RFC 8656 §12)."""
    return len(data) > 3 and data[0] & 0xC0 == 0x40


def encode_channel_data(channel: int, payload: bytes, *, pad: bool = False) -> bytes:
    """A ChannelData message (RFC 8656 §12.4); ``pad`` to 4 bytes for TCP/TLS (§12.5)."""
    size = len(payload)
    if not 0x4000 <= channel <= 0x7FFF or size > 0xFFFF:
        raise StunError(f"cannot encode channel 0x{channel:x} with {size} bytes")
    if pad and size & 3:
        return _HH.pack(channel, size) + payload + b"\x00" * (4 - (size & 3))
    return _HH.pack(channel, size) + payload


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    """``(channel, payload)`` of a ChannelData message (RFC 8656 §12.4).

    Bytes beyond the length field (padding) are ignored; a length field larger than the
    data, or a first two bits other than 01, raise StunError.
    """
    try:
        channel, size = _unpack_hh(data)
    except struct.error:
        raise StunError("ChannelData shorter than its header") from None
    if channel & 0xC000 != 0x4000 or size > len(data) - 4:
        raise StunError("not ChannelData, or its length exceeds the data")
    return channel, data[4 : 4 + size]


def stream_starts_with_stun(buf: bytes | bytearray) -> bool | None:
    """Whether a TCP/TLS stream opens with a STUN message; None until 8 bytes are in.

    A client must Allocate (STUN) before it can have a channel, so a stream that opens with
    anything else (an HTTP request, a TLS ClientHello on the plain port) is not TURN. STUN
    is told by its top two bits and the magic cookie (RFC 8489 §5), which ChannelData's
    first-byte test alone would miss: "GET " parses as a channel number and a length.
    """
    if len(buf) < 8:
        return None
    return buf[0] & 0xC0 == 0 and buf[4:8] == _COOKIE_BYTES


def next_frame_length(buf: bytes | bytearray) -> int | None:
    """Bytes taken by the frame at the start of a TCP/TLS stream buffer, None if unknown yet.

    STUN messages take 20 + length bytes (RFC 8489 §6.2.2), ChannelData 4 + length rounded
    up to 4 (RFC 8656 §12.5). Anything else is garbage: StunError, close the connection.
    """
    if len(buf) < 4:
        return None
    first = buf[0] & 0xC0
    size = (buf[2] << 8) | buf[3]
    if first == 0x00:
        return HEADER_SIZE + size
    if first == 0x40:
        return 4 + ((size + 3) & ~3)
    raise StunError("stream data is neither STUN nor ChannelData")
