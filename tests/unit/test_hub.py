"""The hub's routing and registration rules (docs/protocol.md §3 to §6), without sockets.

Time is passed in; the coalescing of peers lists is checked by moving ``now`` by hand.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from flaskrtc.signal.hub import (
    CLOSE_TAKEN_OVER,
    Action,
    Broadcast,
    Close,
    Hub,
    Send,
    default_interval,
    default_max_wait,
)


def msg(type_: str, data: Any = None) -> bytes:
    return json.dumps({"type": type_, "data": data}).encode()


class Wire:
    """Delivers hub actions into per-connection inboxes, as the shell would."""

    def __init__(self, hub: Hub | None = None) -> None:
        self.hub = hub or Hub(interval=lambda n: 0.0)
        self.inbox: dict[object, list[dict[str, Any]]] = defaultdict(list)
        self.closed: dict[object, int] = {}
        self.now = 0.0

    def deliver(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.inbox[action.conn].append(json.loads(action.text))
            elif isinstance(action, Broadcast):
                for conn in action.conns:
                    self.inbox[conn].append(json.loads(action.text))
            elif isinstance(action, Close):
                self.closed[action.conn] = action.code

    def send(self, conn: object, type_: str, data: Any = None) -> None:
        self.deliver(self.hub.receive(conn, msg(type_, data), self.now))

    def drop(self, conn: object) -> None:
        self.deliver(self.hub.disconnect(conn, self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        self.deliver(self.hub.poll(self.now))

    def join(self, conn: object, peer_id: str, name: str = "") -> None:
        self.send(conn, "new", {"id": peer_id, "name": name, "user_agent": "ua-" + peer_id})

    def take(self, conn: object) -> list[dict[str, Any]]:
        got, self.inbox[conn] = self.inbox[conn], []
        return got

    def last_peers(self, conn: object) -> list[str]:
        lists = [m["data"] for m in self.inbox[conn] if m["type"] == "peers"]
        return [p["id"] for p in lists[-1]]


def test_new_sends_peers_to_everyone_including_sender_in_registration_order() -> None:
    w = Wire()
    w.join("c1", "111", "alice")
    assert w.take("c1") == [
        {"type": "peers", "data": [{"id": "111", "name": "alice", "user_agent": "ua-111"}]}
    ]
    w.join("c2", "222", "bob")
    for conn in ("c1", "c2"):
        got = w.take(conn)
        assert [m["type"] for m in got] == ["peers"]
        assert [p["id"] for p in got[0]["data"]] == ["111", "222"]


def test_offer_answer_candidate_forwarded_with_from_set_by_server_and_fields_kept() -> None:
    w = Wire()
    w.join("c1", "1")
    w.join("c2", "2")
    w.take("c1"), w.take("c2")
    data = {
        "to": "2",
        "from": "999",
        "session_id": "1-2",
        "media": "video",
        "description": {"sdp": "v=0", "type": "offer"},
        "unknown": {"k": 1},
    }
    w.send("c1", "offer", data)
    assert w.take("c2") == [{"type": "offer", "data": {**data, "from": "1"}}]
    assert w.take("c1") == []
    w.send("c2", "answer", {"to": "1", "session_id": "1-2", "description": {"sdp": "a"}})
    assert w.take("c1")[0]["data"]["from"] == "2"
    cand = {"sdpMLineIndex": 0, "sdpMid": "0", "candidate": "candidate:x"}
    w.send("c2", "candidate", {"to": "1", "session_id": "1-2", "candidate": cand})
    got = w.take("c1")[0]
    assert got["type"] == "candidate" and got["data"]["candidate"] == cand


def test_unknown_to_gets_an_error() -> None:
    w = Wire()
    w.join("c1", "1")
    w.take("c1")
    w.send("c1", "offer", {"to": "nobody", "description": {}})
    assert w.take("c1") == [
        {"type": "error", "data": {"request": "offer", "reason": "peer 'nobody' is not registered"}}
    ]


def test_messages_before_new_get_errors_and_register_nothing() -> None:
    w = Wire()
    w.join("c2", "2")
    w.take("c2")
    for type_, data in (
        ("offer", {"to": "2", "description": {}}),
        ("answer", {"to": "2", "description": {}}),
        ("candidate", {"to": "2", "candidate": {}}),
        ("bye", {"session_id": "1-2"}),
        ("leave", None),
    ):
        w.send("c1", type_, data)
        got = w.take("c1")
        assert got[0]["type"] == "error" and got[0]["data"]["request"] == type_
        assert "send 'new' first" in got[0]["data"]["reason"]
    assert w.take("c2") == []
    assert w.hub.peer_ids() == ["2"]


def test_keepalive_echoed_to_sender_only_even_before_new() -> None:
    w = Wire()
    w.join("c2", "2")
    w.take("c2")
    w.send("c1", "keepalive", {"n": 1})
    assert w.take("c1") == [{"type": "keepalive", "data": {"n": 1}}]
    assert w.take("c2") == []


def test_bye_goes_to_both_sides_including_sender() -> None:
    w = Wire()
    w.join("c1", "1")
    w.join("c2", "2")
    w.take("c1"), w.take("c2")
    w.send("c2", "bye", {"session_id": "1-2", "from": "2"})
    assert w.take("c1") == [{"type": "bye", "data": {"session_id": "1-2", "to": "1"}}]
    assert w.take("c2") == [{"type": "bye", "data": {"session_id": "1-2", "to": "2"}}]


def test_bye_with_dashed_ids_splits_on_the_senders_id() -> None:
    w = Wire()
    w.join("c1", "a-b")
    w.join("c2", "c-d")
    w.take("c1"), w.take("c2")
    w.send("c1", "bye", {"session_id": "a-b-c-d"})
    assert w.take("c2") == [{"type": "bye", "data": {"session_id": "a-b-c-d", "to": "c-d"}}]
    assert w.take("c1") == [{"type": "bye", "data": {"session_id": "a-b-c-d", "to": "a-b"}}]


def test_bye_rules_sender_must_be_a_side_and_gone_peer_is_an_error() -> None:
    w = Wire()
    w.join("c1", "1")
    w.join("c2", "2")
    w.take("c1"), w.take("c2")
    for sid in ("2-3", "12", "1-", "-1", "x"):
        w.send("c1", "bye", {"session_id": sid})
        got = w.take("c1")
        assert got[0]["type"] == "error" and got[0]["data"]["request"] == "bye", sid
    assert w.take("c2") == []
    w.send("c1", "bye", {"session_id": "1-7"})
    got = w.take("c1")
    assert got[0] == {"type": "bye", "data": {"session_id": "1-7", "to": "1"}}
    assert got[1]["type"] == "error" and "'7' is not registered" in got[1]["data"]["reason"]


def test_disconnect_sends_leave_with_leaving_id_once_then_peers() -> None:
    w = Wire()
    for i in range(1, 4):
        w.join(f"c{i}", str(i))
    for i in range(1, 4):
        w.take(f"c{i}")
    w.drop("c2")
    for conn in ("c1", "c3"):
        got = w.take(conn)
        assert got[0] == {"type": "leave", "data": "2"}
        assert got[1]["type"] == "peers" and [p["id"] for p in got[1]["data"]] == ["1", "3"]
        assert len(got) == 2
    w.drop("c2")  # a second disconnect of the same connection changes nothing
    assert w.take("c1") == [] and w.take("c3") == []


def test_leave_message_unregisters_but_connection_may_register_again() -> None:
    w = Wire()
    w.join("c1", "1")
    w.join("c2", "2")
    w.take("c1"), w.take("c2")
    w.send("c2", "leave", {})
    assert w.take("c1")[0] == {"type": "leave", "data": "2"}
    assert w.hub.peer_ids() == ["1"]
    w.drop("c2")  # the later disconnect sends no second leave
    assert w.take("c1") == []
    w.join("c3", "3")
    assert w.hub.peer_ids() == ["1", "3"]


def test_new_again_with_other_id_replaces_registration() -> None:
    w = Wire()
    w.join("c1", "1")
    w.join("c2", "2")
    w.take("c1"), w.take("c2")
    w.join("c2", "5")
    assert w.last_peers("c1") == ["1", "5"]
    got = w.take("c1")
    assert got[0] == {"type": "leave", "data": "2"}
    assert [m["type"] for m in got] == ["leave", "peers"]
    assert w.hub.peer_ids() == ["1", "5"]


def test_new_again_with_same_id_updates_name_in_place() -> None:
    w = Wire()
    w.join("c1", "1", "a")
    w.join("c2", "2", "b")
    w.join("c1", "1", "renamed")
    got = w.take("c2")[-1]
    assert got["data"][0] == {"id": "1", "name": "renamed", "user_agent": "ua-1"}
    assert not any(m["type"] == "leave" for m in w.take("c1"))


def test_takeover_of_duplicate_id_closes_old_without_ghost() -> None:
    w = Wire()
    w.join("old", "7")
    w.join("c2", "2")
    w.take("old"), w.take("c2")
    w.join("new", "7")
    got = w.take("old")
    assert got[0]["type"] == "error" and got[0]["data"]["request"] == "new"
    assert w.closed == {"old": CLOSE_TAKEN_OVER}
    assert w.hub.peer_ids() == ["2", "7"]
    assert w.hub.peer_of("old") is None and w.hub.peer_of("new") == "7"
    assert w.last_peers("c2") == ["2", "7"]
    assert not any(m["type"] == "leave" for m in w.take("c2"))
    w.take("new")
    # When the old socket finally closes, nobody is told that "7" left.
    w.drop("old")
    assert w.take("c2") == [] and w.take("new") == []
    assert w.hub.peer_ids() == ["2", "7"]


def test_bad_message_gets_error_and_state_is_kept() -> None:
    w = Wire()
    w.join("c1", "1")
    w.take("c1")
    w.deliver(w.hub.receive("c1", b"{oops", w.now))
    assert w.take("c1")[0]["type"] == "error"
    assert w.hub.peer_of("c1") == "1"


def test_peers_lists_are_coalesced_within_the_interval() -> None:
    w = Wire(Hub(interval=lambda n: 1.0))
    w.join("c1", "1")  # first broadcast goes out at once
    assert w.last_peers("c1") == ["1"]
    w.take("c1")
    w.tick(0.1)
    w.join("c2", "2")
    w.join("c3", "3")
    # Newcomers get the current list at once; c1 waits for the coalesced broadcast.
    assert w.take("c2")[-1]["type"] == "peers"
    assert w.last_peers("c3") == ["1", "2", "3"]
    w.take("c3")
    assert w.take("c1") == []
    assert w.hub.next_deadline() == 1.0
    w.tick(0.5)
    assert w.take("c1") == []
    w.tick(0.4)  # now == 1.0
    assert w.last_peers("c1") == ["1", "2", "3"]
    assert len(w.take("c1")) == 1
    # c2 got [1, 2] on joining, so it needs the new list; c3 already holds it.
    assert w.last_peers("c2") == ["1", "2", "3"]
    assert w.take("c3") == []
    assert w.hub.next_deadline() is None


def test_leave_is_immediate_even_when_peers_list_is_deferred() -> None:
    w = Wire(Hub(interval=lambda n: 1.0))
    w.join("c1", "1")
    w.join("c2", "2")
    w.take("c1"), w.take("c2")
    w.drop("c2")
    assert w.take("c1") == [{"type": "leave", "data": "2"}]
    w.tick(1.0)
    assert w.last_peers("c1") == ["1"]


def test_storm_of_joins_costs_far_less_than_naive_broadcast() -> None:
    hub = Hub()
    sent = 0
    naive = 0
    n = 1000
    holds: dict[object, int] = {}  # conn -> length of the last list it was sent

    def count(actions: list[Action]) -> int:
        size = 0
        for action in actions:
            # A join storm sends lists and nothing else: no close, no error, no leave.
            assert not isinstance(action, Close), action
            assert json.loads(action.text)["type"] == "peers", action
            conns = action.conns if isinstance(action, Broadcast) else (action.conn,)
            for conn in conns:
                size += len(action.text)
                holds[conn] = len(json.loads(action.text)["data"])
        return size

    for i in range(n):
        now = i * 0.005  # 1000 joins in 5 s
        sent += count(hub.receive(i, msg("new", {"id": str(i)}), now))
        naive += len(hub.peers_message()) * (i + 1)
        sent += count(hub.poll(now))
    deadline = hub.next_deadline()
    assert deadline is not None and deadline <= now + default_interval(n)
    sent += count(hub.poll(deadline))
    assert holds == dict.fromkeys(range(n), n)  # everyone holds the complete list
    assert sent * 20 < naive, (sent, naive)


def test_interval_grows_with_peers_and_is_capped() -> None:
    assert default_interval(2) < 0.01
    assert default_interval(100) == 0.1
    assert default_interval(100_000) == 1.0


def test_a_list_that_keeps_changing_waits_up_to_max_wait_then_goes_out() -> None:
    # Changes that keep coming within the interval (a storm) put the broadcast off up to
    # max_wait after the previous one; once they stop, it goes out one interval after the
    # last change.
    w = Wire(Hub(interval=lambda n: 1.0, max_wait=lambda n, size: 3.0))
    w.join("c1", "1")  # the first list goes out at once
    w.take("c1")
    for k in range(2, 7):  # a join every 0.5 s: at 0.5 ... 2.5
        w.tick(0.5)
        w.join(f"c{k}", str(k))
        assert w.take("c1") == [], f"c1 got a list at {w.now} s"
    assert w.hub.next_deadline() == 3.0
    w.tick(0.5)  # 3.0: the previous broadcast is max_wait old
    assert w.last_peers("c1") == ["1", "2", "3", "4", "5", "6"]
    w.take("c1")
    w.tick(0.2)
    w.join("c7", "7")  # 3.2, then nothing more
    assert w.hub.next_deadline() == 4.2  # one interval after this last change
    w.tick(0.9)
    assert w.take("c1") == []
    w.tick(0.1)
    assert w.last_peers("c1") == ["1", "2", "3", "4", "5", "6", "7"]


def test_max_wait_is_the_lists_bytes_at_the_broadcast_rate_capped() -> None:
    # Small lists: far below the interval, so rooms of a few hundred peers are unchanged.
    assert default_max_wait(10, 600) < default_interval(10)
    assert default_max_wait(300, 300 * 55) < default_interval(300)
    # 1000 peers of 55-byte entries: 55 MB a broadcast, 2.75 s at 20 MB/s.
    assert abs(default_max_wait(1000, 55_000) - 2.75) < 1e-9
    assert default_max_wait(100_000, 10_000_000) == 5.0


def test_the_peers_text_matches_the_list_through_every_kind_of_change() -> None:
    # The entries are joined once and then grown as peers register at the end; every other
    # change (leave, takeover, re-register, rename) must give the same text as a fresh join.
    hub = Hub(interval=lambda n: 0.0)

    def check() -> None:
        data = json.loads(hub.peers_message())["data"]
        assert [p["id"] for p in data] == hub.peer_ids()
        fresh = Hub(interval=lambda n: 0.0)
        for i, entry in enumerate(data):
            fresh.receive(("fresh", i), msg("new", entry), 0.0)
        assert hub.peers_message() == fresh.peers_message()

    def new(conn: object, peer_id: str, name: str = "") -> None:
        hub.receive(conn, msg("new", {"id": peer_id, "name": name, "user_agent": "ua"}), 0.0)
        check()

    for i in range(5):
        new(f"c{i}", str(i), f"name {i}")
    new("c2", "2", "renamed")  # the same id again: in place
    new("c3", "33")  # another id on the same connection
    new("x", "1")  # takeover of id 1 by a new connection
    hub.disconnect("c0", 0.0)
    check()
    hub.receive("c4", msg("leave"), 0.0)
    check()
    new("c5", "5")
    for conn in ("c2", "c3", "x", "c5"):
        hub.disconnect(conn, 0.0)
        check()
    new("c6", "6")


def test_newcomer_is_not_sent_the_same_list_twice() -> None:
    w = Wire(Hub(interval=lambda n: 1.0))
    w.join("c1", "1")
    w.tick(0.1)
    w.join("c2", "2")  # deferred: c2 gets the list at once, c1 later
    assert len(w.take("c2")) == 1
    w.tick(1.0)
    assert w.take("c2") == []
    assert w.last_peers("c1") == ["1", "2"]
    w.take("c1")
    w.tick(0.1)
    w.join("c3", "3")  # deferred again, and the list changes after c3 got it
    w.drop("c1")
    w.take("c3")
    w.tick(1.0)
    assert w.last_peers("c3") == ["2", "3"]


# -- connections bound to one id by their token ([auth] secret) ------------------------------


def test_bound_connection_registers_its_own_id_only() -> None:
    w = Wire()
    w.join("c0", "other")
    w.take("c0")
    w.hub.bind("c1", "alice")
    w.join("c1", "mallory")
    got = w.take("c1")
    assert got == [
        {
            "type": "error",
            "data": {"request": "new", "reason": "your token is for id 'alice', not 'mallory'"},
        }
    ]
    assert w.hub.peer_of("c1") is None and w.hub.peer_ids() == ["other"]
    assert w.take("c0") == [] and w.closed == {}  # refused, not closed: it may try again
    w.join("c1", "alice")
    assert w.hub.peer_of("c1") == "alice"
    assert w.last_peers("c0") == ["other", "alice"]


def test_bound_connection_cannot_take_over_another_id() -> None:
    w = Wire()
    w.hub.bind("a", "alice")
    w.join("a", "alice")
    w.hub.bind("m", "mallory")
    w.join("m", "alice")  # a token for mallory does not get alice's id
    assert w.take("m")[0]["type"] == "error"
    assert w.closed == {} and w.hub.peer_of("a") == "alice"
    assert w.hub.peer_ids() == ["alice"]


def test_bound_connection_with_the_same_id_takes_over_its_ghost() -> None:
    # An app reconnecting after a network drop, with a token for its own id.
    w = Wire()
    w.hub.bind("old", "alice")
    w.join("old", "alice")
    w.hub.bind("new", "alice")
    w.join("new", "alice")
    assert w.closed == {"old": CLOSE_TAKEN_OVER}
    assert w.hub.peer_of("new") == "alice"


def test_binding_is_forgotten_with_the_connection() -> None:
    hub = Hub()
    hub.bind("c1", "alice")
    hub.disconnect("c1", 0.0)
    assert hub._bound == {}
    # Unbound connections keep today's rules: any id.
    w = Wire(hub)
    w.join("c1", "bob")
    assert w.hub.peer_of("c1") == "bob"


def test_leave_is_not_marked_as_a_peers_list() -> None:
    # Only a peers list may be superseded by a newer one before it is written; a leave
    # must reach every remaining peer.
    hub = Hub(interval=lambda n: 1.0)
    hub.receive("c1", msg("new", {"id": "1"}), 0.0)
    hub.receive("c2", msg("new", {"id": "2"}), 0.0)
    actions = hub.disconnect("c1", 0.0)
    leaves = [a for a in actions if isinstance(a, Broadcast) and '"leave"' in a.text]
    assert len(leaves) == 1 and leaves[0].conns == ("c2",) and leaves[0].peers is False
    lists = [a for a in hub.poll(10.0) if isinstance(a, Broadcast)]
    assert lists and all(a.peers for a in lists)


def test_the_last_peer_leaving_sends_nothing_and_cancels_the_pending_list() -> None:
    hub = Hub(interval=lambda n: 1.0)
    hub.receive("c1", msg("new", {"id": "1"}), 0.0)
    hub.receive("c2", msg("new", {"id": "2"}), 0.0)
    assert hub.next_deadline() is not None  # c1's fresh list is deferred
    hub.disconnect("c1", 0.0)
    assert hub.disconnect("c2", 0.0) == []  # nobody is left to tell
    assert hub.next_deadline() is None
    assert hub.poll(10.0) == []


# -- calls in progress (the status page's count) -----------------------------------------


def call(w: Wire, a: str, b: str) -> None:
    """``a`` offers to ``b``, ``b`` answers (conns are named like the peers)."""
    w.send(a, "offer", {"to": b, "session_id": f"{a}-{b}", "description": {"type": "offer"}})
    w.send(b, "answer", {"to": a, "session_id": f"{a}-{b}", "description": {"type": "answer"}})


def test_a_call_is_in_progress_from_the_answer_until_bye() -> None:
    w = Wire()
    for peer in ("a", "b", "c", "d"):
        w.join(peer, peer)
    w.send("a", "offer", {"to": "b", "session_id": "a-b", "description": {}})
    assert w.hub.call_count() == 0  # an offer alone is no call
    call(w, "a", "b")
    call(w, "a", "b")  # a renegotiation is the same call
    call(w, "c", "d")
    assert w.hub.call_count() == 2
    w.send("b", "bye", {"session_id": "a-b"})
    assert w.hub.call_count() == 1


def test_a_call_ends_when_either_side_leaves_or_disconnects() -> None:
    w = Wire()
    for peer in ("a", "b", "c", "d"):
        w.join(peer, peer)
    call(w, "a", "b")
    call(w, "c", "d")
    call(w, "a", "c")
    assert w.hub.call_count() == 3
    w.drop("a")  # a's two calls end, c-d goes on
    assert w.hub.call_count() == 1
    w.send("d", "leave")
    assert w.hub.call_count() == 0


def test_a_call_with_a_peer_of_another_instance_ends_with_its_leave() -> None:
    w = Wire()
    w.join("a", "a")
    w.hub._calls_end("x")  # nothing to end: no error
    w.hub._call_started("a", "x")  # as an answer relayed to another instance records it
    assert w.hub.call_count() == 1
    w.deliver(w.hub.remote_changed(w.now, left=["x"]))
    assert w.hub.call_count() == 0
    w.hub._call_started("a", "x")
    # A bye relayed from the other instance for a local peer ends it too.
    bye = {"type": "bye", "data": {"session_id": "x-a", "to": "a"}}
    w.hub.deliver("a", json.dumps(bye, separators=(",", ":")))  # as the hub writes it
    assert w.hub.call_count() == 0
