"""The signaling hub: who is registered, and what to send to whom.

Sans-I/O: the WebSocket shell feeds it messages, disconnects and the time, and it returns
actions (:class:`Send`, :class:`Broadcast`, :class:`Close`) for the shell to carry out. Its
methods never block or yield, so under gevent each call is atomic and the hub needs no lock
(the Go server's unlocked map crashed on concurrent joins).

The ``peers`` list is the one costly message: sent naively to everyone on every join, a
storm of N joins costs O(N²) messages of O(N) bytes. Changes to the list are therefore
coalesced: the list goes out at once when the last broadcast is older than
``interval(N)`` (a millisecond per registered peer, at most one second); otherwise one
broadcast carries every change made meanwhile, once the list has stayed unchanged for that
interval, or, while it keeps changing, once the previous broadcast is ``max_wait`` old (the
time its bytes take at 20 MB/s, at most 5 s; with fewer than several hundred peers this is
the interval itself). A newcomer always gets the current list at once. Every peer still ends
up holding the complete, current list, at most one interval after the last change.

With a cluster (:mod:`flaskrtc.signal.cluster`) the hub is given a :class:`Remote`: it is
told of every local registration and departure, it is asked about an id that is not
registered here (and relays to it), and it makes the peers list; the cluster tells the hub of
remote changes through :meth:`Hub.remote_changed` and :meth:`Hub.deliver`. Without one
(the default) none of this costs anything: the local paths are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from flaskrtc.signal.protocol import (
    Bye,
    Forward,
    Keepalive,
    Leave,
    New,
    ProtocolError,
    Request,
    dumps,
    forwarded,
    message,
    parse,
)

ConnId = Hashable

# Close code for a connection whose id was taken over by a newer one (private-use range,
# RFC 6455 §7.4.2): distinct from 1000 so an app can tell it was replaced, not dropped.
CLOSE_TAKEN_OVER = 4409


@dataclass(slots=True)
class Send:
    """Send ``text`` to one connection."""

    conn: ConnId
    text: str


@dataclass(slots=True)
class Broadcast:
    """Send the same ``text`` to each of ``conns``.

    ``peers`` marks a peers list: a newer one supersedes an older one not yet written.
    """

    conns: tuple[ConnId, ...]
    text: str
    peers: bool = False


@dataclass(slots=True)
class Close:
    """Close one connection with a WebSocket close code."""

    conn: ConnId
    code: int
    reason: str


Action = Send | Broadcast | Close

# Message types counted, per direction (``invalid``: a message parse() refused; ``remote``:
# a message relayed from a peer on another instance of a cluster, whatever its type).
TYPES_IN = ("new", "offer", "answer", "candidate", "bye", "leave", "keepalive", "invalid")
TYPES_OUT = (
    "peers",
    "offer",
    "answer",
    "candidate",
    "bye",
    "leave",
    "keepalive",
    "error",
    "remote",
)
# Kinds of protocol errors: the hub's and cluster's (ProtocolError.kind), a refused token,
# and the WebSocket shell's frame errors (1002/1007, 1009, 1008).
ERROR_KINDS = (
    "malformed",
    "not_registered",
    "unknown_peer",
    "refused",
    "bad_session",
    "unreachable",
    "unauthorized",
    "frame_invalid",
    "frame_too_big",
    "frame_rate",
)


class SignalStats:
    """Counters of one signaling server, plain integers for a metrics exporter to read.

    ``received`` and ``sent`` count messages by type (their keys are fixed and filled in
    from the start, so counting is one dict store, cheaper than choosing an attribute by
    type); ``sent`` counts what the hub routed, one per receiver (a peers list broadcast to
    ten peers is ten). ``errors`` by kind; the shell adds the WebSocket side."""

    __slots__ = ("errors", "received", "sent", "slow_dropped", "ws_opened")

    def __init__(self) -> None:
        self.received: dict[str, int] = dict.fromkeys(TYPES_IN, 0)
        self.sent: dict[str, int] = dict.fromkeys(TYPES_OUT, 0)
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.ws_opened = 0  # WebSocket sessions started
        self.slow_dropped = 0  # connections dropped for not reading their output

    def error(self, kind: str) -> None:
        """Count one protocol error of ``kind`` (a kind not listed is counted too)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Remote(Protocol):
    """The peers of the other instances of a cluster, as the hub sees them."""

    def refusal(self) -> str | None:
        """Why a ``new`` cannot be served now (the cluster is unreachable), or None."""

    def joined(self, peer_id: str, entry: str, *, update: bool) -> None:
        """``peer_id`` registered here (``update``: the same connection again, in place)."""

    def left(self, peer_id: str) -> None:
        """``peer_id``, registered here, is gone (not for an id taken over from here)."""

    def relay(self, to: str, text: str, sender: str, request: str) -> bool:
        """Send ``text`` to ``to`` if another instance holds it (True), else False; raises
        ProtocolError if it does but cannot be reached now."""

    def entries(self) -> list[str]:
        """Every peer's list entry, local and remote, in list order."""

    def count(self) -> int:
        """How many peers the list holds."""


