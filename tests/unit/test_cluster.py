"""The cluster core (flaskrtc/signal/cluster.py) with a real hub and no sockets: Redis's
side is played by hand, as the events and replies the Lua scripts would produce."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from typing import Any

import pytest

from flaskrtc.signal.cluster import (
    CLAIM,
    EVENTS,
    REFUSAL,
    RELEASE,
    SYNC,
    ClusterCore,
    Op,
    inbox,
)
from flaskrtc.signal.hub import CLOSE_TAKEN_OVER, Action, Broadcast, Close, Hub, Send

ME, OTHER, THIRD = "me0000", "other0", "third0"


def msg(type_: str, data: Any = None) -> bytes:
    return json.dumps({"type": type_, "data": data}).encode()


def entry(peer_id: str) -> str:
    return json.dumps({"id": peer_id, "name": "", "user_agent": ""}, separators=(",", ":"))


class Node:
    """A hub and its cluster core; hub actions land in per-connection inboxes."""

    def __init__(self, connect: bool = True) -> None:
        self.hub = Hub(interval=lambda n: 0.0)
        self.woken = 0
        self.core = ClusterCore(self.hub, ME, 1.0, wake=self._wake)
        self.inbox: dict[object, list[dict[str, Any]]] = defaultdict(list)
        self.closed: dict[object, int] = {}
        self.now = 0.0
        self.seq = 0
        if connect:
            self.core.connected(self.now)
            (sync,) = self.core.take_ops()
            self.deliver(self.core.completed(sync, [0, [], []], self.now))

    def _wake(self) -> None:
        self.woken += 1

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

    def join(self, conn: object, peer_id: str) -> None:
        self.send(conn, "new", {"id": peer_id})

    def take(self, conn: object) -> list[dict[str, Any]]:
        got, self.inbox[conn] = self.inbox[conn], []
        return got

    def last_peers(self, conn: object) -> list[str]:
        lists = [m["data"] for m in self.take(conn) if m["type"] == "peers"]
        assert lists, "no peers list"
        return [p["id"] for p in lists[-1]]

    def event(self, **fields: Any) -> None:
        """The next event on the events channel (numbered like flaskrtc:seq)."""
        self.seq += 1
        data = json.dumps({"s": self.seq, **fields}).encode()
        self.deliver(self.core.on_message(EVENTS.encode(), data, self.now))

    def remote_join(self, peer_id: str, instance: str = OTHER, pos: int | None = None) -> None:
        self.event(t="j", i=instance, id=peer_id, p=pos or self.seq + 1, e=entry(peer_id))

    def echo(self, peer_id: str, pos: int | None = None) -> None:
        """Our own claim coming back on the events channel."""
        self.event(t="j", i=ME, id=peer_id, p=pos or self.seq + 1, e=entry(peer_id))

    def leave(self, peer_id: str, instance: str = OTHER, **more: Any) -> None:
        self.event(t="l", i=instance, id=peer_id, **more)

    def relayed(self, header: dict[str, Any], text: str) -> None:
        data = (json.dumps(header) + "\n" + text).encode()
        self.deliver(self.core.on_message(inbox(ME).encode(), data, self.now))

    def ops(self, kind: str | None = None) -> list[Op]:
        ops = self.core.take_ops()
        return [op for op in ops if kind is None or op.kind == kind]


def test_without_a_cluster_redis_is_not_even_imported() -> None:
    code = "import sys, flaskrtc.server, flaskrtc.signal.hub; sys.exit('redis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_new_is_refused_until_redis_is_reached() -> None:
    node = Node(connect=False)
    node.join("c1", "111")
    assert node.take("c1") == [{"type": "error", "data": {"request": "new", "reason": REFUSAL}}]
    assert node.hub.peer_of("c1") is None and node.ops() == []
    assert node.core.refused == 1


def test_registration_is_claimed_and_confirmed() -> None:
    node = Node()
    node.join("c1", "111")
    assert node.last_peers("c1") == ["111"]
    (claim,) = node.ops()
    assert claim.kind == "claim" and node.woken >= 1
    assert claim.args == ("EVAL", CLAIM, 0, "flaskrtc:", ME, "111", entry("111"), "1")
    node.echo("111")
    assert node.take("c1") == []  # its place did not change: no new list
    # Again on the same connection: an update in place ("0": keep the list position).
    node.send("c1", "new", {"id": "111", "name": "renamed"})
    assert node.ops("claim")[0].args[-1] == "0"
    node.send("c1", "leave")
    (release,) = node.ops()
    assert release.kind == "release" and release.args == (
        "EVAL",
        RELEASE,
        0,
        "flaskrtc:",
        ME,
        "111",
    )


def test_remote_peers_are_listed_in_position_order() -> None:
    node = Node()
    node.remote_join("r1")
    node.join("c1", "111")
    assert node.last_peers("c1") == ["r1", "111"]
    # Another instance's registration that Redis ordered before ours comes before it once
    # ours is confirmed, on every instance alike.
    node.remote_join("r2", pos=node.seq + 1)
    assert node.last_peers("c1") == ["r1", "r2", "111"]
    node.echo("111")
    assert node.core.entries() == [entry("r1"), entry("r2"), entry("111")]
    node.remote_join("r3")
    assert node.last_peers("c1") == ["r1", "r2", "111", "r3"]


def test_forward_to_another_instance_is_published_with_from_set() -> None:
    node = Node()
    node.join("c1", "111")
    node.remote_join("222", instance=OTHER)
    node.take("c1")
    node.ops()
    node.send("c1", "offer", {"to": "222", "from": "x", "description": {"sdp": "s"}, "k": 1})
    (relay,) = node.ops()
    assert relay.kind == "relay" and relay.args[:2] == ("PUBLISH", inbox(OTHER))
    head, _, text = str(relay.args[2]).partition("\n")
    assert json.loads(head) == {"to": "222", "i": ME, "f": "111", "r": "offer"}
    assert json.loads(text) == {
        "type": "offer",
        "data": {"to": "222", "from": "111", "description": {"sdp": "s"}, "k": 1},
    }
    assert node.take("c1") == []


def test_relayed_messages_are_delivered_or_answered() -> None:
    node = Node()
    node.join("c1", "111")
    node.take("c1")
    node.ops()
    text = json.dumps({"type": "answer", "data": {"to": "111", "from": "222"}})
    node.relayed({"to": "111", "i": OTHER, "f": "222", "r": "answer"}, text)
    assert node.take("c1") == [json.loads(text)]
    # For a peer gone meanwhile, the sender's instance gets the error for its peer.
    node.relayed({"to": "999", "i": OTHER, "f": "222", "r": "answer"}, text)
    (back,) = node.ops()
    assert back.args[:2] == ("PUBLISH", inbox(OTHER))
    head, _, reply = str(back.args[2]).partition("\n")
    assert json.loads(head) == {"to": "222"}
    assert json.loads(reply) == {
        "type": "error",
        "data": {"request": "answer", "reason": "peer '999' is not registered"},
    }
    # An error relayed back is delivered, never answered again.
    node.relayed({"to": "888"}, reply)
    assert node.ops() == []


def test_bye_to_a_peer_on_another_instance() -> None:
    node = Node()
    node.join("c1", "111")
    node.remote_join("222")
    node.take("c1")
    node.ops()
    node.send("c1", "bye", {"session_id": "111-222"})
    assert node.take("c1") == [{"type": "bye", "data": {"session_id": "111-222", "to": "111"}}]
    (relay,) = node.ops()
    assert json.loads(str(relay.args[2]).partition("\n")[2]) == {
        "type": "bye",
        "data": {"session_id": "111-222", "to": "222"},
    }
    node.send("c1", "bye", {"session_id": "111-333"})
    got = node.take("c1")
    assert got[-1]["data"] == {"request": "bye", "reason": "peer '333' is not registered"}


def test_remote_leave_is_sent_once_then_the_list() -> None:
    node = Node()
    node.join("c1", "111")
    node.remote_join("222")
    node.take("c1")
    node.leave("222")
    got = node.take("c1")
    assert got[0] == {"type": "leave", "data": "222"}
    assert [p["id"] for p in got[1]["data"]] == ["111"]
    # A leave from an instance that no longer holds the id (it moved): nothing.
    node.remote_join("333", instance=OTHER)
    node.remote_join("333", instance=THIRD)  # taken over there: no leave
    assert [m["type"] for m in node.take("c1")] == ["peers", "peers"]
    node.leave("333", instance=OTHER)
    assert node.take("c1") == []
    assert node.core.remote_ids() == ["333"]


def test_takeover_by_a_newer_registration_elsewhere() -> None:
    node = Node()
    node.join("old", "777")
    node.join("c2", "888")
    node.echo("777")
    node.echo("888")
    node.take("old")
    node.take("c2")
    node.remote_join("777", instance=OTHER)
    assert node.take("old") == [
        {
            "type": "error",
            "data": {"request": "new", "reason": "id '777' was taken over by a new connection"},
        }
    ]
    assert node.closed == {"old": CLOSE_TAKEN_OVER}
    got = node.take("c2")
    assert [m["type"] for m in got] == ["peers"]  # no leave: the id moved
    assert [p["id"] for p in got[0]["data"]] == ["888", "777"]
    assert node.hub.peer_of("old") is None
    node.deliver(node.hub.disconnect("old", node.now))
    assert node.ops("release") == []  # it was not ours to release any more


def test_a_racing_claim_ordered_before_ours_loses() -> None:
    node = Node()
    node.join("c1", "777")  # claim sent, not yet confirmed
    node.remote_join("777", instance=OTHER)  # Redis ran the other one first
    assert "c1" not in node.closed
    node.echo("777")
    assert node.hub.peer_of("c1") == "777"
    assert node.core.remote_ids() == []
    assert node.core.count() == 1


def test_redis_lost_refuses_new_and_fails_remote_messages() -> None:
    node = Node()
    node.join("c1", "111")
    node.join("c2", "112")
    node.remote_join("222")
    node.send("c1", "offer", {"to": "222", "description": {}})
    unsent = node.ops("relay")
    node.take("c1")
    node.deliver(node.core.disconnected(node.now, unsent))
    # The relay that may not have gone out is reported to its sender...
    (err,) = node.take("c1")
    assert err["type"] == "error" and "cannot be reached" in err["data"]["reason"]
    # ... new ones fail at once, registrations are refused, local calls go on.
    node.send("c1", "candidate", {"to": "222", "candidate": {}})
    assert node.take("c1")[0]["data"]["request"] == "candidate"
    node.join("c3", "113")
    assert node.take("c3")[0]["data"] == {"request": "new", "reason": REFUSAL}
    node.take("c2")
    node.send("c1", "offer", {"to": "112", "description": {}})
    assert node.take("c2") == [
        {"type": "offer", "data": {"to": "112", "description": {}, "from": "111"}}
    ]
    assert node.ops() == []
    assert (node.core.refused, node.core.unrelayed) == (1, 2)
    # After the instance TTL the other instances have dropped us: we drop theirs.
    assert node.core.next_deadline() == pytest.approx(3.0)
    node.now = 2.9
    assert node.core.poll(node.now) == []
    node.now = 3.0
    node.deliver(node.core.poll(node.now))
    got = node.take("c1")
    assert got[0] == {"type": "leave", "data": "222"}
    assert node.core.next_deadline() is None


def test_resync_restores_the_list_and_refuses_what_moved() -> None:
    node = Node()
    node.join("c1", "111")
    node.join("c2", "112")
    node.remote_join("222")
    node.remote_join("223")
    node.deliver(node.core.disconnected(node.now))
    node.core.connected(node.now)
    (sync,) = node.ops()
    assert sync.kind == "sync" and sync.args[1] == SYNC
    assert sync.args[-4:] == ("111", entry("111"), "112", entry("112"))
    for conn in ("c1", "c2"):
        node.take(conn)
    # Redis restarted meanwhile: 112 was taken by another instance, 223 is gone, 224 is new.
    node.event(t="j", i=THIRD, id="zzz", p=99, e=entry("zzz"))  # before the snapshot: buffered
    snapshot = [
        b"111",
        json.dumps({"i": ME, "p": 3, "e": entry("111")}).encode(),
        b"222",
        json.dumps({"i": OTHER, "p": 1, "e": entry("222")}).encode(),
        b"112",
        json.dumps({"i": THIRD, "p": 2, "e": entry("112")}).encode(),
        b"224",
        json.dumps({"i": OTHER, "p": 4, "e": entry("224")}).encode(),
    ]
    node.deliver(node.core.completed(sync, [4, [b"112"], snapshot], node.now))
    assert node.closed == {"c2": CLOSE_TAKEN_OVER}
    got = node.take("c1")
    assert got[0] == {"type": "leave", "data": "223"}
    assert [p["id"] for p in got[-1]["data"]] == ["222", "112", "111", "224"]
    # Events numbered after the snapshot apply; the buffered one (1) was in it already.
    node.seq = 4
    node.remote_join("225")
    assert node.last_peers("c1") == ["222", "112", "111", "224", "225"]


def test_missed_events_and_expired_key_resync() -> None:
    node = Node()
    node.join("c1", "111")
    node.echo("111")
    node.ops()
    node.seq += 2  # two events never arrived
    node.remote_join("222")
    assert [op.kind for op in node.ops()] == ["sync"]
    node = Node()
    node.now = 1.0
    node.deliver(node.core.poll(node.now))
    (beat,) = node.ops()
    assert beat.kind == "beat" and beat.args[-2:] == (3000, ME)
    node.deliver(node.core.completed(beat, 0, node.now))  # our key had expired
    assert [op.kind for op in node.ops()] == ["sync"]
    # Another instance reaped us: its leave for our peer tells us so too.
    node.deliver(node.core.completed(Op("sync", ()), [node.seq, [], []], node.now))
    node.join("c1", "111")
    node.echo("111")
    node.ops()
    node.leave("111", instance=ME, r=1)
    assert [op.kind for op in node.ops()] == ["sync"]
    assert node.hub.peer_of("c1") == "111"  # still served here meanwhile


def test_only_the_last_of_several_syncs_is_applied() -> None:
    node = Node()
    node.join("c1", "111")
    node.ops()
    node.deliver(node.core.disconnected(node.now))
    node.core.connected(node.now)
    node.leave("x", instance=OTHER)  # buffered
    node.core.completed(Op("beat", ()), 0, node.now)  # not UP yet: no second sync from it
    first = node.ops("sync")[0]
    node.core._sync()  # a second one, as a gap or an expired key would queue
    second = node.ops("sync")[0]
    stale = [b"999", json.dumps({"i": OTHER, "p": 1, "e": entry("999")}).encode()]
    assert node.core.completed(first, [5, [], stale], node.now) == []
    assert node.core.state == "syncing"
    node.deliver(node.core.completed(second, [6, [], []], node.now))
    assert node.core.state == "up" and node.core.remote_ids() == []
