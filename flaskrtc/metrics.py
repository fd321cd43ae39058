"""Health, readiness and Prometheus metrics of one flaskrtc process (one worker).

The servers count with plain integers (:class:`flaskrtc.signal.hub.SignalStats`,
:class:`flaskrtc.turn.stats.TurnStats`, :class:`flaskrtc.turn.stats.RelayCounts`) and keep
their live state (connections, peers, allocations) anyway; nothing here runs on their hot
paths. :class:`Monitor` holds references to them, and :class:`Collector` turns them into
metric families when /metrics is scraped, in a registry of its own (never prometheus_client's
global one: two apps in one process, as in the tests, must not clash). Only the process
assembly (:mod:`flaskrtc.server`) and the app import this module; ``flaskrtc.turn`` and
``flaskrtc.signal`` know nothing of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector as _BaseCollector

from flaskrtc import __version__
from flaskrtc.status import History, Sample
from flaskrtc.turn.stats import TRANSPORTS

if TYPE_CHECKING:
    from flaskrtc.signal.server import SignalServer
    from flaskrtc.turn.server import TurnServer

# The Prometheus text format, version 0.0.4 (what every scraper reads).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Allocate refusals always exported, so that a rate() over them exists before the first one;
# any other code appears when it first happens.
REFUSAL_CODES = (401, 403, 437, 438, 440, 442, 486, 508)
DIRECTIONS = ("client-to-peer", "peer-to-client")


class Monitor:
    """What /healthz, /readyz, /metrics and the status page read: this process's servers,
    attached as they start (``turn``, ``http``, ``cluster``), and the counts of the app."""

    def __init__(
        self, signal: SignalServer, *, worker: str = "1/1", cluster_required: bool = False
    ) -> None:
        """``worker``: ``I/N`` of a worker among N (1/1 alone); ``cluster_required``:
        ``[cluster] redis_url`` is set, so readiness needs Redis."""
        self.signal = signal
        self.worker = worker
        self.cluster_required = cluster_required
        self.turn: TurnServer | None = None
        self.http: Any = None  # the WSGI server (a gevent BaseServer)
        self.cluster: Any = None  # a flaskrtc.signal.cluster_redis.RedisCluster
        self.credentials_issued = 0  # /api/turn answers that carried a credential
        self._registry: CollectorRegistry | None = None
        self.history = History()  # the status page's last hour, sampled by the server

    # -- the status page -------------------------------------------------------------------

    def status_sample(self, now: float) -> Sample:
        """The status page's numbers now. Bytes in: what the relay took from clients for
        their peers; out: what it sent to clients from their peers."""
        snap = self.snapshot()
        relayed = snap["relayed_bytes"]
        return Sample(
            now,
            snap["peers_online"],
            snap["calls"],
            snap["allocations"],
            relayed["client_to_peer"],
            relayed["peer_to_client"],
        )

    def sample(self, now: float) -> None:
        """Add a sample to the history if one is due (called every few seconds)."""
        if self.history.due(now):
            self.history.record(self.status_sample(now))

    def status(self, now: float) -> dict[str, Any]:
        """What /status.json answers: the history's view, this process's version and worker."""
        self.sample(now)
        view = self.history.view(self.status_sample(now))
        return {"version": __version__, "worker": self.worker, **view}

    # -- health ----------------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """Each part's state: ``up``, or ``down: <why>``; ready when all are up."""
        checks: dict[str, str] = {}
        http = self.http
        http_up = http is not None and bool(http.started)
        checks["http"] = "up" if http_up else "down: not listening"
        if not http_up:
            checks["websocket"] = "down: not listening"
        elif self.signal.stopping:
            checks["websocket"] = "down: shutting down"
        else:
            checks["websocket"] = "up"
        turn = self.turn
        if turn is None or not turn.servers:
            checks["turn"] = "down: not listening"
        elif not all(server.started for server in turn.servers):
            checks["turn"] = "down: a listener has stopped"
        else:
            checks["turn"] = "up"
        if self.cluster_required:
            checks["cluster"] = self._cluster_state()
        return checks

    def _cluster_state(self) -> str:
        cluster = self.cluster
        if cluster is None:
            return "down: not started"
        from flaskrtc.signal.cluster import DOWN

        # The cluster's own view: its subscription to Redis ends (and the state goes DOWN)
        # the moment Redis goes away, so probes need no round trip to Redis of their own.
        if cluster.core.state == DOWN:
            return f"down: Redis at {cluster.where} does not answer"
        return "up"

    # -- numbers -------------------------------------------------------------------------

    def allocations_by_transport(self) -> dict[str, int]:
        """Live TURN allocations by the client's transport."""
        counts = dict.fromkeys(TRANSPORTS, 0)
        if self.turn is not None:
            for allocation in self.turn.core.allocations.by_five_tuple.values():
                transport = allocation.five_tuple.transport
                counts[transport] = counts.get(transport, 0) + 1
        return counts

    def snapshot(self) -> dict[str, Any]:
        """The current numbers as a JSON-able dict, for the status page."""
        hub = self.signal.hub
        to_peer = to_client = 0
        if self.turn is not None:
            for counts in self.turn.relayed.values():
                to_peer += counts.to_peer_bytes
                to_client += counts.to_client_bytes
        return {
            "version": __version__,
            "worker": self.worker,
            "peers_online": hub.peer_count(),  # on this process
            "peers_listed": hub.listed_count(),  # in the list: the whole cluster's, with one
            "calls": hub.call_count(),  # answered by a peer of this process
            "websocket_connections": len(self.signal.conns),
            "allocations": self.allocations_by_transport(),
            "relayed_bytes": {"client_to_peer": to_peer, "peer_to_client": to_client},
            "ready": all(state == "up" for state in self.readiness().values()),
        }

    def registry(self) -> CollectorRegistry:
        """This process's registry (made once): :class:`Collector` and the process
        collector (CPU, RSS, open fds; on Linux, where /proc has them)."""
        if self._registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(Collector(self))
            ProcessCollector(registry=registry)
            self._registry = registry
        return self._registry

    def exposition(self) -> bytes:
        """The /metrics body."""
        return generate_latest(self.registry())


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class Collector(_BaseCollector):
    """Reads a :class:`Monitor`'s servers at scrape time (see README, Health and metrics)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """Every flaskrtc metric family, from the counts as they are now."""
        monitor = self.monitor
        info = _gauge(
            "flaskrtc_info", "This process: version and worker (I/N).", ("version", "worker")
        )
        info.add_metric([__version__, monitor.worker], 1)
        yield info
        ready = _gauge("flaskrtc_ready", "1 when /readyz answers 200, else 0.")
        ready.add_metric([], float(all(v == "up" for v in monitor.readiness().values())))
        yield ready
        yield from self._signaling(monitor)
        yield from self._turn(monitor)
        issued = _counter(
            "flaskrtc_turn_credentials_issued", "TURN credentials handed out by /api/turn."
        )
        issued.add_metric([], monitor.credentials_issued)
        yield issued

    @staticmethod
    def _signaling(monitor: Monitor) -> Iterator[Metric]:
        signal = monitor.signal
        stats = signal.stats
        live = _gauge("flaskrtc_ws_connections", "Open signaling WebSocket connections.")
        live.add_metric([], len(signal.conns))
        yield live
        opened = _counter("flaskrtc_ws_connections_opened", "Signaling WebSocket sessions started.")
        opened.add_metric([], stats.ws_opened)
        yield opened
        peers = _gauge("flaskrtc_signal_peers", "Peers registered on this process.")
        peers.add_metric([], signal.hub.peer_count())
        yield peers
        calls = _gauge(
            "flaskrtc_signal_calls",
            "Calls in progress (answered, no bye yet, both peers still here) answered by a "
            "peer of this process.",
        )
        calls.add_metric([], signal.hub.call_count())
        yield calls
        messages = _counter(
            "flaskrtc_signal_messages",
            "Signaling messages by type: received from clients (in), routed to clients (out).",
            ("type", "direction"),
        )
        for kind, count in stats.received.items():
            messages.add_metric([kind, "in"], count)
        for kind, count in stats.sent.items():
            messages.add_metric([kind, "out"], count)
        yield messages
        errors = _counter(
            "flaskrtc_signal_protocol_errors",
            "Signaling protocol errors by kind (an error reply or a WebSocket close).",
            ("kind",),
        )
        for kind, count in stats.errors.items():
            errors.add_metric([kind], count)
        yield errors
        slow = _counter(
            "flaskrtc_ws_slow_consumers_dropped",
            "WebSocket connections dropped for not reading what they were sent.",
        )
        slow.add_metric([], stats.slow_dropped)
        yield slow

    @staticmethod
    def _turn(monitor: Monitor) -> Iterator[Metric]:
        turn = monitor.turn
        allocations = _gauge(
            "flaskrtc_turn_allocations",
            "Live TURN allocations by client transport.",
            ("transport",),
        )
        for transport, count in monitor.allocations_by_transport().items():
            allocations.add_metric([transport], count)
        yield allocations
        permissions = channels = 0
        created = expired = 0
        refused: dict[int, int] = dict.fromkeys(REFUSAL_CODES, 0)
        if turn is not None:
            for allocation in turn.core.allocations.by_five_tuple.values():
                permissions += allocation.permitted_ips()
                channels += len(allocation.channel_to_peer)
            stats = turn.core.stats
            created, expired = stats.allocations_created, stats.allocations_expired
            refused.update(stats.refused)
        gauge = _gauge("flaskrtc_turn_permissions", "Peer IPs permitted, over all allocations.")
        gauge.add_metric([], permissions)
        yield gauge
        gauge = _gauge("flaskrtc_turn_channels", "Channels bound, over all allocations.")
        gauge.add_metric([], channels)
        yield gauge
        counter = _counter("flaskrtc_turn_allocations_created", "TURN allocations made.")
        counter.add_metric([], created)
        yield counter
        counter = _counter(
            "flaskrtc_turn_allocations_expired",
            "TURN allocations ended by their lifetime (not deleted by the client).",
        )
        counter.add_metric([], expired)
        yield counter
        counter = _counter(
            "flaskrtc_turn_allocations_refused",
            "Allocate requests answered with an error, by code (not the 401 challenge to a "
            "first request without credentials).",
            ("code",),
        )
        for code, count in sorted(refused.items()):
            counter.add_metric([str(code)], count)
        yield counter
        relayed_bytes = _counter(
            "flaskrtc_turn_relayed_bytes",
            "Bytes relayed (peer-side UDP payloads), by client transport and direction.",
            ("transport", "direction"),
        )
        relayed_packets = _counter(
            "flaskrtc_turn_relayed_packets",
            "Datagrams relayed, by client transport and direction.",
            ("transport", "direction"),
        )
        for transport in TRANSPORTS:
            counts = turn.relayed[transport] if turn is not None else None
            to_peer = (counts.to_peer_bytes, counts.to_peer_packets) if counts else (0, 0)
            to_client = (counts.to_client_bytes, counts.to_client_packets) if counts else (0, 0)
            for direction, (size, packets) in zip(DIRECTIONS, (to_peer, to_client), strict=True):
                relayed_bytes.add_metric([transport, direction], size)
                relayed_packets.add_metric([transport, direction], packets)
        yield relayed_bytes
        yield relayed_packets
