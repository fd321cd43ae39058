"""Property tests of the RFC 6455 frame decoder beyond tests/unit/test_wsframe.py.

- Any mix of valid frames, broken frames and random bytes, cut anywhere: only FrameError
  escapes; after every feed the buffer stays within max(max_message_size, 125) + 14 bytes and
  a message in progress within max_message_size and the fragment cap; an error is final (the
  same code on every later feed) and so is a CLOSE (nothing after it, nothing buffered).
- Against a reference model: streams of fragmented messages (empty fragments included) with
  control frames between fragments, random masks and a small size cap decode to exactly the
  model's events, or to a prefix of them and the model's error code.
- A fragmented message's frame count is capped (issue 10: empty continuation frames used to
  pile up without bound, since the size check never grew).
"""

from __future__ import annotations

from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from flaskrtc.signal import wsframe
from flaskrtc.signal.wsframe import (
    MAX_CONTROL_PAYLOAD,
    MAX_HEADER_SIZE,
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
    encode_close,
    encode_frame,
)
from tests.unit.fuzz_common import Outcomes, fuzz_settings

OUTCOMES = Outcomes()
# The model test sets a small cap on the frames of one message, so that it is reached.
MODEL_CAP = 4

masks = st.binary(min_size=4, max_size=4)


def count(name: str) -> None:
    OUTCOMES[name] += 1
    if currently_in_test_context():
        event(name)


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos += size
        i += 1
    return chunks


def pending_fragments(decoder: FrameDecoder) -> int:
    # Private, read on purpose: what the decoder holds for a message in progress.
    parts: list[bytes] = decoder._frag_parts
    return len(parts)


def feed_all(
    decoder: FrameDecoder, chunks: list[bytes], max_size: int, cap: int = wsframe.MAX_FRAGMENTS
) -> tuple[list[Event], int]:
    """Feed every chunk, checking the decoder's bounds after each; (events, error code or 0)."""
    events: list[Event] = []
    error = 0
    bound = max(max_size, MAX_CONTROL_PAYLOAD) + MAX_HEADER_SIZE
    for chunk in chunks:
        if error:
            try:
                decoder.feed(chunk)
            except FrameError as err:
                assert err.code == error  # final: the same failure again
                continue
            raise AssertionError("a decoder that failed accepted more input")
        try:
            got = decoder.feed(chunk)
        except FrameError as err:
            assert err.code in (1002, 1007, 1009), err.code
            error = err.code
            count(f"error:{err.code}")
            continue
        if decoder.closed:
            assert decoder.buffered == 0
            assert decoder.feed(b"\x81\x00") == []  # nothing after a CLOSE (§5.5.1)
        assert decoder.buffered <= bound, (decoder.buffered, bound)
        assert sum(len(p) for p in decoder._frag_parts) <= max_size
        assert pending_fragments(decoder) <= cap
        for ev in got:
            if isinstance(ev, Message):
                assert len(ev.data) <= max_size
            elif isinstance(ev, Ping | Pong):
                assert len(ev.payload) <= MAX_CONTROL_PAYLOAD
        events += got
    return events, error


# --- anything at all ----------------------------------------------------------------------


@st.composite
def frame_bytes(draw: st.DrawFn) -> bytes:
    """One frame: valid, broken in one way, or random bytes."""
    kind = draw(st.sampled_from(["data", "cont", "control", "close", "broken", "random"]))
    mask = draw(st.none() | masks) if draw(st.booleans()) else draw(masks)
    fin = draw(st.booleans())
    if kind == "data":
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        return encode_frame(opcode, draw(st.binary(max_size=300)), fin=fin, mask=mask)
    if kind == "cont":
        return encode_frame(OP_CONT, draw(st.binary(max_size=40)), fin=fin, mask=mask)
    if kind == "control":
        opcode = draw(st.sampled_from([OP_PING, OP_PONG]))
        return encode_frame(opcode, draw(st.binary(max_size=130)), fin=True, mask=mask)
    if kind == "close":
        code = draw(st.sampled_from([1000, 1001, 1005, 1015, 2999, 3000, 4999, 5000]))
        reason = draw(st.binary(max_size=20))
        payload = draw(st.sampled_from([b"", b"\x03", code.to_bytes(2, "big") + reason]))
        return encode_frame(OP_CLOSE, payload, mask=mask)
    if kind == "broken":
        opcode = draw(st.integers(0, 15))
        raw = bytearray(encode_frame(opcode, draw(st.binary(max_size=140)), fin=fin, mask=mask))
        raw[0] |= draw(st.sampled_from([0, 0x10, 0x20, 0x40]))  # RSV bits
        if draw(st.booleans()):
            # A 64-bit length with its high bit set, or any huge announced length.
            raw[1] = (raw[1] & 0x80) | 127
            raw[2:2] = draw(st.binary(min_size=8, max_size=8))
        return bytes(raw)
    return draw(st.binary(max_size=60))