def default_interval(peer_count: int) -> float:
    """Minimum seconds between two peers broadcasts with ``peer_count`` peers registered."""
    return min(1.0, 0.001 * peer_count)


# While the list keeps changing (a join storm), a peers broadcast may be put off until the
# previous one is as old as its own size to every peer takes at BROADCAST_RATE bytes a
# second, MAX_WAIT seconds at most. Below ~600 peers of ~55-byte entries this is shorter than
# the interval and changes nothing; at 1000 peers it is 2.75 s. The storm's bytes are then
# about halved (a 1000-peer storm over 5 s: 126 MB instead of 236 MB; with 120-character
# user agents, 269 MB instead of 731 MB), and its last list still goes out one interval
# after its last change.
BROADCAST_RATE = 20_000_000
MAX_WAIT = 5.0


def default_max_wait(peer_count: int, list_size: int) -> float:
    """Seconds a broadcast may be put off after the previous one while the list keeps
    changing: its size to every peer at :data:`BROADCAST_RATE`, :data:`MAX_WAIT` at most."""
    return min(MAX_WAIT, peer_count * list_size / BROADCAST_RATE)


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

    def __init__(
        self,
        interval: Callable[[int], float] = default_interval,
        remote: Remote | None = None,
        max_wait: Callable[[int, int], float] = default_max_wait,
    ) -> None:
        """``interval(n)``: the least time between two peers broadcasts with ``n`` peers, and
        how long a changed list must stay unchanged before it is broadcast. ``max_wait(n,
        size)``: the longest a broadcast (``size`` bytes) may be put off after the previous
        one while the list keeps changing (never less than ``interval(n)``)."""
        self._interval = interval
        self._max_wait = max_wait
        self._remote = remote  # the cluster's other instances; None: this process alone
        self._peers: dict[str, _Peer] = {}  # insertion order = registration order
        self._by_conn: dict[ConnId, str] = {}
        # Connections whose token allows one id only ([auth] secret set): conn -> that id.
        self._bound: dict[ConnId, str] = {}
        self._peers_text: str | None = None
        # The local entries joined by commas, grown in place while peers only register at
        # the end of the list (None: to be joined again); the last list's size.
        self._entries: str | None = ""
        self._size = 0
        self._version = 0  # bumped on every change to the list
        self._last_broadcast = float("-inf")
        self._due: float | None = None  # when the pending peers broadcast goes out
        self.stats = SignalStats()
        # Calls in progress (for the status page): a pair of peers is in a call from an
        # answer between them until a bye or until either leaves. Counted on the instance
        # of the peer that answered, so a cluster counts each call once.
        self._calls: set[tuple[str, str]] = set()
        self._calls_of: dict[str, set[tuple[str, str]]] = {}

    def attach(self, remote: Remote) -> None:
        """Join a cluster (before any peer registers)."""
        self._remote = remote

    # -- queries -------------------------------------------------------------------------

    def peer_ids(self) -> list[str]:
        """Registered ids, in registration order."""
        return list(self._peers)

    def peer_count(self) -> int:
        """How many peers are registered here (on this instance)."""
        return len(self._peers)

    def listed_count(self) -> int:
        """How many peers the peers list holds: with a cluster, every instance's."""
        return len(self._peers) if self._remote is None else self._remote.count()

    def call_count(self) -> int:
        """Calls in progress answered by a peer of this instance (see ``_calls``)."""
        return len(self._calls)

    def peer_of(self, conn: ConnId) -> str | None:
        """The id ``conn`` is registered under, if any."""
        return self._by_conn.get(conn)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has work to do, or None."""
        return self._due

    def peers_message(self) -> str:
        """The current ``peers`` message text (cached until the list changes)."""
        if self._peers_text is None:
            if self._remote is None:
                if self._entries is None:
                    self._entries = ",".join(p.entry for p in self._peers.values())
                entries = self._entries
            else:
                entries = ",".join(self._remote.entries())
            self._peers_text = '{"type":"peers","data":[' + entries + "]}"
            self._size = len(self._peers_text)
        return self._peers_text

    # -- events from the shell ------------------------------------------------------------

    def receive(self, conn: ConnId, payload: bytes, now: float) -> list[Action]:
        """Handle one message from ``conn``; bad input yields an ``error`` reply."""
        try:
            request = parse(payload)
        except ProtocolError as err:
            stats = self.stats
            stats.received["invalid"] += 1
            stats.errors["malformed"] += 1
            stats.sent["error"] += 1
            return [Send(conn, err.reply)]
        try:
            return self._dispatch(conn, request, now)
        except ProtocolError as err:
            self.stats.error(err.kind)
            self.stats.sent["error"] += 1
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

    # -- events from the cluster ---------------------------------------------------------

    def remote_changed(
        self, now: float, *, left: Iterable[str] = (), taken: Iterable[str] = ()
    ) -> list[Action]:
        """The cluster's list changed: ``left`` ids are gone (``leave`` to the local peers),
        ``taken`` ids registered here were taken over by a connection elsewhere (the local
        holder gets the takeover error and 4409, and nobody a ``leave``)."""
        actions: list[Action] = []
        left = tuple(left)
        for peer_id in left:
            self._calls_end(peer_id)
        for peer_id in taken:
            self._calls_end(peer_id)
            holder = self._peers.pop(peer_id, None)
            if holder is not None:
                del self._by_conn[holder.conn]
                actions += self._kick(holder)
        self._changed()
        if not self._peers:
            self._due = None
            return actions
        rest = tuple(p.conn for p in self._peers.values())
        leaves = [Broadcast(rest, message("leave", peer_id)) for peer_id in left]
        self.stats.sent["leave"] += len(rest) * len(leaves)
        actions += leaves
        return actions + self._schedule_peers(now)

    def deliver(self, to: str, text: str) -> list[Action] | None:
        """A message relayed from another instance for local peer ``to``; None if it is not
        registered here."""
        peer = self._peers.get(to)
        if peer is None:
            return None
        self.stats.sent["remote"] += 1
        if text.startswith('{"type":"bye"') and self._calls_of.get(to):
            # A bye from the other side of a call this instance counts (bye is rare: parsed).
            sid = str(json.loads(text).get("data", {}).get("session_id", ""))
            for key in list(self._calls_of.get(to, ())):
                if "-".join(key) == sid or "-".join(key[::-1]) == sid:
                    self._call_ended(*key)
        return [Send(peer.conn, text)]

    # -- internals -----------------------------------------------------------------------

    def _dispatch(self, conn: ConnId, request: Request, now: float) -> list[Action]:
        received, sent = self.stats.received, self.stats.sent
        if isinstance(request, Forward):
            # The most frequent (candidates), so tested first.
            received[request.type] += 1
            sender = self._by_conn.get(conn)
            if sender is None:
                raise ProtocolError(
                    request.type, "not registered: send 'new' first", "not_registered"
                )
            target = self._peers.get(request.to)
            # The server, not the client, says who sent it.
            text = forwarded(request, sender)
            if target is None:
                remote = self._remote
                if remote is not None and remote.relay(request.to, text, sender, request.type):
                    if request.type == "answer":
                        self._call_started(sender, request.to)
                    return []  # counted where it is delivered, as "remote"
                raise ProtocolError(
                    request.type, f"peer '{request.to}' is not registered", "unknown_peer"
                )
            sent[request.type] += 1
            if request.type == "answer":
                self._call_started(sender, request.to)
            return [Send(target.conn, text)]
        if isinstance(request, Keepalive):
            received["keepalive"] += 1
            sent["keepalive"] += 1
            return [Send(conn, message("keepalive", request.data))]
        if isinstance(request, New):
            received["new"] += 1
            return self._register(conn, request, now)
        sender = self._by_conn.get(conn)
        if isinstance(request, Leave):
            received["leave"] += 1
            if sender is None:
                raise ProtocolError("leave", "not registered: send 'new' first", "not_registered")
            return self._unregister(conn, now)
        if isinstance(request, Bye):
            received["bye"] += 1
            if sender is None:
                raise ProtocolError("bye", "not registered: send 'new' first", "not_registered")
            return self._bye(conn, sender, request.session_id)
        raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover

    def _register(self, conn: ConnId, req: New, now: float) -> list[Action]:
        bound = self._bound.get(conn)
        if bound is not None and req.id != bound:
            # The token names one id: no other, and so no takeover of another peer's id
            # (a takeover needs a token for that very id).
            raise ProtocolError("new", f"your token is for id '{bound}', not '{req.id}'", "refused")
        remote = self._remote
        if remote is not None:
            refusal = remote.refusal()
            if refusal is not None:
                raise ProtocolError("new", refusal, "refused")
        actions: list[Action] = []
        appended: str | None = None
        current = self._by_conn.get(conn)
        if current == req.id:
            # Same id again: refresh name and user agent, keep the place in the list.
            peer = self._peers[req.id]
            peer.name, peer.user_agent = req.name, req.user_agent
            peer.entry = self._entry(req)
            if remote is not None:
                remote.joined(req.id, peer.entry, update=True)
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
                actions += self._kick(holder)
            entry = self._entry(req)
            self._peers[req.id] = _Peer(req.id, req.name, req.user_agent, conn, entry)
            self._by_conn[conn] = req.id
            if remote is not None:
                # Held by another instance's connection: that one is taken over when the
                # cluster tells its instance (no leave: the id moved).
                remote.joined(req.id, entry, update=False)
            if holder is None and current is None:
                appended = entry  # the list only grew at its end
        self._changed(appended)
        actions += self._schedule_peers(now, newcomer=conn)
        return actions

    def _unregister(self, conn: ConnId, now: float, *, schedule: bool = True) -> list[Action]:
        peer_id = self._by_conn.pop(conn, None)
        if peer_id is None:
            return []
        del self._peers[peer_id]
        self._calls_end(peer_id)
        if self._remote is not None:
            self._remote.left(peer_id)
        self._changed()
        if not self._peers:
            self._due = None
            return []
        # The leaving peer's own id, once, to every remaining peer (the Go server sent the
        # receiver's id, and twice); the fresh list follows.
        rest = tuple(p.conn for p in self._peers.values())
        leave = Broadcast(rest, message("leave", peer_id))
        self.stats.sent["leave"] += len(rest)
        return [leave, *self._schedule_peers(now)] if schedule else [leave]

    def _bye(self, conn: ConnId, sender: str, sid: str) -> list[Action]:
        # The sender must be one side of "A-B"; match its own id so that ids containing
        # '-' still split one way only.
        if sid.startswith(sender + "-") and len(sid) > len(sender) + 1:
            ids = [sender, sid[len(sender) + 1 :]]
        elif sid.endswith("-" + sender) and len(sid) > len(sender) + 1:
            ids = [sid[: -len(sender) - 1], sender]
        else:
            raise ProtocolError(
                "bye", f"session_id '{sid}' is not '<id>-<id>' with your id", "bad_session"
            )
        self._call_ended(ids[0], ids[1])
        actions: list[Action] = []
        errors: list[str] = []
        stats = self.stats
        for peer_id in dict.fromkeys(ids):
            peer = self._peers.get(peer_id)
            text = message("bye", {"session_id": sid, "to": peer_id})
            if peer is not None:
                stats.sent["bye"] += 1
                actions.append(Send(peer.conn, text))
                continue
            try:
                if self._remote is not None and self._remote.relay(peer_id, text, sender, "bye"):
                    continue
            except ProtocolError as err:  # on another instance, and the cluster is down
                stats.error(err.kind)
                errors.append(err.reply)
                continue
            stats.error("unknown_peer")
            errors.append(ProtocolError("bye", f"peer '{peer_id}' is not registered").reply)
        stats.sent["error"] += len(errors)
        # Errors after the byes: the sender's own bye is never held up by the other side.
        return actions + [Send(conn, reply) for reply in errors]

    def _call_started(self, a: str, b: str) -> None:
        key = (a, b) if a <= b else (b, a)
        if key not in self._calls:
            self._calls.add(key)
            self._calls_of.setdefault(a, set()).add(key)
            self._calls_of.setdefault(b, set()).add(key)

    def _call_ended(self, a: str, b: str) -> None:
        key = (a, b) if a <= b else (b, a)
        if key in self._calls:
            self._calls.discard(key)
            for peer_id in key:
                keys = self._calls_of.get(peer_id)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._calls_of[peer_id]

    def _calls_end(self, peer_id: str) -> None:
        """Every call of ``peer_id`` ends (it left)."""
        for key in list(self._calls_of.get(peer_id, ())):
            self._call_ended(*key)

    def _kick(self, holder: _Peer) -> list[Action]:
        """The takeover error and close for the connection that held ``holder``'s id."""
        self.stats.sent["error"] += 1
        reason = f"id '{holder.id}' was taken over by a new connection"
        return [
            Send(holder.conn, message("error", {"request": "new", "reason": reason})),
            Close(holder.conn, CLOSE_TAKEN_OVER, "id taken over"),
        ]

    def _changed(self, appended: str | None = None) -> None:
        """The list changed; ``appended``: only by this entry at its end."""
        self._peers_text = None
        self._version += 1
        if appended is not None and self._entries is not None:
            self._entries = self._entries + "," + appended if self._entries else appended
        else:
            self._entries = None

    def _schedule_peers(self, now: float, newcomer: ConnId | None = None) -> list[Action]:
        count = len(self._peers) if self._remote is None else self._remote.count()
        interval = self._interval(count)
        if self._due is None and now >= self._last_broadcast + interval:
            return self._broadcast_peers(now)
        # Deferred: the list goes out once it has stayed unchanged for the interval (so the
        # last join of a storm is seen at most that late), or, while it keeps changing, when
        # the previous broadcast is max_wait old; never sooner than the interval after the
        # previous broadcast (now is later than that broadcast).
        wait = max(interval, self._max_wait(count, self._size))
        self._due = min(now + interval, self._last_broadcast + wait)
        # Deferred (or already pending): the broadcast will carry this change; a newcomer
        # gets the list now, and is skipped by that broadcast unless the list changes again.
        if newcomer is None:
            return []
        self._peers[self._by_conn[newcomer]].seen = self._version
        self.stats.sent["peers"] += 1
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
        self.stats.sent["peers"] += len(conns)
        return [Broadcast(tuple(conns), self.peers_message(), peers=True)]

    @staticmethod
    def _entry(req: New) -> str:
        return dumps({"id": req.id, "name": req.name, "user_agent": req.user_agent})
