"""A cluster of flaskrtc processes sharing one Redis: the sans-I/O core.

Every instance keeps the whole cluster's peers list (its own peers and the others') and
talks to the others through Redis only. The shell (:mod:`flaskrtc.signal.cluster_redis`)
runs the :class:`Op` commands this core queues, in order, on one connection, feeds back their
results, and feeds in what arrives on the instance's subscription; the core answers with
hub actions. Nothing here blocks, sleeps or reads a clock: ``now`` is passed in.

In Redis (``flaskrtc:`` keys; every change by a Lua script, so each is atomic):

- ``flaskrtc:peers``: hash, peer id -> ``{"i": instance, "p": list position, "e": entry}``;
- ``flaskrtc:owned:<instance>``: set of the peer ids an instance holds;
- ``flaskrtc:instance:<instance>``: the instance's liveness key, set with a TTL of
  ``3 * heartbeat`` by every heartbeat; ``flaskrtc:instances``: set of the instance ids;
- ``flaskrtc:seq``: the number of the last event.

Channels: ``flaskrtc:events`` carries every registration (``{"t":"j",...}``) and departure
(``{"t":"l",...}``), each numbered by ``flaskrtc:seq`` within the script that makes it, so
every instance sees one and the same order of changes; ``flaskrtc:to:<instance>`` carries
the messages relayed to that instance's peers (a JSON header line, then the message).

Rules:

- ``new``: registered here at once; the claim script makes the id this instance's with a new
  event number. An instance that held the id already, and whose own claim came before,
  closes its connection with the takeover error and 4409 (newest wins, as on one server); if
  its own claim is still unconfirmed when the other arrives, its own claim is the newer one.
- The list is in list-position order everywhere (the event number of the registration;
  an update keeps its place); unconfirmed local registrations come last, in their order.
- A heartbeat refreshes the instance's key and removes the peers of every instance whose key
  has expired, with a ``leave`` event for each. A killed instance's peers therefore leave
  everywhere at most ``3 * heartbeat`` (its key expiring) plus ``heartbeat`` (the next beat of
  any live instance) after it stopped beating.
- Redis unreachable: ``new`` is refused with :data:`REFUSAL`; messages to peers on other
  instances get an ``error``; the local peers keep working. After ``3 * heartbeat`` down the
  other instances have dropped this one's peers, so it drops theirs. Reconnected, it
  resynchronises: the sync script re-registers this instance and its peers (refusing those
  that another instance took meanwhile: their connections here are taken over) and returns
  the whole registry, which replaces the remote part of the list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flaskrtc.signal.hub import Action, Hub
from flaskrtc.signal.protocol import ProtocolError, dumps

log = logging.getLogger("flaskrtc.cluster")

PREFIX = "flaskrtc:"
EVENTS = PREFIX + "events"
REFUSAL = (
    "the server cannot reach the cluster's registry (Redis) now, so it cannot register "
    "anyone: retry in a few seconds"
)


def inbox(instance: str) -> str:
    """The channel of the messages relayed to ``instance``'s peers."""
    return PREFIX + "to:" + instance


def unreachable(to: str) -> str:
    """The ``error`` reason for a message to a peer on an instance that cannot be reached."""
    return f"peer '{to}' is on another server and the cluster (Redis) cannot be reached now"


# -- the Lua scripts (EVAL, no keys declared: Redis Cluster is not supported) ----------------
# ARGV[1] is always the key prefix and ARGV[2] the calling instance.