@fuzz_settings(500)
@given(
    st.lists(frame_bytes(), max_size=12),
    st.lists(st.integers(1, 80), min_size=1, max_size=6),
    st.integers(0, 400),
    st.booleans(),
    st.booleans(),
)
def test_any_input_keeps_the_decoder_bounded_and_its_failures_final(
    frames: list[bytes], sizes: list[int], max_size: int, require_mask: bool, close: bool
) -> None:
    decoder = FrameDecoder(max_size, require_mask=require_mask)
    chunks = cut(b"".join(frames), sizes)
    if close:
        chunks.append(encode_close(1000, mask=b"abcd"))  # ends it unless it failed
    events, error = feed_all(decoder, chunks, max_size)
    count("failed" if error else ("closed" if decoder.closed else "open"))
    for ev in events:
        count(type(ev).__name__)


# --- against a reference model ------------------------------------------------------------


@st.composite
def conversations(draw: st.DrawFn) -> tuple[bytes, list[Event], int, int]:
    """(stream, the events the model expects, the model's error code or 0, max size)."""
    max_size = draw(st.integers(0, 200))
    stream = bytearray()
    expected: list[Event] = []
    error = 0
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 4)) == 0:
            payload = draw(st.binary(max_size=MAX_CONTROL_PAYLOAD))
            is_ping: bool = draw(st.booleans())
            stream += encode_frame(OP_PING if is_ping else OP_PONG, payload, mask=draw(masks))
            if not error:
                expected.append(Ping(payload) if is_ping else Pong(payload))
            continue
        binary = draw(st.booleans())
        # Fragments, empty ones made likely; many of them, now and then.
        many = draw(st.integers(0, 9)) == 0
        pieces = draw(
            st.lists(
                st.binary(max_size=0) | st.binary(max_size=60),
                min_size=1,
                max_size=MODEL_CAP + 3 if many else 5,
            )
        )
        size = 0
        for i, piece in enumerate(pieces):
            opcode = (OP_BINARY if binary else OP_TEXT) if i == 0 else OP_CONT
            last = i == len(pieces) - 1
            if not last and draw(st.integers(0, 5)) == 0:
                ping = draw(st.binary(max_size=10))
                stream += encode_frame(OP_PING, ping, mask=draw(masks))
                if not error:
                    expected.append(Ping(ping))
            stream += encode_frame(opcode, piece, fin=last, mask=draw(masks))
            if error:
                continue
            # The decoder's checks, in its order: the fragment cap, then the size (both on
            # the frame header, before its payload is read).
            if i and i >= MODEL_CAP:
                error = 1009
                count("model:fragment-cap")
                continue
            size += len(piece)
            if size > max_size:
                error = 1009
        if not error:
            expected.append(Message(b"".join(pieces), binary))
    if draw(st.booleans()):
        reason = draw(st.text(max_size=10))
        stream += encode_close(1000, reason, mask=draw(masks))
        if not error:
            expected.append(CloseReceived(1000, reason))
    return bytes(stream), expected, error, max_size


@fuzz_settings(300)
@given(conversations(), st.lists(st.integers(1, 200), min_size=1, max_size=6))
def test_decoding_matches_the_model(
    conversation: tuple[bytes, list[Event], int, int], sizes: list[int]
) -> None:
    stream, expected, error, max_size = conversation
    decoder = FrameDecoder(max_size, max_fragments=MODEL_CAP)
    got, failed = feed_all(decoder, cut(stream, sizes), max_size, MODEL_CAP)
    assert failed == error, (failed, error)
    if error:
        # Events of frames before the failing one come out only if an earlier feed ended
        # after them: a prefix.
        assert got == expected[: len(got)]
        count("model:error")
    else:
        assert got == expected
        count("model:decoded")
        if any(isinstance(ev, Message) and ev.data == b"" for ev in expected):
            count("model:empty-message")


# --- the fragment cap -----------------------------------------------------------------------


def test_a_message_in_endless_empty_fragments_is_refused() -> None:
    # Issue 10: each empty continuation frame was kept (the size check never grew), so a
    # client could make the server hold any number of them. 100000 are refused long before
    # the end, with 1009 like any message too big to take in.
    decoder = FrameDecoder(1 << 20)
    decoder.feed(encode_frame(OP_TEXT, b"x", fin=False, mask=b"abcd"))
    empty = encode_frame(OP_CONT, b"", fin=False, mask=b"abcd")
    code = 0
    for sent in range(1, 100_001):
        try:
            decoder.feed(empty)
        except FrameError as err:
            code = err.code
            break
        assert pending_fragments(decoder) == sent + 1
    assert code == 1009, "100000 empty fragments were all kept"
    assert sent <= 10_000


# --- coverage -------------------------------------------------------------------------------

MUST_REACH = (
    "error:1002",
    "error:1007",
    "error:1009",
    "closed",
    "open",
    "Message",
    "Ping",
    "Pong",
    "CloseReceived",
    "model:error",
    "model:decoded",
    "model:empty-message",
)


def test_every_outcome_was_reached() -> None:
    # The tests above ran first (file order) and counted; run alone (-k), it runs them.
    if OUTCOMES.missing(*MUST_REACH):
        test_any_input_keeps_the_decoder_bounded_and_its_failures_final()
        test_decoding_matches_the_model()
    assert OUTCOMES.missing(*MUST_REACH) == [], dict(OUTCOMES)
    assert OUTCOMES["model:fragment-cap"], dict(OUTCOMES)
