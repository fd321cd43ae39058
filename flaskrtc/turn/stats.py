"""Counters of the TURN server, kept as plain integers for whoever wants to read them.

The relay's hot path only adds to attributes of these objects (no locks, no calls, no
labels): a metrics exporter or a status page reads them when it is asked, outside this
package (:mod:`flaskrtc.metrics`), so ``flaskrtc.turn`` stays free of any metrics library.
"""

from __future__ import annotations

TRANSPORTS = ("udp", "tcp", "tls")


class RelayCounts:
    """Application datagrams relayed for the clients of one transport: client to peer (what
    left a relay socket) and peer to client (what a relay socket received and the client was
    sent). Bytes are the peer-side UDP payloads, without TURN framing."""

    __slots__ = ("to_client_bytes", "to_client_packets", "to_peer_bytes", "to_peer_packets")

    def __init__(self) -> None:
        self.to_peer_packets = 0
        self.to_peer_bytes = 0
        self.to_client_packets = 0
        self.to_client_bytes = 0


class TurnStats:
    """What the core counts: allocations made and expired, and Allocate requests refused,
    by error code (the 401 challenge to an unsigned first request is no refusal: it is the
    first step of every allocation, RFC 8489 §9.2)."""

    __slots__ = ("allocations_created", "allocations_expired", "refused")

    def __init__(self) -> None:
        self.allocations_created = 0
        self.allocations_expired = 0
        self.refused: dict[int, int] = {}
