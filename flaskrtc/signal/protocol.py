"""The signaling messages of docs/protocol.md: parsing, validation and encoding.

Sans-I/O: bytes in, dataclasses out. Every way a message can be wrong raises
:class:`ProtocolError`, which carries the ``error`` reply to send back (the Go server
ignored bad input silently; flaskrtc always answers).
"""

from __future__ import annotations

import json
import json.scanner
from dataclasses import dataclass
from typing import Any

# Bounds on what a peer may register; the apps send 6 digits and short names.
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_USER_AGENT_LENGTH = 512

FORWARDED_TYPES = ("offer", "answer", "candidate")
# The one field each forwarded type must carry as an object, besides "to".
_PAYLOAD_FIELD = {"offer": "description", "answer": "description", "candidate": "candidate"}
SERVER_ONLY_TYPES = ("peers", "error")


# One encoder for every message: json.dumps with these arguments builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# json.loads without its Python layers (decode, raw_decode, two regex matches): the C
# scanner itself, for a document that starts with its value; anything else goes through
# json.loads, so the outcome (value or ValueError) is json.loads's in every case.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: the C class takes the decoder


def loads(text: str) -> Any:
    """``json.loads(text)``."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:  # no value at 0: whitespace first, or not JSON
        return json.loads(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):
        return json.loads(text)  # extra data: json.loads says where
    return value


def dumps(obj: Any) -> str:
    """Compact JSON as sent on the wire (UTF-8 kept as is)."""
    return _encode(obj)


def message(type_: str, data: Any) -> str:
    """The envelope ``{"type": type_, "data": data}`` as text."""
    return '{"type":' + _encode(type_) + ',"data":' + _encode(data) + "}"


# How much of a bad message's "type" an error reply echoes: every real type is short, and a
# reply must not grow with the input (a megabyte "type" would otherwise come back whole).
MAX_ECHOED_TYPE = 64


class ProtocolError(Exception):
    """A message that cannot be served; :attr:`reply` is the ``error`` message to send."""

    def __init__(self, request: str, reason: str, kind: str = "malformed") -> None:
        """``kind``: what went wrong, one of a few words (a metrics label): ``malformed``
        for anything :func:`parse` refuses, else the hub's or the cluster's word."""
        request = request[:MAX_ECHOED_TYPE]
        super().__init__(f"{request or '?'}: {reason}")
        self.request = request
        self.reason = reason
        self.kind = kind

    @property
    def reply(self) -> str:
        """The ``error`` message text for the sender."""
        return message("error", {"request": self.request, "reason": self.reason})


@dataclass(slots=True)
class New:
    """``new``: register this connection as a peer."""

    id: str
    name: str
    user_agent: str


@dataclass(slots=True)
class Forward:
    """``offer`` / ``answer`` / ``candidate``: relay ``data`` to peer ``to``.

    ``raw``: ``data``'s own JSON text as the client sent it, when it can be forwarded as is
    (it has no ``from``: :func:`forwarded` then inserts one instead of encoding it all
    again); None otherwise."""

    type: str
    to: str
    data: dict[str, Any]
    raw: str | None = None


@dataclass(slots=True)
class Bye:
    """``bye``: end session ``session_id`` (two peer ids joined by '-')."""

    session_id: str


@dataclass(slots=True)
class Leave:
    """``leave``: unregister, keeping the socket open."""


@dataclass(slots=True)
class Keepalive:
    """``keepalive``: echo ``data`` back to the sender."""

    data: dict[str, Any]


Request = New | Forward | Bye | Leave | Keepalive


def _string(request: str, data: dict[str, Any], key: str, limit: int, *, required: bool) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise ProtocolError(request, f"data.{key} is required")
        return ""
    if not isinstance(value, str):
        raise ProtocolError(request, f"data.{key} must be a string")
    if required and not value:
        raise ProtocolError(request, f"data.{key} must not be empty")
    if len(value) > limit:
        raise ProtocolError(request, f"data.{key} is longer than {limit} characters")
    return value


def _object(request: str, value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(request, f"{what} must be an object")
    return value


# How the apps (Dart's and JavaScript's JSON encoders, keys in insertion order) write a
# forwarded message: ``{"type":"offer","data":{...}}``. Such a message is scanned from its
# data object on, whose text can then be forwarded without being encoded again.
_FORWARD_PREFIXES = tuple((t, '{"type":"' + t + '","data":') for t in FORWARDED_TYPES)


def _scan_forward(text: str) -> tuple[str, Any, str] | None:
    """``(type, data, data's text)`` of a message in the apps' shape, else None (parse it
    in full). The outcome of :func:`parse` is the same either way."""
    for type_, prefix in _FORWARD_PREFIXES:
        if text.startswith(prefix):
            start = len(prefix)
            try:
                data, end = _scan(text, start)
            except (StopIteration, ValueError, RecursionError):
                return None  # not a value there: the full parse says what is wrong
            rest = text[end:]
            if rest != "}" and rest.strip(" \t\n\r") != "}":
                return None  # more keys after data, or not one object: parse it all
            return type_, data, text[start:end]
    return None


def forwarded(request: Forward, sender: str) -> str:
    """The text forwarded for ``request`` from peer ``sender``: its data with ``from`` set
    to ``sender`` (docs/protocol.md §3). Sets ``data["from"]`` too."""
    data = request.data
    raw = request.raw
    data["from"] = sender
    if raw is not None:
        # '{' + '"from":"id",' + the rest of the client's object: JSON has no key order,
        # and every other field goes out byte for byte as the client wrote it.
        return (
            '{"type":"' + request.type + '","data":{"from":' + _encode(sender) + "," + raw[1:] + "}"
        )
    return message(request.type, data)


def parse(payload: bytes) -> Request:
    """Parse one WebSocket message (TEXT or BINARY, UTF-8 JSON) into a request.

    Raises ProtocolError for anything docs/protocol.md §7 calls bad input.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("", "message is not valid UTF-8") from None
    fast = _scan_forward(text)
    if fast is not None:
        return _forward(*fast)
    try:
        envelope = loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("", "message is not valid JSON") from None
    if not isinstance(envelope, dict):
        raise ProtocolError("", "message must be a JSON object with 'type' and 'data'")
    type_ = envelope.get("type")
    if type_ is None:
        raise ProtocolError("", "message has no 'type'")
    if not isinstance(type_, str):
        raise ProtocolError("", "'type' must be a string")
    data = envelope.get("data")

    if type_ == "new":
        body = _object(type_, data, "data")
        return New(
            id=_string(type_, body, "id", MAX_ID_LENGTH, required=True),
            name=_string(type_, body, "name", MAX_NAME_LENGTH, required=False),
            user_agent=_string(type_, body, "user_agent", MAX_USER_AGENT_LENGTH, required=False),
        )
    if type_ in FORWARDED_TYPES:
        return _forward(type_, data, None)
    if type_ == "bye":
        body = _object(type_, data, "data")
        sid = _string(type_, body, "session_id", 2 * MAX_ID_LENGTH + 1, required=True)
        return Bye(sid)
    if type_ == "leave":
        return Leave()
    if type_ == "keepalive":
        return Keepalive({} if data is None else _object(type_, data, "data"))
    if type_ in SERVER_ONLY_TYPES:
        raise ProtocolError(type_, f"'{type_}' is sent by the server only")
    raise ProtocolError(type_, f"unknown message type '{type_[:64]}'")


def _forward(type_: str, data: Any, raw: str | None) -> Forward:
    """A checked :class:`Forward`; ``raw`` (data's text) kept only if it has no ``from``."""
    body = _object(type_, data, "data")
    to = _string(type_, body, "to", MAX_ID_LENGTH, required=True)
    field = _PAYLOAD_FIELD[type_]
    _object(type_, body.get(field), f"data.{field}")
    session_id = body.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise ProtocolError(type_, "data.session_id must be a string")
    if raw is not None and ("from" in body or not body):
        raw = None  # a client's "from" is replaced: encode the object again
    return Forward(type_, to, body, raw)
