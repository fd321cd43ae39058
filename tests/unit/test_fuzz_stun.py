"""Property tests of the STUN codec beyond tests/unit/test_stun.py's fuzzing.

test_stun.py checks that arbitrary, STUN-shaped and mutated bytes raise only StunError and
that generated messages round-trip. These add:

- whatever :func:`parse` accepts is a fixed point: serialize it and it parses back equal, and
  serializes to the same bytes again;
- wire-valid messages built attribute by attribute with the codec's own packers, in any
  order, with repeats, unknown types, odd padding and MESSAGE-INTEGRITY in the middle,
  always parse, to exactly the values packed (only what follows the integrity attributes is
  ignored, RFC 8489 §14.5);
- the StunError contract: a 400 only for a sound request header, whose reply is a small
  error response to the same transaction; everything else dropped;
- TCP/TLS stream framing (:func:`next_frame_length`): a stream of STUN messages and padded
  ChannelData cut anywhere is split back into exactly those frames.

Each test counts what it reached and a final check asserts every outcome occurred.
"""

from __future__ import annotations

from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from flaskrtc.turn import stun
from flaskrtc.turn.stun import Attr, Class, Message, StunError
from tests.unit.fuzz_common import Outcomes, fuzz_settings
from tests.unit.test_stun import (
    ALLOCATE,
    MUTATIONS,
    UNKNOWN_TYPES,
    VALUES,
    attr,
    build,
    messages,
    mutate,
)

OUTCOMES = Outcomes()
# Dropped before re-encoding: serialize computes MESSAGE-INTEGRITY and FINGERPRINT itself,
# and writes a MESSAGE-INTEGRITY-SHA256 where it stands in ``attributes``, which would put
# ``repeated`` after it, where parse ignores attributes (RFC 8489 §14.6).
_INTEGRITY = (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)


def count(name: str) -> None:
    OUTCOMES[name] += 1
    if currently_in_test_context():
        event(name)


def without_integrity(msg: Message) -> Message:
    """``msg`` without the attributes serialize computes itself."""
    attributes = {t: v for t, v in msg.attributes.items() if t not in _INTEGRITY}
    repeated = [(t, v) for t, v in msg.repeated if t not in _INTEGRITY]
    return Message(msg.method, msg.cls, msg.transaction_id, attributes, repeated)


def check_parsed(data: bytes) -> Message | None:
    """Parse ``data``; check the StunError contract or the fixed-point property."""
    try:
        msg = stun.parse(data)
    except StunError as err:
        check_error(err, data)
        return None
    count("parsed")
    assert msg.raw == data
    plain = without_integrity(msg)
    again = stun.serialize(plain)
    reparsed = stun.parse(again)
    assert reparsed == plain, (msg, reparsed)
    assert stun.serialize(reparsed) == again
    if msg.integrity_offset is not None:
        count("parsed:integrity")
        assert data[msg.integrity_offset : msg.integrity_offset + 2] == b"\x00\x08"
    return msg


def check_error(err: StunError, data: bytes) -> None:
    assert err.code in (None, 400), err.code
    reply = err.error_response()
    if err.code is None:
        count("dropped")
        assert reply is None  # §6.3: header, length or FINGERPRINT failures are silent
        return
    # A 400 names a request whose header was sound: method, class and transaction id known.
    assert err.transaction_id == data[8:20] and len(err.transaction_id) == 12
    assert err.method is not None and err.cls is not None
    if err.cls != Class.REQUEST:
        count("bad-non-request")
        assert reply is None  # no responses to indications or responses (§6.3.2, §6.3.3)
        return
    count("400")
    assert reply is not None
    wire = stun.serialize(reply)
    parsed = stun.parse(wire)
    assert (parsed.method, parsed.cls, parsed.transaction_id) == (
        err.method,
        Class.ERROR,
        err.transaction_id,
    )
    assert parsed.attributes == {Attr.ERROR_CODE: (400, "Bad Request")}
    assert len(wire) <= 40  # the short reason phrase only: no reflection of the input


# --- any bytes, STUN-shaped bytes, mutations ---------------------------------------------