_LIB = """
local P = ARGV[1]
local function event(ev)
  ev.s = redis.call('INCR', P .. 'seq')
  redis.call('PUBLISH', P .. 'events', cjson.encode(ev))
  return ev.s
end
local function claim(iid, id, entry, move)
  local old = redis.call('HGET', P .. 'peers', id)
  local seq = redis.call('GET', P .. 'seq')
  local pos = (tonumber(seq) or 0) + 1
  if old then
    local o = cjson.decode(old)
    if o.i == iid and not move then pos = o.p end
    if o.i ~= iid then redis.call('SREM', P .. 'owned:' .. o.i, id) end
  end
  redis.call('HSET', P .. 'peers', id, cjson.encode({i = iid, p = pos, e = entry}))
  redis.call('SADD', P .. 'owned:' .. iid, id)
  return event({t = 'j', i = iid, id = id, p = pos, e = entry})
end
local function leave(iid, id, reaped)
  local old = redis.call('HGET', P .. 'peers', id)
  if old and cjson.decode(old).i == iid then
    redis.call('HDEL', P .. 'peers', id)
    local ev = {t = 'l', i = iid, id = id}
    if reaped then ev.r = 1 end
    event(ev)
  end
  redis.call('SREM', P .. 'owned:' .. iid, id)
end
local function drop(iid, reaped)
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'owned:' .. iid)) do leave(iid, id, reaped) end
  redis.call('DEL', P .. 'owned:' .. iid)
  redis.call('SREM', P .. 'instances', iid)
end
local function reap(me)
  for _, other in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
    if other ~= me and redis.call('EXISTS', P .. 'instance:' .. other) == 0 then
      drop(other, true)
    end
  end
end
local function alive(iid, ttl, info)
  local existed = redis.call('EXISTS', P .. 'instance:' .. iid)
  redis.call('SET', P .. 'instance:' .. iid, info, 'PX', ttl)
  redis.call('SADD', P .. 'instances', iid)
  return existed
end
"""

# ARGV: prefix, instance, id, entry, "1" to move the id to the end of the list
CLAIM = _LIB + "return claim(ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1')"
# ARGV: prefix, instance, id
RELEASE = _LIB + "leave(ARGV[2], ARGV[3], false) return 0"
# ARGV: prefix, instance, ttl in ms, info -> 1 if the instance's key still existed
BEAT = _LIB + "local existed = alive(ARGV[2], ARGV[3], ARGV[4]) reap(ARGV[2]) return existed"
# ARGV: prefix, instance, ttl in ms, info, then id, entry pairs of the instance's peers
# -> {last event number, ids another instance holds, the peers hash (flat)}
SYNC = (
    _LIB
    + """
local me = ARGV[2]
alive(me, ARGV[3], ARGV[4])
reap(me)
local want = {}
for k = 5, #ARGV, 2 do want[ARGV[k]] = ARGV[k + 1] end
for _, id in ipairs(redis.call('SMEMBERS', P .. 'owned:' .. me)) do
  if want[id] == nil then leave(me, id, false) end
end
local refused = {}
for k = 5, #ARGV, 2 do
  local id, entry = ARGV[k], ARGV[k + 1]
  local old = redis.call('HGET', P .. 'peers', id)
  if not old then
    claim(me, id, entry, true)
  else
    local o = cjson.decode(old)
    if o.i ~= me then
      refused[#refused + 1] = id
    elseif o.e ~= entry then
      claim(me, id, entry, false)
    end
  end
end
local seq = tonumber(redis.call('GET', P .. 'seq')) or 0
return {seq, refused, redis.call('HGETALL', P .. 'peers')}
"""
)
# ARGV: prefix, instance: it stops, its peers leave now
GOODBYE = _LIB + "drop(ARGV[2], false) redis.call('DEL', P .. 'instance:' .. ARGV[2]) return 0"


@dataclass(frozen=True)
class Op:
    """One Redis command, run in queue order on the command connection.

    ``kind``: ``claim``, ``release``, ``beat``, ``sync``, ``relay`` or ``goodbye``.
    ``sender`` and ``request``: for a relay, the local peer to tell if it fails.
    """

    kind: str
    args: tuple[str | int, ...]
    sender: str | None = None
    request: str = ""


def _script(kind: str, script: str, *argv: str | int) -> Op:
    return Op(kind, ("EVAL", script, 0, PREFIX, *argv))


@dataclass
class _Entry:
    instance: str
    entry: str  # the JSON object in the peers list
    pos: int | None  # list position (a registration's event number); None: unconfirmed
    order: int = 0  # among unconfirmed local registrations
    pending: int = 0  # local: claims queued and not yet seen on the events channel


