"""Property and stateful fuzz tests of the signaling parser and hub, sans-I/O.

- :func:`protocol.parse` on any bytes, and on any JSON envelope (known and unknown types,
  any data): a request or a ProtocolError whose reply is a small, well-formed ``error``
  message, however big the input.
- The hub, driven by a state machine playing up to five connections at once (joins with
  colliding ids, takeovers, offers/answers/candidates to present and absent peers, bye,
  leave, keepalive, garbage, disconnects, reconnects and time passing): it never raises; it
  never sends to a connection that is gone; it holds at most one peer per open connection;
  forwarded messages carry the sender's registered id; and once the coalesced peers list is
  due, every registered peer holds the complete, current list.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from flaskrtc.signal.hub import Action, Broadcast, Close, Hub, Send
from flaskrtc.signal.protocol import (
    FORWARDED_TYPES,
    Bye,
    Forward,
    Keepalive,
    Leave,
    New,
    ProtocolError,
    parse,
)
from tests.unit.fuzz_common import Outcomes, fuzz_settings

OUTCOMES = Outcomes()
# An error reply names the request type and a reason; it must stay small whatever came in
# (a megabyte of "type" must not come back).
MAX_ERROR_REPLY = 1024
TYPES = ["new", "offer", "answer", "candidate", "bye", "leave", "keepalive", "peers", "error"]


def count(name: str) -> None:
    OUTCOMES[name] += 1
    if currently_in_test_context():
        event(name)


def check_parse(payload: bytes) -> Any:
    """Parse; a ProtocolError's reply must be a small, valid ``error`` message."""
    try:
        request = parse(payload)
    except ProtocolError as err:
        reply = err.reply
        assert len(reply.encode()) <= MAX_ERROR_REPLY, len(reply)
        decoded = json.loads(reply)
        assert decoded["type"] == "error"
        assert set(decoded["data"]) == {"request", "reason"}
        assert isinstance(decoded["data"]["request"], str) and decoded["data"]["reason"]
        count("parse:error")
        return None
    assert isinstance(request, New | Forward | Bye | Leave | Keepalive), request
    count(f"parse:{type(request).__name__}")
    return request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def nearly_right(draw: st.DrawFn) -> dict[str, Any]:
    """A message of a known type with the fields it needs, one of them perhaps spoiled."""
    type_ = draw(st.sampled_from(TYPES))
    ids = st.text(min_size=1, max_size=8)
    fields: dict[str, dict[str, Any]] = {
        "new": {"id": draw(ids), "name": draw(st.text(max_size=8)), "user_agent": "ua"},
        "offer": {"to": draw(ids), "description": {"sdp": "v=0", "type": "offer"}},
        "answer": {"to": draw(ids), "description": {"sdp": "v=0"}, "session_id": "1-2"},
        "candidate": {"to": draw(ids), "candidate": {"candidate": "c", "sdpMLineIndex": 0}},
        "bye": {"session_id": f"{draw(ids)}-{draw(ids)}"},
        "keepalive": {},
        "leave": {},
    }
    data = fields.get(type_, {})
    spoil: bool = draw(st.booleans())
    if data and spoil:
        key = draw(st.sampled_from(sorted(data)))
        data[key] = draw(st.sampled_from([None, "", 7, [], {}, "x" * 600]))
    return {"type": type_, "data": data}


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """A JSON value shaped like a message, often nearly right."""
    if draw(st.booleans()):
        return draw(nearly_right())
    if draw(st.integers(0, 5)) == 0:
        return draw(json_values)
    type_: Any = draw(st.sampled_from(TYPES) | st.text(max_size=10) | json_values)
    keys = ["id", "name", "user_agent", "to", "session_id", "description", "candidate"]
    data = draw(
        st.dictionaries(st.sampled_from(keys), json_values | st.text(max_size=300), max_size=5)
        | json_values
    )
    envelope: dict[str, Any] = {"type": type_, "data": data}
    if draw(st.booleans()):
        del envelope[draw(st.sampled_from(["type", "data"]))]
    return envelope


@fuzz_settings(1000)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_request_or_a_small_error(payload: bytes) -> None:
    check_parse(payload)


@fuzz_settings(400)
@given(envelopes())
def test_any_json_envelope_gives_a_request_or_a_small_error(envelope: Any) -> None:
    check_parse(json.dumps(envelope).encode())


