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
    forwarded,
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


# -- the apps' shape, forwarded without encoding it again ------------------------------


def app_text(type_: str, data_text: str) -> bytes:
    """A message as the apps write it: type first, then data, no spaces."""
    return ('{"type":"' + type_ + '","data":' + data_text + "}").encode()


def test_app_shaped_forward_goes_out_as_the_client_wrote_it_with_from_added() -> None:
    # An escape the client chose, a field the server does not know, key order: kept as is.
    data_text = (
        '{"to":"2","session_id":"1-2",'
        '"description":{"sdp":"caf\\u00e9","type":"offer"},"x":[1,2.50]}'
    )
    req = parse(app_text("offer", data_text))
    assert isinstance(req, Forward) and req.raw == data_text
    out = forwarded(req, "1")
    assert out == '{"type":"offer","data":{"from":"1",' + data_text[1:] + "}"
    assert json.loads(out) == {"type": "offer", "data": {**json.loads(data_text), "from": "1"}}


@pytest.mark.parametrize(
    "text",
    [
        # A client's own "from" (the server's replaces it: the object is encoded again).
        '{"type":"answer","data":{"to":"2","from":"spoofed","description":{}}}',
        # Keys in another order, spaces, another key after data: the full parse.
        '{"data":{"to":"2","description":{}},"type":"answer"}',
        '{"type":"answer", "data": {"to":"2","description":{}}}',
        '{"type":"answer","data":{"to":"2","description":{}},"extra":1}',
        '{"type":"answer","data":{"to":"2","description":{}}}  ',
    ],
)
def test_every_shape_forwards_the_same_message(text: str) -> None:
    req = parse(text.encode())
    assert isinstance(req, Forward)
    sent = json.loads(forwarded(req, "1"))
    expected = json.loads(text)
    expected.pop("extra", None)
    expected["data"]["from"] = "1"
    assert sent == expected
    assert sent["data"]["from"] == "1"
    if "spoofed" in text:
        assert req.raw is None and "spoofed" not in forwarded(req, "1")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"type":"offer","data":{"to":"2","description":{}}}}', "message is not valid JSON"),
        ('{"type":"offer","data":{"to":"2","description":{}}} x', "message is not valid JSON"),
        ('{"type":"offer","data":{"to":"2","description":{}', "message is not valid JSON"),
        ('{"type":"offer","data":{"to":"2"}}', "data.description must be an object"),
        ('{"type":"offer","data":{"description":{}}}', "data.to is required"),
        ('{"type":"offer","data":[1]}', "data must be an object"),
        ('{"type":"offer","data":{}}', "data.to is required"),
    ],
)
def test_app_shaped_bad_input_gets_the_same_error_as_any_shape(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse(text.encode())
    assert err.value.reason == reason
    # The same message in another shape (key order) is refused for the same reason.
    try:
        other = json.loads(text)
    except ValueError:
        return  # not JSON at all: no other shape of it
    with pytest.raises(ProtocolError) as again:
        parse(json.dumps({"data": other["data"], "type": other["type"]}).encode())
    assert again.value.reason == reason
