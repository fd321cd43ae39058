"""Parsing and validation of signaling messages (docs/protocol.md §2, §3, §7)."""

from __future__ import annotations

import json

import pytest

from flaskrtc.signal.protocol import (
    Bye,
    Forward,
    Keepalive,
    Leave,
    New,
    ProtocolError,
    parse,
)


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_new_with_defaults_for_missing_strings() -> None:
    assert parse(enc({"type": "new", "data": {"id": "123456"}})) == New("123456", "", "")
    req = parse(enc({"type": "new", "data": {"id": "1", "name": "n", "user_agent": "ua"}}))
    assert req == New("1", "n", "ua")


def test_extra_top_level_keys_are_ignored() -> None:
    assert parse(enc({"type": "leave", "data": None, "x": 1})) == Leave()


def test_forward_keeps_every_field() -> None:
    data = {
        "to": "2",
        "from": "spoofed",
        "session_id": "1-2",
        "description": {"sdp": "v=0", "type": "offer"},
        "media": "video",
        "extra": [1, 2],
    }
    req = parse(enc({"type": "offer", "data": data}))
    assert isinstance(req, Forward)
    assert req.type == "offer" and req.to == "2" and req.data == data


def test_candidate_and_answer() -> None:
    cand = {
        "sdpMLineIndex": 0,
        "sdpMid": "0",
        "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
    }
    req = parse(enc({"type": "candidate", "data": {"to": "2", "candidate": cand}}))
    assert isinstance(req, Forward) and req.data["candidate"] == cand
    req = parse(
        enc({"type": "answer", "data": {"to": "2", "description": {"sdp": "", "type": "answer"}}})
    )
    assert isinstance(req, Forward) and req.type == "answer"


def test_bye_keepalive() -> None:
    assert parse(enc({"type": "bye", "data": {"session_id": "1-2", "from": "1"}})) == Bye("1-2")
    assert parse(enc({"type": "keepalive", "data": {"t": 5}})) == Keepalive({"t": 5})
    assert parse(enc({"type": "keepalive"})) == Keepalive({})


def test_binary_utf8_json_is_a_message_too() -> None:
    assert parse('{"type":"new","data":{"id":"é"}}'.encode()) == New("é", "", "")


@pytest.mark.parametrize(
    ("payload", "request_type", "reason_part"),
    [
        (b"{not json", "", "not valid JSON"),
        (b"\xff\xfe", "", "UTF-8"),
        (b"[1,2]", "", "JSON object"),
        (b'"new"', "", "JSON object"),
        (b"{}", "", "no 'type'"),
        (b'{"type": 5}', "", "must be a string"),
        (b'{"type": "dance"}', "dance", "unknown message type"),
        (b'{"type": "peers", "data": []}', "peers", "server only"),
        (b'{"type": "error", "data": {}}', "error", "server only"),
        (b'{"type": "new", "data": "x"}', "new", "must be an object"),
        (b'{"type": "new", "data": {}}', "new", "data.id is required"),
        (b'{"type": "new", "data": {"id": ""}}', "new", "must not be empty"),
        (b'{"type": "new", "data": {"id": 7}}', "new", "data.id must be a string"),
        (b'{"type": "new", "data": {"id": "1", "name": 3}}', "new", "data.name"),
        (b'{"type": "offer", "data": {"description": {}}}', "offer", "data.to is required"),
        (b'{"type": "offer", "data": {"to": "2"}}', "offer", "data.description"),
        (b'{"type": "offer", "data": {"to": "2", "description": "sdp"}}', "offer", "object"),
        (b'{"type": "candidate", "data": {"to": "2"}}', "candidate", "data.candidate"),
        (
            b'{"type": "answer", "data": {"to": "2", "description": {}, "session_id": 1}}',
            "answer",
            "session_id",
        ),
        (b'{"type": "bye", "data": {}}', "bye", "session_id is required"),
        (b'{"type": "bye"}', "bye", "must be an object"),
        (b'{"type": "keepalive", "data": 3}', "keepalive", "must be an object"),
    ],
)
def test_bad_input_raises_error_carrying_the_reply(
    payload: bytes, request_type: str, reason_part: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(payload)
    reply = json.loads(info.value.reply)
    assert reply["type"] == "error"
    assert reply["data"]["request"] == request_type
    assert reason_part in reply["data"]["reason"]


def test_overlong_id_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        parse(enc({"type": "new", "data": {"id": "x" * 129}}))


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ProtocolError):
        parse(b"[" * 100_000 + b"]" * 100_000)


def test_string_limits_are_inclusive() -> None:
    # docs/protocol.md: ids up to 128 characters, names 256, user agents 512; a bye's
    # session_id is two ids and a '-'.
    new = {"id": "i" * 128, "name": "n" * 256, "user_agent": "u" * 512}
    assert parse(enc({"type": "new", "data": new})) == New("i" * 128, "n" * 256, "u" * 512)
    for key, size in (("name", 257), ("user_agent", 513)):
        with pytest.raises(ProtocolError) as info:
            parse(enc({"type": "new", "data": {**new, key: "x" * size}}))
        assert info.value.reason == f"data.{key} is longer than {size - 1} characters"
    sid = "a" * 128 + "-" + "b" * 128
    assert parse(enc({"type": "bye", "data": {"session_id": sid}})) == Bye(sid)
    with pytest.raises(ProtocolError):
        parse(enc({"type": "bye", "data": {"session_id": sid + "c"}}))


def test_an_error_reply_echoes_at_most_64_characters_of_the_type() -> None:
    with pytest.raises(ProtocolError) as info:
        parse(enc({"type": "t" * 1000, "data": None}))
    assert info.value.request == "t" * 64
    assert json.loads(info.value.reply)["data"]["request"] == "t" * 64


def test_messages_are_sent_as_utf8_not_escaped() -> None:
    from flaskrtc.signal.protocol import message

    assert message("peers", [{"name": "Zoë 😀"}]) == '{"type":"peers","data":[{"name":"Zoë 😀"}]}'
