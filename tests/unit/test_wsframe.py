"""The sans-I/O WebSocket frame codec and handshake helpers (RFC 6455 §4.2, §5, §7.4)."""

from __future__ import annotations

import base64
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaskrtc.signal.wsframe import (
    MAX_FRAGMENTS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseReceived,
    Event,
    FrameDecoder,
    FrameError,
    Message,
    Ping,
    Pong,
    accept_key,
    encode_close,
    encode_frame,
    text_frame,
    valid_client_key,
)

MASK = b"\x37\xfa\x21\x3d"
BIG = 1 << 20


def client(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked frame as a client sends it."""
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


def decode(data: bytes, *, max_size: int = BIG, require_mask: bool = True) -> list[Event]:
    return FrameDecoder(max_size, require_mask=require_mask).feed(data)


def decode_chunked(
    data: bytes, sizes: list[int], *, max_size: int = BIG, require_mask: bool = True
) -> list[Event]:
    """Feed ``data`` cut into pieces of the given sizes (cycled), collecting all events."""
    decoder = FrameDecoder(max_size, require_mask=require_mask)
    events: list[Event] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        events += decoder.feed(data[pos : pos + size])
        pos += size
        i += 1
    return events


def error_code(data: bytes, *, max_size: int = BIG) -> int:
    """The close code of the FrameError that decoding ``data`` raises."""
    with pytest.raises(FrameError) as info:
        decode(data, max_size=max_size)
    return info.value.code


# -- RFC 6455 §5.7 examples -------------------------------------------------------------


def test_rfc_unmasked_hello() -> None:
    frame = bytes.fromhex("810548656c6c6f")
    assert encode_frame(OP_TEXT, b"Hello") == frame
    assert text_frame("Hello") == frame
    assert decode(frame, require_mask=False) == [Message(b"Hello", False)]


def test_rfc_masked_hello() -> None:
    frame = bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode_frame(OP_TEXT, b"Hello", mask=MASK) == frame
    assert decode(frame) == [Message(b"Hello", False)]


def test_rfc_fragmented_unmasked_hello() -> None:
    stream = bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")
    assert encode_frame(OP_TEXT, b"Hel", fin=False) + encode_frame(OP_CONT, b"lo") == stream
    assert decode(stream, require_mask=False) == [Message(b"Hello", False)]


def test_rfc_ping_and_masked_pong() -> None:
    ping = bytes.fromhex("890548656c6c6f")
    pong = bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert encode_frame(OP_PING, b"Hello") == ping
    assert encode_frame(OP_PONG, b"Hello", mask=MASK) == pong
    assert decode(ping, require_mask=False) == [Ping(b"Hello")]
    assert decode(pong) == [Pong(b"Hello")]


def test_rfc_256_byte_binary_uses_16_bit_length() -> None:
    payload = bytes(range(256))
    frame = encode_frame(OP_BINARY, payload)
    assert frame[:4] == bytes.fromhex("827e0100")
    assert frame[4:] == payload
    assert decode(frame, require_mask=False) == [Message(payload, True)]


def test_rfc_64k_binary_uses_64_bit_length() -> None:
    payload = bytes(range(256)) * 256
    frame = encode_frame(OP_BINARY, payload)
    assert frame[:10] == bytes.fromhex("827f0000000000010000")
    assert frame[10:] == payload
    assert decode(frame, require_mask=False) == [Message(payload, True)]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 200_001])
def test_length_encoding_boundaries_round_trip(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = client(OP_BINARY, payload)
    length7 = frame[1] & 0x7F
    assert length7 == (size if size < 126 else 126 if size < 0x10000 else 127)
    assert decode(frame) == [Message(payload, True)]


# -- data messages ----------------------------------------------------------------------


def test_text_and_binary_flags_and_raw_data() -> None:
    # TEXT is not UTF-8 validated here: the signaling layer answers an error message instead.
    stream = client(OP_TEXT, b'{"type":"\xff"}') + client(OP_BINARY, b"\x00\x01")
    assert decode(stream) == [Message(b'{"type":"\xff"}', False), Message(b"\x00\x01", True)]


def test_empty_messages() -> None:
    stream = client(OP_TEXT) + client(OP_BINARY, fin=False) + client(OP_CONT)
    assert decode(stream) == [Message(b"", False), Message(b"", True)]


def test_fragmented_message_with_control_frames_between_fragments() -> None:
    stream = (
        client(OP_BINARY, b"ab", fin=False)
        + client(OP_PING, b"p1")
        + client(OP_CONT, b"cd", fin=False)
        + client(OP_PONG, b"p2")
        + client(OP_CONT, b"", fin=False)
        + client(OP_CONT, b"ef")
        + client(OP_TEXT, b"next")
    )
    assert decode(stream) == [
        Ping(b"p1"),
        Pong(b"p2"),
        Message(b"abcdef", True),
        Message(b"next", False),
    ]


def test_message_type_comes_from_first_fragment() -> None:
    stream = client(OP_TEXT, b"a", fin=False) + client(OP_CONT, b"b")
    assert decode(stream) == [Message(b"ab", False)]


def test_partial_frames_are_kept_across_feeds() -> None:
    decoder = FrameDecoder(BIG)
    frame = client(OP_TEXT, b"x" * 300)
    assert decoder.feed(frame[:1]) == []
    assert decoder.feed(frame[1:3]) == []  # 16-bit length not complete yet
    assert decoder.feed(frame[3:100]) == []
    assert decoder.feed(frame[100:] + frame[:5]) == [Message(b"x" * 300, False)]
    assert decoder.buffered == 5
    assert decoder.feed(frame[5:]) == [Message(b"x" * 300, False)]
    assert decoder.buffered == 0


def test_byte_at_a_time_equals_one_shot() -> None:
    stream = (
        client(OP_TEXT, "héllo".encode())
        + client(OP_BINARY, bytes(range(256)) * 3, fin=False)
        + client(OP_PING, b"ping")
        + client(OP_CONT, b"!" * 70_000)
        + client(OP_PONG)
        + client(OP_TEXT)
        + encode_close(1001, "going away", mask=MASK)
    )
    one_shot = decode(stream)
    assert len(one_shot) == 6
    assert decode_chunked(stream, [1]) == one_shot
    assert decode_chunked(stream, [3, 7, 1, 130]) == one_shot


def test_require_mask_false_accepts_unmasked_and_masked_frames() -> None:
    stream = encode_frame(OP_TEXT, b"srv") + client(OP_TEXT, b"cli")
    assert decode(stream, require_mask=False) == [Message(b"srv", False), Message(b"cli", False)]


# -- close frames -----------------------------------------------------------------------


def test_empty_close_has_no_code() -> None:
    assert decode(client(OP_CLOSE)) == [CloseReceived(None, "")]


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert decode(encode_close(code, "bye ✓", mask=MASK)) == [CloseReceived(code, "bye ✓")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_codes_are_protocol_errors(code: int) -> None:
    assert error_code(encode_close(code, mask=MASK)) == 1002


def test_one_byte_close_payload_is_protocol_error() -> None:
    assert error_code(client(OP_CLOSE, b"\x03")) == 1002


def test_close_reason_with_bad_utf8_is_1007() -> None:
    assert error_code(client(OP_CLOSE, b"\x03\xe8bad \xff")) == 1007


def test_input_after_close_is_ignored() -> None:
    decoder = FrameDecoder(BIG)
    events = decoder.feed(client(OP_TEXT, b"a") + encode_close(mask=MASK) + b"\xff\xff garbage")
    assert events == [Message(b"a", False), CloseReceived(1000, "")]
    assert decoder.closed
    assert decoder.buffered == 0
    assert decoder.feed(b"\x00" * 100) == []
    assert decoder.feed(client(OP_TEXT, b"late")) == []


def test_close_during_fragmented_message_drops_the_fragments() -> None:
    stream = client(OP_TEXT, b"part", fin=False) + encode_close(1000, mask=MASK)
    assert decode(stream) == [CloseReceived(1000, "")]


def test_encode_close_truncates_reason_on_a_character_boundary() -> None:
    frame = encode_close(1000, "é" * 100)
    assert len(frame) <= 2 + 125
    [event] = decode(frame, require_mask=False)
    assert isinstance(event, CloseReceived)
    assert event.code == 1000 and event.reason == "é" * 61  # 122 bytes: 61 two-byte chars
    assert decode(encode_close(4001, "x" * 200), require_mask=False) == [
        CloseReceived(4001, "x" * 123)
    ]


def test_encode_close_masked_default() -> None:
    assert encode_close() == b"\x88\x02\x03\xe8"
    assert decode(encode_close(mask=MASK)) == [CloseReceived(1000, "")]


# -- protocol errors --------------------------------------------------------------------


def test_unmasked_client_frame_is_protocol_error() -> None:
    assert error_code(encode_frame(OP_TEXT, b"hi")) == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_reserved_bits_are_protocol_errors(rsv: int) -> None:
    frame = bytearray(client(OP_TEXT, b"hi"))
    frame[0] |= rsv
    assert error_code(bytes(frame)) == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcodes_are_protocol_errors(opcode: int) -> None:
    assert error_code(client(opcode, b"x")) == 1002


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frame_payload_over_125_is_protocol_error(opcode: int) -> None:
    # Exactly 125 is fine.
    [event] = decode(client(opcode, b"\x03\xe8" + b"x" * 123))
    expected = {
        OP_CLOSE: CloseReceived(1000, "x" * 123),
        OP_PING: Ping(b"\x03\xe8" + b"x" * 123),
        OP_PONG: Pong(b"\x03\xe8" + b"x" * 123),
    }
    assert event == expected[opcode]
    frame = client(opcode, b"\x03\xe8" + b"x" * 124)
    assert error_code(frame) == 1002
    assert error_code(frame[:2]) == 1002  # known from the 7-bit length alone
    assert error_code(client(opcode, b"x" * 70_000)[:2]) == 1002


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_fragmented_control_frame_is_protocol_error(opcode: int) -> None:
    assert error_code(client(opcode, b"", fin=False)) == 1002


def test_continuation_without_message_is_protocol_error() -> None:
    assert error_code(client(OP_CONT, b"x")) == 1002
    # Also after a message has completed.
    assert error_code(client(OP_TEXT, b"a") + client(OP_CONT, b"x")) == 1002


@pytest.mark.parametrize("first", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
def test_new_message_inside_fragmented_message_is_protocol_error(first: int, second: int) -> None:
    assert error_code(client(first, b"a", fin=False) + client(second, b"b")) == 1002


def test_64_bit_length_with_high_bit_is_protocol_error() -> None:
    header = bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63)
    assert error_code(header, max_size=1 << 64) == 1002


def test_errors_are_detected_from_the_first_two_bytes() -> None:
    with pytest.raises(FrameError):
        FrameDecoder(BIG).feed(b"\x83\x80")  # unknown opcode, nothing else received yet


def test_error_is_final() -> None:
    decoder = FrameDecoder(BIG)
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(OP_TEXT, b"unmasked"))
    with pytest.raises(FrameError) as info:
        decoder.feed(client(OP_TEXT, b"fine"))
    assert info.value.code == 1002


def test_frame_error_attributes() -> None:
    err = FrameError(1009, "message too big")
    assert (err.code, err.reason) == (1009, "message too big")
    assert "message too big" in str(err)


# -- size cap ---------------------------------------------------------------------------


def test_huge_announced_length_fails_from_the_header_alone() -> None:
    decoder = FrameDecoder(BIG)
    header = bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 40)  # masking key not even sent
    with pytest.raises(FrameError) as info:
        decoder.feed(header)
    assert info.value.code == 1009


def test_16_bit_length_over_cap_fails_from_the_header() -> None:
    with pytest.raises(FrameError) as info:
        FrameDecoder(1000).feed(bytes((0x81, 0xFE)) + struct.pack("!H", 1001))
    assert info.value.code == 1009


def test_message_of_exactly_the_cap_is_accepted() -> None:
    assert decode(client(OP_TEXT, b"x" * 1000), max_size=1000) == [Message(b"x" * 1000, False)]
    assert error_code(client(OP_TEXT, b"x" * 1001), max_size=1000) == 1009


def test_cap_counts_across_fragments() -> None:
    ok = client(OP_TEXT, b"x" * 6, fin=False) + client(OP_CONT, b"y" * 4)
    assert decode(ok, max_size=10) == [Message(b"x" * 6 + b"y" * 4, False)]
    decoder = FrameDecoder(10)
    assert decoder.feed(client(OP_TEXT, b"x" * 6, fin=False)) == []
    with pytest.raises(FrameError) as info:
        decoder.feed(client(OP_CONT, b"y" * 5)[:2])  # the header is enough to know
    assert info.value.code == 1009


def test_cap_resets_between_messages() -> None:
    stream = (client(OP_TEXT, b"x" * 6, fin=False) + client(OP_CONT, b"y" * 4)) * 3
    assert len(decode(stream, max_size=10)) == 3


def test_control_frames_do_not_count_towards_the_cap() -> None:
    stream = client(OP_TEXT, b"x" * 6, fin=False) + client(OP_PING, b"p" * 100)
    stream += client(OP_CONT, b"y" * 4)
    assert decode(stream, max_size=10) == [Ping(b"p" * 100), Message(b"x" * 6 + b"y" * 4, False)]


def test_incomplete_frame_buffer_stays_within_cap_plus_header() -> None:
    cap = 4096
    decoder = FrameDecoder(cap)
    frame = client(OP_BINARY, b"z" * cap)
    stream = client(OP_TEXT, b"hi") + frame + frame
    seen: list[Event] = []
    for pos in range(0, len(stream), 1000):
        seen += decoder.feed(stream[pos : pos + 1000])
        assert decoder.buffered <= cap + 14
    assert seen == [Message(b"hi", False), Message(b"z" * cap, True), Message(b"z" * cap, True)]
    assert decoder.buffered == 0


def test_negative_cap_is_rejected() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(-1)
    with pytest.raises(ValueError):
        FrameDecoder(BIG, max_fragments=0)


# -- fragment cap ------------------------------------------------------------------------


def test_empty_continuation_frames_are_capped() -> None:
    # The size cap never grows with empty fragments: without a count they pile up for ever.
    decoder = FrameDecoder(BIG)
    assert decoder.feed(client(OP_TEXT, b"", fin=False)) == []
    assert decoder.feed(client(OP_CONT, b"", fin=False) * (MAX_FRAGMENTS - 1)) == []
    with pytest.raises(FrameError) as info:
        decoder.feed(client(OP_CONT, b"", fin=False)[:2])  # known from the header
    assert (info.value.code, info.value.reason) == (1009, "message in too many fragments")


def test_a_message_of_exactly_max_fragments_is_accepted() -> None:
    stream = client(OP_BINARY, b"a", fin=False) + client(OP_CONT, b"b", fin=False) * 2
    stream += client(OP_CONT, b"c")
    assert decode(stream) == [Message(b"abbc", True)]
    assert FrameDecoder(BIG, max_fragments=4).feed(stream) == [Message(b"abbc", True)]
    with pytest.raises(FrameError) as info:
        FrameDecoder(BIG, max_fragments=3).feed(stream)
    assert info.value.code == 1009


def test_fragment_count_restarts_with_each_message() -> None:
    one = client(OP_TEXT, b"a", fin=False) + client(OP_CONT, b"b", fin=False)
    one += client(OP_CONT, b"c")
    decoder = FrameDecoder(BIG, max_fragments=3)
    assert decoder.feed(one * 50) == [Message(b"abc", False)] * 50


def test_control_frames_between_fragments_do_not_count_as_fragments() -> None:
    stream = client(OP_TEXT, b"a", fin=False) + client(OP_PING) * 10 + client(OP_CONT, b"b")
    assert FrameDecoder(BIG, max_fragments=2).feed(stream)[-1] == Message(b"ab", False)


def test_frames_counts_every_complete_frame() -> None:
    decoder = FrameDecoder(BIG)
    assert decoder.frames == 0
    stream = client(OP_TEXT, b"a", fin=False) + client(OP_PONG) + client(OP_CONT, b"", fin=False)
    decoder.feed(stream + client(OP_CONT)[:1])  # the last frame is not complete yet
    assert decoder.frames == 3
    decoder.feed(client(OP_CONT)[1:])
    assert decoder.frames == 4


# -- encoder ----------------------------------------------------------------------------


def test_encode_frame_fin_and_opcode_bits() -> None:
    assert encode_frame(OP_BINARY, b"", fin=False) == b"\x02\x00"
    assert encode_frame(OP_CONT, b"") == b"\x80\x00"
    assert client(OP_TEXT)[:2] == b"\x81\x80"


def test_encode_frame_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encode_frame(16, b"")
    with pytest.raises(ValueError):
        encode_frame(OP_TEXT, b"x", mask=b"\x00\x01\x02")


def test_masking_matches_rfc_definition() -> None:
    # §5.3: octet i of the transformed data is octet i XOR masking-key octet i MOD 4.
    payload = bytes(range(256)) * 4 + b"tail!"
    frame = client(OP_BINARY, payload)
    masked = frame[8:]
    assert masked == bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


# -- handshake helpers ------------------------------------------------------------------


def test_accept_key_rfc_example() -> None:
    # RFC 6455 §1.3, which also prints the SHA-1 digest in hex.
    expected = base64.b64encode(bytes.fromhex("b37a4f2cc0624f1690f64606cf385945b2bec4ea"))
    assert expected == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    "key",
    [
        "dGhlIHNhbXBsZSBub25jZQ==",  # base64 of 16 bytes (§4.1)
        "x3JJHMbDL1EzLkh9GBhXDw==",
        "ymfzzte2odc=",  # flutter-webrtc native apps: base64 of 8 bytes, lower-cased
        "abcd",
        "a+/9",
        "A" * 64,
    ],
)
def test_valid_client_keys(key: str) -> None:
    assert valid_client_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        " ",
        "   \t ",
        "abc",  # too short
        "A" * 65,  # too long
        "dGhlIHNhbXBsZSBub25jZQ== ",
        " dGhlIHNhbXBsZSBub25jZQ==",
        "dGhl IHNh",
        "dGhlIHNh\n",
        "ymfz-zte2",  # URL-safe alphabet is not base64 here
        "ymfz_zte",
        "abc===",
        "====",
        "ab=c",
        "ké12345678",
    ],
)
def test_invalid_client_keys(key: str) -> None:
    assert not valid_client_key(key)


# -- properties -------------------------------------------------------------------------


chunk_sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)


@st.composite
def frame_soup(draw: st.DrawFn) -> bytes:
    """Streams of plausible frames with random opcodes, flags, lengths and masking."""
    parts = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        opcode = draw(st.integers(min_value=0, max_value=15))
        payload = draw(st.binary(max_size=300))
        mask = draw(st.one_of(st.none(), st.binary(min_size=4, max_size=4)))
        frame = bytearray(encode_frame(opcode, payload, fin=draw(st.booleans()), mask=mask))
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            frame[0] |= draw(st.sampled_from([0x10, 0x20, 0x40]))
        if draw(st.booleans()):
            frame = frame[: draw(st.integers(min_value=0, max_value=len(frame)))]
        parts.append(bytes(frame))
    return b"".join(parts)


def run_chunked(decoder: FrameDecoder, data: bytes, sizes: list[int]) -> list[Event] | int:
    """All events, or the FrameError code; any other exception escapes."""
    events: list[Event] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        try:
            events += decoder.feed(data[pos : pos + size])
        except FrameError as err:
            return err.code
        pos += size
        i += 1
    return events


@settings(max_examples=300)
@given(
    data=st.one_of(st.binary(max_size=600), frame_soup()),
    sizes=chunk_sizes,
    max_size=st.integers(min_value=0, max_value=400),
    require_mask=st.booleans(),
)
def test_arbitrary_input_only_raises_frame_error(
    data: bytes, sizes: list[int], max_size: int, require_mask: bool
) -> None:
    chunked = run_chunked(FrameDecoder(max_size, require_mask=require_mask), data, sizes)
    try:
        one_shot: list[Event] | int = FrameDecoder(max_size, require_mask=require_mask).feed(data)
    except FrameError as err:
        one_shot = err.code
    if isinstance(one_shot, int):
        assert chunked == one_shot
        assert one_shot in (1002, 1007, 1009)
    else:
        assert chunked == one_shot


data_message = st.tuples(
    st.booleans(),  # binary
    st.binary(max_size=2000),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=4),  # fragment cut points
    st.lists(st.binary(max_size=125), max_size=2),  # pings before the last fragment
)


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(data_message, max_size=6), sizes=chunk_sizes, close=st.booleans())
def test_encoded_messages_decode_back(
    messages: list[tuple[bool, bytes, list[int], list[bytes]]], sizes: list[int], close: bool
) -> None:
    stream = bytearray()
    expected: list[Event] = []
    for binary, payload, cuts, pings in messages:
        bounds = sorted({min(c, len(payload)) for c in cuts} | {0, len(payload)})
        pieces = [payload[a:b] for a, b in itertools.pairwise(bounds)] or [b""]
        for i, piece in enumerate(pieces):
            first = OP_BINARY if binary else OP_TEXT
            opcode = first if i == 0 else OP_CONT
            last = i == len(pieces) - 1
            if last:
                # Between fragments when there are several, else just before the message.
                for ping in pings:
                    stream += client(OP_PING, ping)
                    expected.append(Ping(ping))
            stream += client(opcode, piece, fin=last)
        expected.append(Message(payload, binary))
    if close:
        stream += encode_close(1000, "done", mask=MASK)
        expected.append(CloseReceived(1000, "done"))
    data = bytes(stream)
    assert decode(data) == expected
    assert run_chunked(FrameDecoder(BIG), data, sizes) == expected
    # The client side sees the same messages from unmasked server frames.
    server_stream = b"".join(
        encode_frame(OP_BINARY if binary else OP_TEXT, payload)
        for binary, payload, _, _ in messages
    )
    assert decode(server_stream, require_mask=False) == [
        Message(payload, binary) for binary, payload, _, _ in messages
    ]


def test_a_single_fragment_limit_is_allowed() -> None:
    decoder = FrameDecoder(BIG, max_fragments=1)
    assert decoder.feed(client(OP_TEXT, b"whole")) == [Message(b"whole", False)]
    with pytest.raises(FrameError):
        decoder.feed(client(OP_TEXT, b"a", fin=False) + client(OP_CONT, b"b"))


def test_the_size_count_restarts_after_a_fragmented_message() -> None:
    # §10.4's cap is per message: what a finished message used does not count against the
    # next one, fragmented or not.
    decoder = FrameDecoder(8)
    assert decoder.feed(client(OP_TEXT, b"abcd", fin=False) + client(OP_CONT, b"efgh")) == [
        Message(b"abcdefgh", False)
    ]
    assert decoder.feed(client(OP_BINARY, b"12345678")) == [Message(b"12345678", True)]