DOWN, SYNCING, UP = "down", "syncing", "up"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterCore:
    """One instance's view of the cluster; attaches itself to ``hub`` as its Remote."""

    def __init__(
        self,
        hub: Hub,
        instance: str,
        heartbeat: float,
        *,
        info: str = "",
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        """``instance``: this process's id in the cluster (unique); ``info``: the value of
        its key (for people reading Redis); ``wake()``: called when an op is queued."""
        self.hub = hub
        self.instance = instance
        self.heartbeat = heartbeat
        self.ttl = 3 * heartbeat
        self.info = info or instance
        self._wake = wake
        self._inbox = inbox(instance).encode()
        self._view: dict[str, _Entry] = {}
        self._cache: list[str] | None = None
        self._order = 0
        self._max_pos = 0
        self._ops: list[Op] = []
        self.state = DOWN
        self._syncs = 0  # sync ops whose results are still to come
        self._buffer: list[bytes] = []  # events that arrived while syncing
        self._applied = 0  # the number of the last event applied
        self._down_since: float | None = None
        self._next_beat = float("inf")
        # What went wrong while Redis was unreachable (the shell logs it on reconnection).
        self.refused = 0
        self.unrelayed = 0
        hub.attach(self)

    # -- the hub's Remote ----------------------------------------------------------------

    def refusal(self) -> str | None:
        if self.state != DOWN:
            return None
        self.refused += 1
        return REFUSAL

    def joined(self, peer_id: str, entry: str, *, update: bool) -> None:
        current = self._view.get(peer_id)
        if update and current is not None and current.instance == self.instance:
            current.entry = entry
        else:
            self._order += 1
            current = _Entry(self.instance, entry, None, self._order)
            self._view[peer_id] = current
        self._cache = None
        if self.state != DOWN:
            current.pending += 1
            self._queue(
                _script("claim", CLAIM, self.instance, peer_id, entry, "0" if update else "1")
            )

    def left(self, peer_id: str) -> None:
        current = self._view.get(peer_id)
        if current is None or current.instance != self.instance:
            return
        del self._view[peer_id]
        self._cache = None
        if self.state != DOWN:
            self._queue(_script("release", RELEASE, self.instance, peer_id))

    def relay(self, to: str, text: str, sender: str, request: str) -> bool:
        target = self._view.get(to)
        if target is None or target.instance == self.instance:
            return False
        if self.state == DOWN:
            self.unrelayed += 1
            raise ProtocolError(request, unreachable(to), "unreachable")
        header = dumps({"to": to, "i": self.instance, "f": sender, "r": request})
        self._queue(
            Op("relay", ("PUBLISH", inbox(target.instance), header + "\n" + text), sender, request)
        )
        return True

    def entries(self) -> list[str]:
        if self._cache is None:
            ordered = sorted(
                self._view.values(),
                key=lambda e: (0, e.pos, 0) if e.pos is not None else (1, 0, e.order),
            )
            self._cache = [e.entry for e in ordered]
        return self._cache

    def count(self) -> int:
        return len(self._view)

    # -- queries -------------------------------------------------------------------------

    def remote_ids(self) -> list[str]:
        """The ids held by other instances."""
        return [pid for pid, e in self._view.items() if e.instance != self.instance]

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has work to do, or None."""
        if self.state != DOWN:
            return self._next_beat
        if self._down_since is not None and self.remote_ids():
            return self._down_since + self.ttl
        return None

    def has_ops(self) -> bool:
        return bool(self._ops)

    # -- events from the shell -----------------------------------------------------------

    def take_ops(self) -> list[Op]:
        """The ops to run now, in order."""
        ops, self._ops = self._ops, []
        return ops

    def connected(self, now: float) -> None:
        """Both connections are up and subscribed: resynchronise."""
        self.state = SYNCING
        self._syncs = 0
        self._buffer = []
        self._next_beat = now + self.heartbeat
        self._sync()

    def disconnected(self, now: float, unsent: Iterable[Op] = ()) -> list[Action]:
        """Redis is unreachable; ``unsent`` ops may not have run (relays: their senders are
        told)."""
        if self.state != DOWN:
            self.state = DOWN
            self._down_since = now
        self._ops = []
        self._syncs = 0
        self._buffer = []
        for entry in self._view.values():
            entry.pending = 0
        actions: list[Action] = []
        for op in unsent:
            if op.kind == "relay" and op.sender is not None:
                self.unrelayed += 1
                to = json.loads(_text(op.args[2]).partition("\n")[0])["to"]
                actions += self._tell(op.sender, op.request, unreachable(to))
        return actions

    def stop(self) -> Op:
        """The last op before this instance stops: its peers leave everywhere at once."""
        self.state = DOWN
        return _script("goodbye", GOODBYE, self.instance)

    def poll(self, now: float) -> list[Action]:
        """Queue a heartbeat when due; drop the other instances' peers after ``ttl`` down."""
        if self.state != DOWN:
            if now >= self._next_beat:
                self._next_beat = now + self.heartbeat
                self._queue(_script("beat", BEAT, self.instance, int(self.ttl * 1000), self.info))
            return []
        if self._down_since is None or now < self._down_since + self.ttl:
            return []
        gone = self.remote_ids()
        if not gone:
            return []
        log.warning(
            "cluster: Redis unreachable for %.0f s: the %d peer(s) of other instances are "
            "dropped from the list (theirs have dropped ours by now)",
            now - self._down_since,
            len(gone),
        )
        for peer_id in gone:
            del self._view[peer_id]
        self._cache = None
        return self.hub.remote_changed(now, left=gone)

    def completed(self, op: Op, result: Any, now: float) -> list[Action]:
        """``op`` ran; ``result`` is its reply (an Exception for an error reply)."""
        if isinstance(result, Exception):
            log.error("cluster: Redis refused %s: %s", op.kind, result)
            if op.kind == "relay" and op.sender is not None:
                return self._tell(op.sender, op.request, f"could not relay: {result}")
            if op.kind in ("sync", "beat", "claim"):
                self._resync("after an error")
            return []
        if op.kind == "sync":
            return self._synced(result, now)
        if op.kind == "beat" and not result and self.state == UP:
            self._resync("this instance's key had expired (it was taken for dead)")
        return []

    def on_message(self, channel: bytes, data: bytes, now: float) -> list[Action]:
        """A message on one of the subscribed channels."""
        if channel == self._inbox:
            return self._delivered(data)
        if self.state == SYNCING:
            self._buffer.append(data)
            return []
        if self.state == DOWN:
            return []
        return self._event(data, now)

    # -- internals -----------------------------------------------------------------------

    def _queue(self, op: Op) -> None:
        self._ops.append(op)
        self._wake()

    def _sync(self) -> None:
        self.state = SYNCING
        self._syncs += 1
        pairs: list[str] = []
        for peer_id, entry in self._view.items():
            if entry.instance == self.instance:
                pairs += (peer_id, entry.entry)
        self._queue(_script("sync", SYNC, self.instance, int(self.ttl * 1000), self.info, *pairs))

    def _resync(self, why: str) -> None:
        log.warning("cluster: resynchronising: %s", why)
        self._sync()

    def _tell(self, peer_id: str, request: str, reason: str) -> list[Action]:
        return self.hub.deliver(peer_id, ProtocolError(request, reason).reply) or []

    def _delivered(self, data: bytes) -> list[Action]:
        head, _, body = data.partition(b"\n")
        header = json.loads(head)
        to = header["to"]
        text = body.decode()
        actions = self.hub.deliver(to, text)
        if actions is not None:
            return actions
        sender = header.get("i")
        if sender is not None and self.state != DOWN:
            # Gone from here since the sender's instance looked: say so, as for a local peer.
            reply = ProtocolError(header.get("r", ""), f"peer '{to}' is not registered").reply
            back = dumps({"to": header["f"]})
            self._queue(Op("relay", ("PUBLISH", inbox(sender), back + "\n" + reply)))
        return []

    def _event(self, data: bytes, now: float) -> list[Action]:
        event = json.loads(data)
        seq = event["s"]
        if seq <= self._applied:
            return []  # in the snapshot already
        if seq != self._applied + 1:
            self._resync(f"events {self._applied + 1}..{seq - 1} were missed")
            self._buffer.append(data)
            return []
        self._applied = seq
        peer_id, instance = event["id"], event["i"]
        current = self._view.get(peer_id)
        mine = current is not None and current.instance == self.instance
        if event["t"] == "j":
            pos = event["p"]
            if instance == self.instance:
                return self._confirmed(peer_id, current if mine else None, pos, now)
            taken: list[str] = []
            if mine:
                assert current is not None
                if current.pending:
                    return []  # our own claim of it is later, so newer: it wins
                taken.append(peer_id)
            self._view[peer_id] = _Entry(instance, event["e"], pos)
            self._max_pos = max(self._max_pos, pos)
            self._cache = None
            return self.hub.remote_changed(now, taken=taken)
        # A departure.
        if instance == self.instance:
            if event.get("r") and mine:
                self._resync("another instance took this one for dead and removed its peers")
            return []
        if current is None or current.instance != instance:
            return []  # taken over meanwhile: the id has moved, not left
        del self._view[peer_id]
        self._cache = None
        return self.hub.remote_changed(now, left=[peer_id])

    def _confirmed(
        self, peer_id: str, current: _Entry | None, pos: int, now: float
    ) -> list[Action]:
        """Our own claim seen on the events channel: the entry gets its list position."""
        if current is None:
            return []  # left since
        current.pending = max(0, current.pending - 1)
        if current.pos == pos:
            return []
        # Where it stands in the list changes only if something came before it meanwhile.
        first = min(
            (e.order for e in self._view.values() if e.pos is None and e.instance == self.instance),
            default=current.order,
        )
        moved = not (current.pos is None and pos > self._max_pos and current.order == first)
        current.pos = pos
        self._max_pos = max(self._max_pos, pos)
        if not moved:
            return []
        self._cache = None
        return self.hub.remote_changed(now)

    def _synced(self, result: Any, now: float) -> list[Action]:
        self._syncs -= 1
        if self._syncs > 0:
            return []  # a later sync is on its way: only the last one is applied
        seq, refused, flat = result
        remote: dict[str, _Entry] = {}
        self._max_pos = 0  # positions start again from 1 after Redis lost its data
        for k in range(0, len(flat), 2):
            peer_id = _text(flat[k])
            value = json.loads(flat[k + 1])
            pos = int(value["p"])
            self._max_pos = max(self._max_pos, pos)
            current = self._view.get(peer_id)
            if value["i"] == self.instance:
                if current is not None and current.instance == self.instance:
                    current.pos = pos
                continue
            remote[peer_id] = _Entry(value["i"], value["e"], pos)
        taken: list[str] = []
        for raw in refused:
            peer_id = _text(raw)
            current = self._view.get(peer_id)
            if current is not None and current.instance == self.instance and not current.pending:
                taken.append(peer_id)
        before = set(self.remote_ids())
        view = {
            pid: e
            for pid, e in self._view.items()
            if e.instance == self.instance and pid not in taken
        }
        for peer_id, entry in remote.items():
            if peer_id not in view:
                view[peer_id] = entry
        self._view = view
        self._cache = None
        left = [pid for pid in before if pid not in view]
        self._applied = int(seq)
        self.state = UP
        self._down_since = None
        buffered, self._buffer = self._buffer, []
        log.info(
            "cluster: in sync: %d peer(s) here, %d on other instances%s",
            len(view) - len(remote),
            len(remote),
            f"; {len(taken)} taken over elsewhere meanwhile" if taken else "",
        )
        actions = self.hub.remote_changed(now, left=left, taken=taken)
        for data in buffered:
            if self.state != UP:
                self._buffer.append(data)
            else:
                actions += self._event(data, now)
        return actions