@fuzz_settings(1500)
@given(st.binary(max_size=120))
def test_any_bytes_parse_to_a_fixed_point_or_a_stun_error(data: bytes) -> None:
    check_parsed(data)


@fuzz_settings(600)
@given(st.integers(0, 0x3FFF), st.binary(min_size=12, max_size=12), st.data())
def test_random_attributes_after_a_sound_header(
    msg_type: int, tid: bytes, data: st.DataObject
) -> None:
    types = st.sampled_from(sorted(stun.ATTRIBUTES)) | st.integers(0, 0xFFFF)
    pieces = data.draw(st.lists(st.tuples(types, st.binary(max_size=24)), max_size=6))
    body = b"".join(attr(t, v, data.draw(st.sampled_from([b"\x00", b"\xff"]))) for t, v in pieces)
    check_parsed(build(body, msg_type=msg_type, tid=tid, fingerprint=data.draw(st.booleans())))


@fuzz_settings(600)
@given(MUTATIONS)
def test_mutated_signed_allocate(ops: list[tuple[str, int, int]]) -> None:
    check_parsed(mutate(ALLOCATE, ops))


# --- wire-valid messages, built attribute by attribute ------------------------------------


@st.composite
def wire_messages(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, Any]], int | None]:
    """(bytes, the (type, value) pairs the parser must report, MI offset or None).

    Attributes are packed by the codec's packers (or raw for unknown types), in random
    order, with repeats and random padding bytes; MESSAGE-INTEGRITY (a random HMAC: parse
    locates it, it does not check it) may come anywhere, and what follows it is ignored
    except MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5, §14.6).
    """
    tid = draw(st.binary(min_size=12, max_size=12))
    msg_type = draw(st.integers(0, 0x3FFF))
    chosen = draw(
        st.lists(
            st.sampled_from(sorted(VALUES)) | UNKNOWN_TYPES,
            max_size=8,
        )
    )
    pairs: list[tuple[int, Any]] = []
    for atype in chosen:
        value = draw(VALUES[atype]) if atype in VALUES else draw(st.binary(max_size=16))
        pairs.append((atype, value))
    mi_at = draw(st.none() | st.integers(0, len(pairs)))
    chunks: list[bytes] = []
    expected: list[tuple[int, Any]] = []
    offset = stun.HEADER_SIZE
    mi_offset = None
    for index, (atype, value) in enumerate(pairs):
        if index == mi_at:
            mi_offset = offset
            chunks.append(attr(Attr.MESSAGE_INTEGRITY, draw(st.binary(min_size=20, max_size=20))))
            offset += 24
        codec = stun.ATTRIBUTES.get(atype)
        raw = codec[0](value, tid) if codec is not None else value
        chunk = attr(atype, raw, draw(st.sampled_from([b"\x00", b" ", b"\xff"])))
        chunks.append(chunk)
        offset += len(chunk)
        if mi_offset is None:
            expected.append((atype, value))
    if mi_at == len(pairs):
        mi_offset = offset
        chunks.append(attr(Attr.MESSAGE_INTEGRITY, draw(st.binary(min_size=20, max_size=20))))
    body = b"".join(chunks)
    return build(body, msg_type=msg_type, tid=tid), expected, mi_offset


@fuzz_settings(600)
@given(wire_messages())
def test_wire_valid_messages_parse_to_the_values_packed(
    built: tuple[bytes, list[tuple[int, Any]], int | None],
) -> None:
    data, expected, mi_offset = built
    msg = check_parsed(data)
    assert msg is not None, "a wire-valid message was refused"
    assert msg.integrity_offset == mi_offset
    first: dict[int, Any] = {}
    repeats: list[tuple[int, Any]] = []
    for atype, value in expected:
        if atype in first:
            repeats.append((atype, value))
        else:
            first[atype] = value
    got = {t: v for t, v in msg.attributes.items() if t != Attr.MESSAGE_INTEGRITY}
    assert got == first
    assert msg.repeated == repeats
    assert msg.unknown_required == tuple(
        t for t in first if t < 0x8000 and t not in stun.ATTRIBUTES
    )
    count("wire-valid" if mi_offset is None else "wire-valid:integrity-inside")
    if repeats:
        count("wire-valid:repeats")


