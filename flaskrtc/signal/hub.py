"""The signaling hub: who is registered, and what to send to whom.

Sans-I/O: the WebSocket shell feeds it messages, disconnects and the time, and it returns
actions (:class:`Send`, :class:`Broadcast`, :class:`Close`) for the shell to carry out. Its
methods never block or yield, so under gevent each call is atomic and the hub needs no lock
(the Go server's unlocked map crashed on concurrent joins).

The ``peers`` list is the one costly message: sent naively to everyone on every join, a
storm of N joins costs O(N²) messages of O(N) bytes. Changes to the list are therefore
coalesced: the list goes out at once when the last broadcast is older than
``interval(N)`` (a millisecond per registered peer, at most one second), otherwise once at
the end of that interval, carrying every change made meanwhile. A newcomer always gets the
current list at once. Every peer still ends up holding the complete, current list.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from flaskrtc.signal.protocol import (
    Bye,
    Forward,
    Keepalive,
    Leave,
    New,
    ProtocolError,
    Request,
    dumps,
    message,
    parse,
)

ConnId = Hashable

# Close code for a connection whose id was taken over by a newer one (private-use range,
# RFC 6455 §7.4.2): distinct from 1000 so an app can tell it was replaced, not dropped.
CLOSE_TAKEN_OVER = 4409


@dataclass(frozen=True)
class Send:
    """Send ``text`` to one connection."""

    conn: ConnId
    text: str


@dataclass(frozen=True)
class Broadcast:
    """Send the same ``text`` to each of ``conns``.

    ``peers`` marks a peers list: a newer one supersedes an older one not yet written.
    """

    conns: tuple[ConnId, ...]
    text: str
    peers: bool = False


@dataclass(frozen=True)
class Close:
    """Close one connection with a WebSocket close code."""

    conn: ConnId
    code: int
    reason: str


Action = Send | Broadcast | Close


def default_interval(peer_count: int) -> float:
    """Minimum seconds between two peers broadcasts with ``peer_count`` peers registered."""
    return min(1.0, 0.001 * peer_count)


@dataclass
class _Peer:
    id: str
    name: str
    user_agent: str
    conn: ConnId
    entry: str  # this peer's JSON object in the peers list, encoded once
    seen: int = -1  # the list version this peer was last sent


class Hub:
    """Registered peers and message routing for one signaling server."""

    def __init__(self, interval: Callable[[int], float] = default_interval) -> None:
        self._interval = interval
        self._peers: dict[str, _Peer] = {}  # insertion order = registration order
        self._by_conn: dict[ConnId, str] = {}
        # Connections whose token allows one id only ([auth] secret set): conn -> that id.
        self._bound: dict[ConnId, str] = {}
        self._peers_text: str | None = None
        self._version = 0  # bumped on every change to the list
        self._last_broadcast = float("-inf")
        self._due: float | None = None  # when the pending peers broadcast goes out

    # -- queries -------------------------------------------------------------------------

    def peer_ids(self) -> list[str]:
        """Registered ids, in registration order."""
        return list(self._peers)

    def peer_of(self, conn: ConnId) -> str | None:
        """The id ``conn`` is registered under, if any."""
        return self._by_conn.get(conn)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has work to do, or None."""
        return self._due

    def peers_message(self) -> str:
        """The current ``peers`` message text (cached until the list changes)."""
        if self._peers_text is None:
            entries = ",".join(p.entry for p in self._peers.values())
            self._peers_text = '{"type":"peers","data":[' + entries + "]}"
        return self._peers_text

    # -- events from the shell ------------------------------------------------------------

    def receive(self, conn: ConnId, payload: bytes, now: float) -> list[Action]:
        """Handle one message from ``conn``; bad input yields an ``error`` reply."""
        try:
            request = parse(payload)
            return self._dispatch(conn, request, now)
        except ProtocolError as err:
            return [Send(conn, err.reply)]

    def bind(self, conn: ConnId, peer_id: str) -> None:
        """Allow ``conn`` to register as ``peer_id`` only (its token was made for that id)."""
        self._bound[conn] = peer_id

    def disconnect(self, conn: ConnId, now: float) -> list[Action]:
        """``conn`` is gone: unregister it (once) and tell the others."""
        self._bound.pop(conn, None)
        return self._unregister(conn, now)

    def poll(self, now: float) -> list[Action]:
        """Send the coalesced peers list if its time has come."""
        if self._due is None or now < self._due:
            return []
        return self._broadcast_peers(now)

    # -- internals -----------------------------------------------------------------------

    def _dispatch(self, conn: ConnId, request: Request, now: float) -> list[Action]:
        if isinstance(request, Keepalive):
            return [Send(conn, message("keepalive", request.data))]
        if isinstance(request, New):
            return self._register(conn, request, now)
        sender = self._by_conn.get(conn)
        if isinstance(request, Leave):
            if sender is None:
                raise ProtocolError("leave", "not registered: send 'new' first")
            return self._unregister(conn, now)
        if isinstance(request, Forward):
            if sender is None:
                raise ProtocolError(request.type, "not registered: send 'new' first")
            target = self._peers.get(request.to)
            if target is None:
                raise ProtocolError(request.type, f"peer '{request.to}' is not registered")
            data = dict(request.data)
            data["from"] = sender  # the server, not the client, says who sent it
            return [Send(target.conn, message(request.type, data))]
        if isinstance(request, Bye):
            if sender is None:
                raise ProtocolError("bye", "not registered: send 'new' first")
            return self._bye(conn, sender, request.session_id)
        raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover

    def _register(self, conn: ConnId, req: New, now: float) -> list[Action]:
        bound = self._bound.get(conn)
        if bound is not None and req.id != bound:
            # The token names one id: no other, and so no takeover of another peer's id
            # (a takeover needs a token for that very id).
            raise ProtocolError("new", f"your token is for id '{bound}', not '{req.id}'")
        actions: list[Action] = []
        current = self._by_conn.get(conn)
        if current == req.id:
            # Same id again: refresh name and user agent, keep the place in the list.
            peer = self._peers[req.id]
            peer.name, peer.user_agent = req.name, req.user_agent
            peer.entry = self._entry(req)
        else:
            if current is not None:
                # One connection is one peer: the old id leaves (one peers list follows,
                # below, for both changes).
                actions += self._unregister(conn, now, schedule=False)
            holder = self._peers.get(req.id)
            if holder is not None:
                # Takeover (an app reconnecting after a network drop): the newcomer gets
                # the id, the old connection is told and closed, and is no longer listed.
                del self._peers[req.id]
                del self._by_conn[holder.conn]
                reason = f"id '{req.id}' was taken over by a new connection"
                actions.append(
                    Send(holder.conn, message("error", {"request": "new", "reason": reason}))
                )
                actions.append(Close(holder.conn, CLOSE_TAKEN_OVER, "id taken over"))
            self._peers[req.id] = _Peer(req.id, req.name, req.user_agent, conn, self._entry(req))
            self._by_conn[conn] = req.id
        self._changed()
        actions += self._schedule_peers(now, newcomer=conn)
        return actions

    def _unregister(self, conn: ConnId, now: float, *, schedule: bool = True) -> list[Action]:
        peer_id = self._by_conn.pop(conn, None)
        if peer_id is None:
            return []
        del self._peers[peer_id]
        self._changed()
        if not self._peers:
            self._due = None
            return []
        # The leaving peer's own id, once, to every remaining peer (the Go server sent the
        # receiver's id, and twice); the fresh list follows.
        rest = tuple(p.conn for p in self._peers.values())
        leave = Broadcast(rest, message("leave", peer_id))
        return [leave, *self._schedule_peers(now)] if schedule else [leave]

    def _bye(self, conn: ConnId, sender: str, sid: str) -> list[Action]:
        # The sender must be one side of "A-B"; match its own id so that ids containing
        # '-' still split one way only.
        if sid.startswith(sender + "-") and len(sid) > len(sender) + 1:
            ids = [sender, sid[len(sender) + 1 :]]
        elif sid.endswith("-" + sender) and len(sid) > len(sender) + 1:
            ids = [sid[: -len(sender) - 1], sender]
        else:
            raise ProtocolError("bye", f"session_id '{sid}' is not '<id>-<id>' with your id")
        actions: list[Action] = []
        missing: list[str] = []
        for peer_id in dict.fromkeys(ids):
            peer = self._peers.get(peer_id)
            if peer is None:
                missing.append(peer_id)
            else:
                actions.append(Send(peer.conn, message("bye", {"session_id": sid, "to": peer_id})))
        for peer_id in missing:
            actions.append(
                Send(conn, ProtocolError("bye", f"peer '{peer_id}' is not registered").reply)
            )
        return actions

    def _changed(self) -> None:
        self._peers_text = None
        self._version += 1

    def _schedule_peers(self, now: float, newcomer: ConnId | None = None) -> list[Action]:
        if self._due is None:
            due = self._last_broadcast + self._interval(len(self._peers))
            if now >= due:
                return self._broadcast_peers(now)
            self._due = due
        # Deferred (or already pending): the broadcast will carry this change; a newcomer
        # gets the list now, and is skipped by that broadcast unless the list changes again.
        if newcomer is None:
            return []
        self._peers[self._by_conn[newcomer]].seen = self._version
        return [Send(newcomer, self.peers_message())]

    def _broadcast_peers(self, now: float) -> list[Action]:
        self._due = None
        self._last_broadcast = now
        version = self._version
        conns = []
        for peer in self._peers.values():
            if peer.seen != version:
                peer.seen = version
                conns.append(peer.conn)
        if not conns:
            return []
        return [Broadcast(tuple(conns), self.peers_message(), peers=True)]

    @staticmethod
    def _entry(req: New) -> str:
        return dumps({"id": req.id, "name": req.name, "user_agent": req.user_agent})