@fuzz_settings(50)
@given(
    st.sampled_from(["type", "to", "id", "session_id"]),
    st.integers(300, 200_000),  # over every limit: 128 for ids, 257 for a session id
    st.sampled_from(["x", "é", "-"]),
)
def test_huge_fields_give_a_small_error(field: str, size: int, char: str) -> None:
    long = char * size
    envelope: dict[str, Any] = {"type": "offer", "data": {"to": "1", "description": {}}}
    if field == "type":
        envelope["type"] = long
    elif field == "session_id":
        envelope = {"type": "bye", "data": {"session_id": long}}
    elif field == "id":
        envelope = {"type": "new", "data": {"id": long}}
    else:
        envelope["data"]["to"] = long
    assert check_parse(json.dumps(envelope).encode()) is None


# --- the hub --------------------------------------------------------------------------------

IDS = ["111111", "222222", "333333", "a-b", "b"]  # ids with '-' make bye's split ambiguous
MAX_OPEN = 5


def msg(type_: str, data: Any = None) -> bytes:
    return json.dumps({"type": type_, "data": data}).encode()


class HubMachine(RuleBasedStateMachine):
    """The shell's side: open connections, their inboxes, and the clock."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub()  # the real coalescing interval
        self.now = 1000.0
        self.open: list[str] = []
        self.gone: set[str] = set()
        self.serial = 0
        self.inbox: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for peer_id in IDS[:2]:
            self.deliver(self.hub.receive(self.connect(), msg("new", {"id": peer_id}), self.now))

    def connect(self) -> str:
        self.serial += 1
        conn = f"c{self.serial}"
        self.open.append(conn)
        return conn

    def deliver(self, actions: list[Action]) -> None:
        closing: list[str] = []
        for action in actions:
            if isinstance(action, Send | Broadcast):
                targets = [action.conn] if isinstance(action, Send) else list(action.conns)
                assert len(set(targets)) == len(targets), action
                for conn in targets:
                    assert conn in self.open, f"sent to {conn}, which is gone: {action}"
                    decoded = json.loads(action.text)
                    assert isinstance(decoded, dict) and "type" in decoded
                    self.inbox[conn].append(decoded)
                    count(f"sent:{decoded['type']}")
            elif isinstance(action, Close):
                assert action.conn in self.open, action
                count(f"close:{action.code}")
                closing.append(action.conn)
            else:
                raise AssertionError(f"unknown action {action!r}")
        for conn in closing:
            # The shell closes the socket, and reports the disconnect.
            self.drop(conn)

    def drop(self, conn: str) -> None:
        if conn in self.open:
            self.open.remove(conn)
            self.gone.add(conn)
            self.deliver(self.hub.disconnect(conn, self.now))

    def receive(self, conn: str, payload: bytes) -> None:
        sender = self.hub.peer_of(conn)
        before = {c: len(self.inbox[c]) for c in self.open}
        self.deliver(self.hub.receive(conn, payload, self.now))
        # Whatever was forwarded came from the registered sender, as the server says.
        for c in self.open:
            for m in self.inbox[c][before.get(c, 0) :]:
                if m["type"] in FORWARDED_TYPES:
                    assert sender is not None and m["data"]["from"] == sender, m
                    count("forwarded")

    def pick(self, data: st.DataObject) -> str:
        """An open connection, mostly a registered one (so routing is reached, not only
        "send 'new' first")."""
        registered = [c for c in self.open if self.hub.peer_of(c) is not None]
        often: int = data.draw(st.integers(0, 3))
        if registered and often:
            return data.draw(st.sampled_from(registered))
        return data.draw(st.sampled_from(self.open))

    def target(self, data: st.DataObject) -> str:
        """A peer id: mostly a registered one, else any (an unknown one included)."""
        ids = self.hub.peer_ids()
        often: int = data.draw(st.integers(0, 2))
        if ids and often:
            return data.draw(st.sampled_from(ids))
        return data.draw(st.sampled_from([*IDS, "999999"]))

    # -- rules -------------------------------------------------------------------------

    @rule()
    def reconnect(self) -> None:
        if len(self.open) < MAX_OPEN:
            self.connect()

    @rule(data=st.data(), peer_id=st.sampled_from(IDS), name=st.text(max_size=5))
    def join(self, data: st.DataObject, peer_id: str, name: str) -> None:
        if self.open:
            self.receive(self.pick(data), msg("new", {"id": peer_id, "name": name}))

    @rule(
        data=st.data(),
        type_=st.sampled_from(FORWARDED_TYPES),
        extra=st.dictionaries(
            st.sampled_from(["from", "session_id", "media"]), st.text(max_size=5)
        ),
    )
    def forward(self, data: st.DataObject, type_: str, extra: dict[str, str]) -> None:
        if self.open:
            field = "candidate" if type_ == "candidate" else "description"
            body = {**extra, "to": self.target(data), field: {"sdp": "v=0"}}
            self.receive(self.pick(data), msg(type_, body))

    @rule(data=st.data(), mine_first=st.booleans())
    def bye(self, data: st.DataObject, mine_first: bool) -> None:
        if self.open:
            conn = self.pick(data)
            mine = self.hub.peer_of(conn) or data.draw(st.sampled_from(IDS))
            other = self.target(data)
            sid = f"{mine}-{other}" if mine_first else f"{other}-{mine}"
            self.receive(conn, msg("bye", {"session_id": sid}))

    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        if self.open:
            self.receive(self.pick(data), msg("leave"))

    @rule(data=st.data(), body=st.none() | st.dictionaries(st.text(max_size=3), st.integers()))
    def keepalive(self, data: st.DataObject, body: Any) -> None:
        if self.open:
            conn = self.pick(data)
            self.receive(conn, msg("keepalive", body))
            assert self.inbox[conn][-1] == {"type": "keepalive", "data": body or {}}

    @rule(
        data=st.data(), payload=st.binary(max_size=60) | envelopes().map(json.dumps).map(str.encode)
    )
    def garbage(self, data: st.DataObject, payload: bytes) -> None:
        if self.open:
            self.receive(self.pick(data), payload)

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        if self.open:
            self.drop(self.pick(data))
            count("disconnect")

    @rule(data=st.data())
    def disconnect_twice(self, data: st.DataObject) -> None:
        # A shell may report a connection gone from its reader and its writer both.
        if self.gone:
            conn = data.draw(st.sampled_from(sorted(self.gone)))
            assert self.hub.disconnect(conn, self.now) == []

    @rule(dt=st.sampled_from([0.0, 0.0005, 0.003, 0.2, 1.0, 5.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.deliver(self.hub.poll(self.now))
        due = self.hub.next_deadline()
        if due is not None:
            assert due > self.now
            return
        # Nothing pending: every registered peer holds the complete, current list.
        ids = self.hub.peer_ids()
        for conn in self.open:
            if self.hub.peer_of(conn) is None:
                continue
            lists = [m["data"] for m in self.inbox[conn] if m["type"] == "peers"]
            assert lists, f"{conn} never got a peers list"
            assert [p["id"] for p in lists[-1]] == ids, (conn, lists[-1], ids)
        if ids:
            count("peers:settled")

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def at_most_one_peer_per_open_connection(self) -> None:
        ids = self.hub.peer_ids()
        assert len(ids) == len(set(ids)) <= len(self.open) <= MAX_OPEN
        registered = {c: self.hub.peer_of(c) for c in self.open}
        named = [i for i in registered.values() if i is not None]
        assert sorted(named) == sorted(ids)
        assert all(self.hub.peer_of(c) is None for c in self.gone)
        # Nothing kept for connections that are gone (a shell-side table would leak).
        assert not set(self.hub._bound) & self.gone


def test_hub_fuzz_never_raises_and_holds_at_most_one_peer_per_connection() -> None:
    run_state_machine_as_test(HubMachine, settings=fuzz_settings(150, steps=40))
    assert (
        OUTCOMES.missing(
            "forwarded",
            "sent:peers",
            "sent:leave",
            "sent:bye",
            "sent:error",
            "sent:keepalive",
            "close:4409",
            "disconnect",
            "peers:settled",
        )
        == []
    ), dict(OUTCOMES)


def test_parse_outcomes_were_reached() -> None:
    # Runs after the parse tests (file order); alone (-k), it runs them itself.
    names = ("parse:error", "parse:New", "parse:Forward", "parse:Bye", "parse:Leave")
    if OUTCOMES.missing(*names):
        test_any_bytes_give_a_request_or_a_small_error()
        test_any_json_envelope_gives_a_request_or_a_small_error()
    assert OUTCOMES.missing(*names, "parse:Keepalive") == [], dict(OUTCOMES)