# --- stream framing -------------------------------------------------------------------------


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        channel = draw(st.integers(0x4000, 0x7FFF))
        return stun.encode_channel_data(channel, draw(st.binary(max_size=70)), pad=True)
    return stun.serialize(draw(messages()), fingerprint=draw(st.booleans()))


def split_stream(chunks: list[bytes]) -> tuple[list[bytes], bytearray]:
    """What a TCP/TLS reader does: buffer the chunks and cut off each whole frame."""
    buf = bytearray()
    out: list[bytes] = []
    for chunk in chunks:
        buf += chunk
        while True:
            size = stun.next_frame_length(buf)
            if size is None or size > len(buf):
                break
            out.append(bytes(buf[:size]))
            del buf[:size]
    return out, buf


@fuzz_settings(300)
@given(st.lists(frames(), max_size=6), st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_stream_framing_recovers_every_frame_however_the_stream_is_cut(
    sent: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(sent)
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        chunks.append(stream[pos : pos + cuts[i % len(cuts)]])
        pos += cuts[i % len(cuts)]
        i += 1
    got, rest = split_stream(chunks)
    assert got == sent and not rest
    for frame in got:
        if stun.is_channel_data(frame):
            channel, payload = stun.decode_channel_data(frame)
            assert stun.encode_channel_data(channel, payload, pad=True) == frame
            count("stream:channel-data")
        else:
            assert stun.stream_starts_with_stun(frame)
            stun.parse(frame)
            count("stream:stun")


def check_framing(data: bytes) -> None:
    """The stream helpers on any bytes: a size, None (too short) or StunError (garbage)."""
    try:
        size = stun.next_frame_length(data)
    except StunError:
        count("framing:garbage")
        assert data[0] & 0xC0 in (0x80, 0xC0)
        return
    if size is None:
        assert len(data) < 4
        return
    if data[0] & 0xC0 == 0x40:
        assert size >= 4 and size % 4 == 0  # ChannelData, padded on streams (§12.5)
        try:
            channel, payload = stun.decode_channel_data(data)
        except StunError:
            assert len(data) - 4 < ((data[2] << 8) | data[3])  # announced more than came
        else:
            assert 0x4000 <= channel <= 0x7FFF and data[4:].startswith(payload)
    else:
        assert size >= stun.HEADER_SIZE
    start = stun.stream_starts_with_stun(data)
    if len(data) < 8:
        assert start is None
    else:
        # RFC 8489 §5: top two bits zero and the magic cookie in bytes 4..7.
        assert start is (data[0] >> 6 == 0 and data[4:8] == b"\x21\x12\xa4\x42")
    if stun.is_stun(data):
        assert start is True
    count("framing:sized")


@fuzz_settings(600)
@given(st.binary(max_size=64))
def test_framing_helpers_on_any_bytes(data: bytes) -> None:
    check_framing(data)


ALL_TESTS = (
    test_any_bytes_parse_to_a_fixed_point_or_a_stun_error,
    test_random_attributes_after_a_sound_header,
    test_mutated_signed_allocate,
    test_wire_valid_messages_parse_to_the_values_packed,
    test_stream_framing_recovers_every_frame_however_the_stream_is_cut,
    test_framing_helpers_on_any_bytes,
)
MUST_REACH = (
    "parsed",
    "parsed:integrity",
    "dropped",
    "bad-non-request",
    "400",
    "wire-valid",
    "wire-valid:integrity-inside",
    "wire-valid:repeats",
    "stream:channel-data",
    "stream:stun",
    "framing:garbage",
    "framing:sized",
)


def test_every_outcome_was_reached() -> None:
    # The tests above ran first (file order) and counted; run alone (-k), it runs them.
    if OUTCOMES.missing(*MUST_REACH):
        for test in ALL_TESTS:
            test()
    assert OUTCOMES.missing(*MUST_REACH) == [], dict(OUTCOMES)
