"""The fuzz targets of ``make fuzz``: one function per target, ``bytes -> None``.

Two kinds, both checking the same properties as tests/unit/test_fuzz_*.py (they call the
tests' own checks):

- raw targets take the fuzzer's bytes as the input itself (a datagram, a WebSocket stream,
  a signaling message), so coverage-guided mutation works on the wire format;
- hypothesis targets hand the bytes to a hypothesis test through ``fuzz_one_input``: the
  bytes choose the test's inputs (structured, signed TURN requests with live nonces, message
  sequences), so libFuzzer's coverage guides the state machines too.

A target raises only when a property is broken. ``OUTCOMES`` collects every outcome name
the tests count (``make fuzz`` prints how many distinct ones were reached).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis.stateful import get_state_machine_test

from flaskrtc.signal.hub import Hub
from flaskrtc.signal.wsframe import FrameDecoder
from flaskrtc.turn.stun import Attr, Method
from tests.unit import test_fuzz_signal, test_fuzz_stun, test_fuzz_turn_core, test_fuzz_wsframe
from tests.unit.fuzz_common import fuzz_settings

Target = Callable[[bytes], None]


def outcomes() -> Counter[str]:
    """Every outcome counted so far, by all targets' test modules."""
    total: Counter[str] = Counter()
    for module in (test_fuzz_stun, test_fuzz_wsframe, test_fuzz_signal):
        total.update(module.OUTCOMES)
    total.update(test_fuzz_turn_core.TurnMachine.outcomes)
    return total


# -- raw targets ------------------------------------------------------------------------------


def stun_bytes(data: bytes) -> None:
    """One STUN datagram or stream frame: parse fixed point / StunError contract, framing."""
    test_fuzz_stun.check_parsed(data)
    test_fuzz_stun.check_framing(data)


def wsframe_bytes(data: bytes) -> None:
    """A WebSocket byte stream: byte 0 picks the size cap and masking, byte 1 the chunking."""
    if len(data) < 2:
        return
    max_size = data[0] * 2
    require_mask = bool(data[0] & 1)
    step = data[1] % 64 + 1
    stream = data[2:]
    chunks = [stream[i : i + step] for i in range(0, len(stream), step)]
    decoder = FrameDecoder(max_size, require_mask=require_mask)
    test_fuzz_wsframe.feed_all(decoder, chunks, max_size)


_HUB_NEW = (
    b'{"type":"new","data":{"id":"111111"}}',
    b'{"type":"new","data":{"id":"222222"}}',
)


def signal_bytes(data: bytes) -> None:
    """A signaling message: parse (request or small error), then into a hub of two peers,
    where it must give actions and no exception."""
    test_fuzz_signal.check_parse(data)
    hub = Hub()
    for conn, payload in enumerate(_HUB_NEW):
        hub.receive(conn, payload, 0.0)
    for action in hub.receive(0, data, 1.0):
        assert action is not None


def turn_bytes(data: bytes) -> None:
    """A datagram from a client that has an allocation (a fresh core for every input, so
    an input replays alone): the core's contract, then its state."""
    machine = test_fuzz_turn_core.TurnMachine()
    player = machine.players[0]
    machine.request(player, Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 17})
    machine.handle(player, data)
    machine.state_is_bounded_and_consistent()


# -- hypothesis targets -----------------------------------------------------------------------


def _hypothesis(test: Any) -> Target:
    fuzz: Callable[[bytes], Any] = test.hypothesis.fuzz_one_input

    def target(data: bytes) -> None:
        fuzz(data)

    return target


def _machine(factory: Any) -> Target:
    test = get_state_machine_test(factory, settings=settings(fuzz_settings(1), database=None))
    return _hypothesis(test)


class StrictTurnMachine(test_fuzz_turn_core.TurnMachine):
    """Every check strict, the known-bug ones of issue 10 included."""

    strict = frozenset({"relay-bypass", "reservations-over-quota", "quota-per-credential"})


class StrictLoopbackTurnMachine(StrictTurnMachine):
    """Relays advertised on 127.0.0.1, a denied address: the own-relay exception at work."""

    relay_ip = "127.0.0.1"


TARGETS: dict[str, Target] = {
    "stun-bytes": stun_bytes,
    "stun-wire": _hypothesis(test_fuzz_stun.test_wire_valid_messages_parse_to_the_values_packed),
    "stun-stream": _hypothesis(
        test_fuzz_stun.test_stream_framing_recovers_every_frame_however_the_stream_is_cut
    ),
    "turn-bytes": turn_bytes,
    "turn-machine": _machine(StrictTurnMachine),
    "turn-machine-loopback": _machine(StrictLoopbackTurnMachine),
    "wsframe-bytes": wsframe_bytes,
    "wsframe-model": _hypothesis(test_fuzz_wsframe.test_decoding_matches_the_model),
    "signal-bytes": signal_bytes,
    "signal-envelope": _hypothesis(
        test_fuzz_signal.test_any_json_envelope_gives_a_request_or_a_small_error
    ),
    "hub-machine": _machine(test_fuzz_signal.HubMachine),
}


def seeds(name: str) -> list[bytes]:
    """Starting inputs for a raw target's corpus (valid inputs, so mutation starts deep)."""
    from flaskrtc.signal.wsframe import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, encode_frame
    from flaskrtc.turn import stun
    from tests.unit.test_stun import ALLOCATE, SAMPLE_IPV6_RESPONSE, SAMPLE_REQUEST

    if name in ("stun-bytes", "turn-bytes"):
        channel = stun.encode_channel_data(0x4000, b"hello")
        return [ALLOCATE, SAMPLE_REQUEST, SAMPLE_IPV6_RESPONSE, channel]
    if name == "wsframe-bytes":
        mask = b"\x01\x02\x03\x04"
        stream = (
            encode_frame(OP_TEXT, b"he", fin=False, mask=mask)
            + encode_frame(OP_PING, b"p", mask=mask)
            + encode_frame(OP_CONT, b"llo", mask=mask)
            + encode_frame(OP_BINARY, bytes(200), mask=mask)
        )
        return [b"\xc9\x07" + stream]
    if name == "signal-bytes":
        return [
            b'{"type":"offer","data":{"to":"222222","description":{"sdp":"v=0"}}}',
            b'{"type":"bye","data":{"session_id":"111111-222222"}}',
            b'{"type":"keepalive","data":{}}',
            b'{"type":"leave"}',
        ]
    return []
