"""The gevent shell of the TURN server: UDP, TCP and TLS listeners and relay sockets.

Only bytes move here. STUN requests go to :class:`flaskrtc.turn.core.TurnCore`; the hot
path, ChannelData in both directions, is one call per packet into the core
(:meth:`~flaskrtc.turn.core.TurnCore.channel_data`, :meth:`~flaskrtc.turn.core.TurnCore.from_peer`):
a few dict look-ups on the allocation, no per-packet greenlet and no parsing beyond the
4-byte ChannelData header (RFC 8656 §12.4).

gevent traps handled: ``DatagramServer`` reads with ``recvfrom(8192)`` (raised to 65535
here) and, with ``spawn=None``, stops reading for a while after an exception in ``handle``,
so every handler catches everything.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.lock
import gevent.socket
from gevent.server import DatagramServer, StreamServer

from flaskrtc.tls import HandshakeGuard
from flaskrtc.turn.addressing import RelayAddressing, canonical_ip, is_wildcard
from flaskrtc.turn.allocation import Address, Allocation, FiveTuple
from flaskrtc.turn.core import ToClient, ToPeer, TurnCore, allocation_fields
from flaskrtc.turn.siblings import RelayTable
from flaskrtc.turn.stats import TRANSPORTS, RelayCounts
from flaskrtc.turn.stun import StunError, next_frame_length, stream_starts_with_stun

log = logging.getLogger("flaskrtc.turn")

MAX_DATAGRAM = 65535
# A TCP/TLS client without an allocation that sends nothing for this long (or a frame this
# large that is no STUN or ChannelData) is closed: it holds a socket and buffer for nothing.
# Once it has an allocation, the allocation's lifetime governs (RFC 8656 §5): expiry closes
# the stream, however quiet the client was (a phone ringing for a minute sends nothing).
STREAM_IDLE_TIMEOUT = 60.0
SWEEP_INTERVAL = 1.0  # seconds between expiry sweeps
MAX_STREAM_BUFFER = 65536 + 4

# recvfrom errors that report an ICMP error for an earlier send (port or host unreachable):
# the socket is fine, so keep reading. Windows reports ICMP port unreachable on an
# unconnected UDP socket as WSAECONNRESET (10054) and TTL expiry as WSAENETRESET (10052);
# Linux reports them (with IP_RECVERR) as ECONNREFUSED, EHOSTUNREACH and the like.
TRANSIENT_RECV_ERRORS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EPROTO,
        10052,  # WSAENETRESET
        10054,  # WSAECONNRESET
    }
)


def transient(err: OSError) -> bool:
    """Whether a UDP ``recvfrom`` error only reports an ICMP error for an earlier send."""
    return err.errno in TRANSIENT_RECV_ERRORS or getattr(err, "winerror", None) in (10052, 10054)


class RelaySocket:
    """One relay transport address: a bound UDP socket and its reader greenlet."""

    __slots__ = ("address", "public", "raw", "reader", "sock")

    def __init__(self, sock: gevent.socket.socket, public_ip: str) -> None:
        self.sock = sock
        self.raw: socket.socket = getattr(sock, "_sock", sock)  # non-blocking, for sendto
        self.address: Address = tuple(sock.getsockname()[:2])
        self.public: Address = (public_ip, self.address[1])
        self.reader: gevent.Greenlet[Any] | None = None


class UdpRelayPorts:
    """Binds relay sockets in ``[min_port, max_port]`` (the core's RelayPorts), on the host
    :class:`RelayAddressing` picks for the client's arrival address."""

    def __init__(
        self,
        *,
        addressing: RelayAddressing,
        min_port: int,
        max_port: int,
        on_open: Callable[[RelaySocket], None] | None = None,
        table: RelayTable | None = None,
    ) -> None:
        """``table``: where live relay ports are marked for sibling workers (workers > 1)."""
        self.addressing = addressing
        self.min_port, self.max_port = min_port, max_port
        self.on_open = on_open
        self.table = table

    def supports(self, family: int, local: str | None = None) -> bool:
        """IPv4 always; IPv6 when an IPv6 relay address is known for this client."""
        return self.addressing.supports(family, local)

    def open(
        self,
        family: int,
        *,
        port: int | None = None,
        even: bool = False,
        local: str | None = None,
    ) -> RelaySocket | None:
        """Bind a relay socket (a given port, an even one, or any free one), or None."""
        if port is not None:
            candidates = [port] if self.min_port <= port <= self.max_port else []
        else:
            low = self.min_port + (self.min_port % 2 if even else 0)
            step = 2 if even else 1
            count = (self.max_port - low) // step + 1
            if count <= 0:
                return None
            start = random.randrange(count)
            # Random start, then linear: finds a free port even when the range is nearly full,
            # bounded so a full range costs a fixed number of binds.
            candidates = [low + ((start + i) % count) * step for i in range(min(count, 64))]
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        host, public = self.addressing.choose(family, local)
        for candidate in candidates:
            try:
                sock = gevent.socket.socket(af, socket.SOCK_DGRAM)
            except OSError:
                return None  # no such family on this host (IPv6 disabled)
            try:
                if family == 6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, candidate))
            except OSError:
                sock.close()
                continue
            relay = RelaySocket(sock, public)
            if self.table is not None:
                self.table.mark(relay.address[1], family, True)
            if self.on_open is not None:
                self.on_open(relay)  # starts the relay's reader greenlet
            return relay
        return None

    def close(self, relay: Any) -> None:
        """Stop the reader and release the socket."""
        if relay.reader is not None:
            relay.reader.kill(block=False)
            relay.reader = None
        if self.table is not None:
            self.table.mark(relay.address[1], 6 if ":" in relay.address[0] else 4, False)
        relay.sock.close()


class ClientLink:
    """How to reach one client: the UDP listener socket, or a TCP/TLS connection."""

    __slots__ = ("address", "cmsg", "counts", "five_tuple", "lock", "pad", "raw", "stream")

    def __init__(
        self,
        five_tuple: FiveTuple,
        raw: Any,
        *,
        stream: bool,
        cmsg: list[tuple[int, int, bytes]] | None = None,
        send_to: Any = None,
        counts: RelayCounts | None = None,
    ) -> None:
        self.five_tuple = five_tuple  # built once per client, not per datagram
        # The relay counters of the client's transport, found once per client: the hot path
        # adds to them without looking anything up.
        self.counts = counts if counts is not None else RelayCounts()
        # Where datagrams go: the address as the socket saw it (mapped on a dual-stack one).
        self.address = five_tuple.client if send_to is None else send_to
        self.raw = raw
        self.stream = stream
        self.pad = stream  # ChannelData over streams is padded to 4 bytes (§12.5)
        self.lock = gevent.lock.Semaphore() if stream else None
        # A wildcard UDP listener answers from the address the client sent to (IP_PKTINFO),
        # or a NAT in front of the client drops the reply of a multi-homed host.
        self.cmsg = cmsg

    def close(self) -> None:
        """End a TCP/TLS client's stream (its reader then cleans up); nothing for UDP."""
        if self.stream:
            try:
                self.raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def send(self, data: bytes) -> None:
        """Send to the client; a full UDP buffer drops the datagram, as the network would."""
        try:
            if self.lock is None:
                if self.cmsg is None:
                    self.raw.sendto(data, self.address)
                else:
                    self.raw.sendmsg((data,), self.cmsg, 0, self.address)
            else:
                with self.lock:
                    self.raw.sendall(data)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                log.debug("send to %s failed: %s", self.address, err)


class TurnServer:
    """Owns the core, the listeners and every relay socket's reader."""

    def __init__(
        self,
        core: TurnCore,
        *,
        clock: Callable[[], float] = time.time,
        stream_idle_timeout: float = STREAM_IDLE_TIMEOUT,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.core = core
        self.clock = clock
        self.stream_idle_timeout = stream_idle_timeout
        self.sweep_interval = sweep_interval
        self.servers: list[Any] = []
        self._sweeper: gevent.Greenlet[Any] | None = None
        self.udp_address: Address | None = None
        self.tcp_address: Address | None = None
        self.tls_address: Address | None = None
        self.pktinfo = False  # whether UDP clients' destination addresses are known
        self.families: set[int] = set()  # the address families clients can reach it over
        # Datagrams relayed, per client transport (read by flaskrtc.metrics at scrape time).
        self.relayed: dict[str, RelayCounts] = {name: RelayCounts() for name in TRANSPORTS}

    # -- relays --------------------------------------------------------------------------

    def start_relay(self, relay: RelaySocket) -> None:
        """Start the peer → client reader of a new relay socket (called by the ports)."""
        relay.reader = gevent.spawn(self._relay_loop, relay)

    def _relay_loop(self, relay: RelaySocket) -> None:
        by_relay = self.core.allocations.by_relay
        from_peer = self.core.from_peer
        recvfrom = relay.sock.recvfrom
        allocation: Allocation | None = None
        link: ClientLink | None = None
        counts = RelayCounts()  # replaced by the client's once its link is known
        while True:
            try:
                data, peer = recvfrom(MAX_DATAGRAM)
            except OSError as err:
                if transient(err):
                    continue  # an ICMP error for an earlier send: the relay goes on
                return  # closed
            if allocation is None or link is None:
                allocation = by_relay.get(relay.address)
                if allocation is None or (
                    allocation.relay is not relay and allocation.second is not relay
                ):
                    allocation = None
                    continue  # a reserved port not yet allocated: nothing to relay to
                link = allocation.shell
                if link is None:
                    continue
                counts = link.counts
            if len(peer) > 2:
                peer = peer[:2]  # IPv6: drop flowinfo and scope id
            try:
                out = from_peer(allocation, peer, data, link.pad)
                if out is not None:
                    link.send(out)
                    counts.to_client_packets += 1
                    counts.to_client_bytes += len(data)
            except Exception:  # never let one packet end the relay
                log.exception("relay %s: dropping a packet from %s", relay.address, peer)

    # -- client input --------------------------------------------------------------------

    def client_input(self, data: bytes, link: ClientLink) -> None:
        """One datagram or stream frame from a client: fast path for ChannelData."""
        five_tuple = link.five_tuple
        if data and data[0] & 0xC0 == 0x40:
            allocation = self.core.allocations.by_five_tuple.get(five_tuple)
            if allocation is None:
                return
            target = self.core.channel_data(allocation, data)
            if target is not None:
                peer, payload = target
                try:
                    # A dual allocation sends from the relay of the peer's family.
                    allocation.relay_for(peer[0]).raw.sendto(payload, peer)
                except OSError:
                    return  # full buffer or unreachable peer: UDP drops it
                counts = link.counts
                counts.to_peer_packets += 1
                counts.to_peer_bytes += len(payload)
            return
        for effect in self.core.handle(data, five_tuple, self.clock()):
            if isinstance(effect, ToClient):
                link.send(effect.data)
            elif isinstance(effect, ToPeer):
                try:
                    effect.allocation.relay_for(effect.peer[0]).raw.sendto(effect.data, effect.peer)
                except OSError:
                    continue
                link.counts.to_peer_packets += 1  # a Send indication's DATA
                link.counts.to_peer_bytes += len(effect.data)
        allocation = self.core.allocations.by_five_tuple.get(five_tuple)
        if allocation is not None and allocation.shell is None:
            allocation.shell = link

    # -- listeners -----------------------------------------------------------------------

    def start(
        self,
        *,
        bind: str,
        port: int,
        tls_port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        """Listen on UDP and TCP ``port`` (the same number) and TLS ``tls_port`` (0 = off).

        ``bind`` ``::`` listens on IPv6 and IPv4: one dual-stack socket each where the OS
        allows it, else one socket per family on the same port, else (no IPv6) IPv4 alone.
        """
        with_tls = bool(tls_port) and ssl_context is not None
        self.serve(bind_turn_sockets(bind, port, tls_port if with_tls else 0), ssl_context)

    def serve(self, sockets: TurnSockets, ssl_context: ssl.SSLContext | None) -> None:
        """Serve on sockets already bound (by :meth:`start`, or by the parent of workers)."""
        for udp_sock, tcp_sock in zip(sockets.udp, sockets.tcp, strict=True):
            udp = _UdpListener(self, udp_sock)
            udp.init_socket()
            tcp = StreamServer(tcp_sock, self._stream_handler("tcp"))
            udp.start()
            tcp.start()
            self.servers += [udp, tcp]
            self.pktinfo = self.pktinfo or udp.pktinfo
        self.families = sockets.families()
        note = buffer_note(sockets.udp[0])  # once per server, whoever bound the sockets
        if note is not None:
            log.info("%s", note)
        host, port = sockets.udp[0].getsockname()[:2]
        self.udp_address = self.tcp_address = (host, port)
        if sockets.tls and ssl_context is not None:
            for sock in sockets.tls:
                tls = _TlsServer(sock, self._stream_handler("tls"), ssl_context=ssl_context)
                tls.start()
                self.servers.append(tls)
            self.tls_address = (host, sockets.tls[0].getsockname()[1])
        self._sweeper = gevent.spawn(self._sweep)

    def tls_servers(self) -> list[HandshakeGuard]:
        """The TURN-over-TLS listeners (a reload hands them a new certificate)."""
        return [server for server in self.servers if isinstance(server, _TlsServer)]

    def _sweep(self) -> None:
        while True:
            gevent.sleep(self.sweep_interval)
            self.sweep()

    def sweep(self) -> None:
        """Expire what is due; an expired TCP/TLS allocation takes its stream with it."""
        try:
            for allocation in self.core.expire(self.clock()):
                log.debug(
                    "allocation %s expired",
                    allocation.relay.public,
                    extra=allocation_fields(allocation),
                )
                if isinstance(allocation.shell, ClientLink):
                    allocation.shell.close()
            for server in self.servers:
                if isinstance(server, _UdpListener):
                    server.prune()
        except Exception:
            log.exception("expiry sweep failed")

    def stop(self) -> None:
        """Close listeners and every allocation's relay socket."""
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        for server in self.servers:
            server.stop(timeout=1)
        self.core.allocations.clear()

    def _stream_handler(self, transport: str) -> Callable[[Any, Any], None]:
        def handle(sock: Any, address: Any) -> None:
            self._serve_stream(sock, (canonical_ip(address[0]), address[1]), transport)

        return handle

    def _serve_stream(self, sock: Any, client: Address, transport: str) -> None:
        try:
            # Relayed media is many small writes: Nagle's algorithm would hold each one back
            # until the previous is acknowledged (about 40 ms with delayed ACKs).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        here = sock.getsockname()
        five_tuple = FiveTuple(transport, client, (canonical_ip(here[0]), here[1]))
        link = ClientLink(five_tuple, sock, stream=True, counts=self.relayed[transport])
        buf = bytearray()
        opened = False  # set once the stream has shown it starts with STUN
        allocations = self.core.allocations
        try:
            while True:
                # The idle limit holds only while the stream has no allocation (before its
                # first Allocate, or after a Refresh to 0); then the lifetime governs.
                idle = self.stream_idle_timeout if allocations.get(five_tuple) is None else None
                with gevent.Timeout(idle, False):
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if not opened:
                        starts = stream_starts_with_stun(buf)
                        if starts is None:
                            continue  # fewer than 8 bytes so far
                        if not starts:
                            return  # not TURN: hang up now, not at the idle timeout
                        opened = True
                    while True:
                        try:
                            size = next_frame_length(buf)
                        except StunError:
                            return  # not TURN: hang up
                        if size is None or size > len(buf):
                            break
                        frame = bytes(buf[:size])
                        del buf[:size]
                        try:
                            self.client_input(frame, link)
                        except Exception:
                            log.exception(
                                "%s %s: dropping a message",
                                transport,
                                client,
                                extra={"client": client[0], "transport": transport},
                            )
                    if len(buf) > MAX_STREAM_BUFFER:
                        return
                    continue
                return  # idle timeout
        except OSError:
            return
        finally:
            # RFC 8656 §5: over TCP/TLS the allocation lives as long as the connection.
            allocation = self.core.allocations.get(five_tuple)
            if allocation is not None:
                self.core.allocations.remove(allocation)
            try:
                sock.close()
            except OSError:
                pass


# IP_PKTINFO: Python names it on few platforms; Linux's value is 8 (<linux/in.h>). Where the
# platform has no such option (macOS, Windows), a wildcard listener cannot tell which local
# address a datagram was sent to, and relays fall back to one address (see addressing.py).
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", None)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", None)
_ANC_SPACE = socket.CMSG_SPACE(20) if hasattr(socket, "CMSG_SPACE") else 0
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr (ip(7) "IP_PKTINFO")
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex (RFC 3542 §6.1)


def enable_pktinfo(sock: Any, family: int) -> bool:
    """Ask the kernel for each datagram's destination address; False where it cannot."""
    if not _ANC_SPACE or not hasattr(sock, "recvmsg"):
        return False
    try:
        if family == socket.AF_INET6 and _IPV6_RECVPKTINFO is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            if _IP_PKTINFO is not None:
                try:  # a dual-stack socket's IPv4 datagrams
                    sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
                except OSError:
                    pass
            return True
        if family == socket.AF_INET and _IP_PKTINFO is not None:
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            return True
    except OSError:
        pass
    return False


def pktinfo_destination(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, Any] | None:
    """The destination address of a datagram from ``recvmsg``'s ancillary data, and the
    control message that makes a reply leave from it; None if there is none."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            _ifindex, _spec, addr = _IN_PKTINFO.unpack_from(data)
            ip = socket.inet_ntop(socket.AF_INET, addr)
            return ip, [(socket.IPPROTO_IP, _IP_PKTINFO, _IN_PKTINFO.pack(0, addr, bytes(4)))]
        if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(data) >= 20:
            addr, _ifindex = _IN6_PKTINFO.unpack_from(data)
            ip = canonical_ip(socket.inet_ntop(socket.AF_INET6, addr))
            # IPv4-mapped too (a dual-stack socket's IPv4 client): Linux sends the IPv4 reply
            # from the mapped address; without it the kernel picks its own source, which a
            # multi-homed host gets wrong and the client drops.
            return ip, [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, _IN6_PKTINFO.pack(addr, 0))]
    return None


class _UdpListener(DatagramServer):  # type: ignore[misc]
    """The UDP listener: handles datagrams inline (no greenlet per datagram). Bound to a
    wildcard address, it reads each datagram's destination (IP_PKTINFO) so that the
    five-tuple, the relay address and the reply's source are the address the client used."""

    def __init__(self, turn: TurnServer, sock: gevent.socket.socket) -> None:
        super().__init__(sock, spawn=None)
        self.turn = turn
        self._links: dict[Any, ClientLink] = {}
        self.pktinfo = False

    def init_socket(self) -> None:
        super().init_socket()
        if is_wildcard(self.address[0]):
            self.pktinfo = enable_pktinfo(self._socket, self._socket.family)

    def do_read(self) -> tuple[bytes, Any, Any] | None:
        try:
            if self.pktinfo:
                data, ancdata, _flags, address = self._socket.recvmsg(MAX_DATAGRAM, _ANC_SPACE)
                # The raw control message keys the client's link: no parsing per datagram.
                return data, address, (ancdata[0] if ancdata else None)
            data, address = self._socket.recvfrom(MAX_DATAGRAM)
            return data, address, None
        except OSError as err:
            if err.args[0] in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            if transient(err):
                return None  # an ICMP error for an earlier send; keep reading
            raise

    def handle(self, data: bytes, address: Any, local: Any = None) -> None:
        try:
            key = (address, local)
            link = self._links.get(key)
            if link is None:
                link = self._new_link(address, local)
                self.turn.client_input(data, link)
                # Kept only while its 5-tuple holds an allocation: a probe, a Binding request
                # or a refused Allocate leaves nothing behind (the sweep drops the rest).
                if link.five_tuple in self.turn.core.allocations.by_five_tuple:
                    self._links[key] = link
                return
            self.turn.client_input(data, link)
        except Exception:
            log.exception(
                "udp %s: dropping a datagram",
                address,
                extra={"client": address[0], "transport": "udp"},
            )

    def prune(self) -> int:
        """Forget the links whose allocation has ended (expired, deleted); returns how many."""
        live = self.turn.core.allocations.by_five_tuple
        gone = [key for key, link in self._links.items() if link.five_tuple not in live]
        for key in gone:
            del self._links[key]
        return len(gone)

    def _new_link(self, address: Any, local: Any) -> ClientLink:
        # A dual-stack socket sees an IPv4 client as ::ffff:a.b.c.d: the five-tuple (and so
        # XOR-MAPPED-ADDRESS, quotas, logs) has the IPv4 address, the socket the mapped one.
        client: Address = (canonical_ip(address[0]), address[1])
        server_ip, cmsg = self.address[0], None
        found = pktinfo_destination([local]) if local is not None else None
        if found is not None:
            server_ip, cmsg = found
        five_tuple = FiveTuple("udp", client, (server_ip, self.address[1]))
        return ClientLink(
            five_tuple,
            self._socket,
            stream=False,
            cmsg=cmsg,
            send_to=address,
            counts=self.turn.relayed["udp"],
        )


@dataclass
class TurnSockets:
    """TURN's listening sockets: per listen address a UDP and a TCP socket on the same port,
    and the TLS ones (none when TLS is off)."""

    udp: list[gevent.socket.socket]
    tcp: list[gevent.socket.socket]
    tls: list[gevent.socket.socket]

    def all(self) -> list[gevent.socket.socket]:
        """Every socket, UDP first."""
        return [*self.udp, *self.tcp, *self.tls]

    def families(self) -> set[int]:
        """The address families clients can reach these sockets over."""
        families = set()
        for sock in self.udp:
            if sock.family == socket.AF_INET6:
                families.add(6)
                if not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                    families.add(4)  # a dual-stack socket takes IPv4 too
            else:
                families.add(4)
        return families


def bind_turn_sockets(bind: str, port: int, tls_port: int, reuse_port: bool = False) -> TurnSockets:
    """Bind TURN's sockets for ``[turn] bind`` (see :func:`listen_hosts`): UDP and TCP on
    ``port``, TLS on ``tls_port`` (0 = none); a port 0 becomes one free port for all of them.
    ``reuse_port``: SO_REUSEPORT, for the parent of several workers."""
    hosts = listen_hosts(bind)
    # Port 0: the UDP port the kernel picks may be taken for TCP or the other family;
    # pick again (bounded).
    for attempt in range(20 if port == 0 else 1):
        udp: list[gevent.socket.socket] = []
        tcp: list[gevent.socket.socket] = []
        try:
            actual = port
            for host, v6only in hosts:
                udp.append(bound_socket(socket.SOCK_DGRAM, host, actual, v6only, reuse_port))
                actual = udp[0].getsockname()[1]
                tcp.append(bound_socket(socket.SOCK_STREAM, host, actual, v6only, reuse_port))
            break
        except OSError:
            for sock in udp + tcp:
                sock.close()
            if attempt == 19 or port != 0:
                raise
    tls: list[gevent.socket.socket] = []
    if tls_port:
        tls_actual = tls_port if tls_port > 0 else 0
        try:
            for host, v6only in hosts:
                tls.append(bound_socket(socket.SOCK_STREAM, host, tls_actual, v6only, reuse_port))
                tls_actual = tls[0].getsockname()[1]
        except OSError:
            for sock in udp + tcp + tls:
                sock.close()
            raise
    return TurnSockets(udp, tcp, tls)


def dual_stack_supported() -> bool:
    """Whether one IPv6 socket can take IPv4 too (IPV6_V6ONLY off): Linux, macOS, Windows
    do; a host without IPv6 or a BSD with the option locked on does not."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", 0))
    except (OSError, AttributeError):
        return False
    return True


def ipv6_available() -> bool:
    """Whether this host can open IPv6 sockets at all."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def listen_hosts(bind: str) -> list[tuple[str, bool | None]]:
    """The sockets ``[turn] bind`` needs, as ``(host, v6only)``: ``::`` is one dual-stack
    socket (v6only False) where the OS allows it, else ``::`` IPv6-only beside
    ``0.0.0.0``, else (no IPv6 here) ``0.0.0.0`` alone; one address is one socket (None:
    the OS default, which no IPv4 socket has)."""
    if bind != "::":
        return [(bind or "0.0.0.0", True if ":" in bind else None)]
    if dual_stack_supported():
        return [("::", False)]
    if ipv6_available():
        return [("::", True), ("0.0.0.0", None)]
    log.warning("turn: this host has no IPv6: TURN listens on IPv4 (0.0.0.0) only")
    return [("0.0.0.0", None)]


# The UDP listener's receive and send buffers: every client's packets wait in the one socket
# while the process is busy elsewhere (a TLS handshake, an Allocate's HMAC, the garbage
# collector). Linux's default (212 KB, about 200 small datagrams) overflows within a few ms
# of a saturated relay; coturn asks for more as well. The kernel caps the size at
# net.core.rmem_max / wmem_max.
UDP_BUFFER = 4 * 1024 * 1024
# Below this effective size a start-up line says how to raise the cap (Linux reports twice
# what was granted, for its own bookkeeping).
UDP_BUFFER_NOTE = 1024 * 1024


def grow_udp_buffers(sock: socket.socket, size: int = UDP_BUFFER) -> None:
    """Ask for ``size`` bytes of receive and send buffer on UDP socket ``sock``."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass  # the kernel keeps its default: the listener works, only with less slack


def buffer_note(sock: socket.socket) -> str | None:
    """The start-up line for UDP socket ``sock`` if its receive buffer is small (capped by
    the kernel below what :func:`grow_udp_buffers` asked for)."""
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    if granted >= UDP_BUFFER_NOTE:
        return None
    return (
        f"TURN UDP receive buffer is {granted // 1024} KB (capped by net.core.rmem_max):"
        " bursts at a busy relay may drop packets; raise the cap with"
        f" 'sysctl -w net.core.rmem_max={UDP_BUFFER} net.core.wmem_max={UDP_BUFFER}'"
    )


def bound_socket(
    kind: int, host: str, port: int, v6only: bool | None, reuse_port: bool = False
) -> gevent.socket.socket:
    """A UDP or listening TCP socket bound to ``(host, port)``; for IPv6, IPV6_V6ONLY set to
    ``v6only`` (a dual-stack socket sees IPv4 clients as ``::ffff:a.b.c.d``). ``reuse_port``:
    SO_REUSEPORT, so that every worker binds the same port and Linux spreads connections and
    datagrams over them (by a hash of the 4-tuple: a client stays on one worker)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = gevent.socket.socket(family, kind)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
    except OSError:
        sock.close()
        raise
    if kind == socket.SOCK_DGRAM:
        grow_udp_buffers(sock)
    return sock


# Where a UDP socket is "connected" to find the source address the kernel would use toward
# the internet: documentation addresses (RFC 5737, RFC 3849). connect() on UDP sends nothing.
_ROUTE_PROBES: dict[int, str] = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


def _routed_source(family: int) -> list[str]:
    """The local address of ``family`` the default route would send from, if there is one."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((_ROUTE_PROBES[family], 9))
            return [str(probe.getsockname()[0])]
    except OSError:
        return []


def _interface_addresses(family: int) -> list[str]:
    """The addresses of ``family`` on this host's interfaces (Linux; [] elsewhere)."""
    found: list[str] = []
    if family == socket.AF_INET6:
        try:
            # /proc/net/if_inet6: address (32 hex digits), ifindex, prefix, scope, flags, name.
            with open("/proc/net/if_inet6") as table:
                for line in table:
                    digits = line.split()[0]
                    found.append(str(ipaddress.IPv6Address(bytes.fromhex(digits))))
        except (OSError, ValueError, IndexError):
            pass
        return found
    try:
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            for _index, name in socket.if_nameindex():
                try:
                    request = struct.pack("256s", name.encode()[:15])
                    answer = fcntl.ioctl(probe.fileno(), 0x8915, request)  # SIOCGIFADDR
                except OSError:
                    continue  # no IPv4 address on this interface
                found.append(socket.inet_ntoa(answer[20:24]))
    except (ImportError, OSError, AttributeError):
        pass
    return found


def _hostname_addresses(family: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family)
    except OSError:
        return []
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def _guess_address(family: int) -> str:
    """A usable address of this host of ``family``: the default route's source, else an
    interface's, else the host name's; public addresses before private ones, never loopback,
    link-local or unspecified. "" when there is none. No packet is sent."""
    usable: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for source in (_routed_source, _interface_addresses, _hostname_addresses):
        for text in source(family):
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped
            if address.is_loopback or address.is_link_local or address.is_unspecified or mapped:
                continue
            if address not in usable:
                usable.append(address)
    usable.sort(key=lambda address: not address.is_global)  # stable: source order kept
    return str(usable[0]) if usable else ""


def guess_public_ipv4() -> str:
    """A non-loopback IPv4 address of this host (the relay address of last resort: where the
    platform cannot say which address a client reached, and for the IPv4 relay of a client
    that came over IPv6), else 127.0.0.1. No packet is sent."""
    return _guess_address(socket.AF_INET) or "127.0.0.1"


def guess_public_ipv6() -> str:
    """A global IPv6 address of this host (for an IPv6 relay of a client that came over
    IPv4, when ``[turn] public_ip`` has none), else "": no such relays. No packet is sent."""
    return _guess_address(socket.AF_INET6)


def is_local_address(ip: str) -> bool:
    """Whether this host owns ``ip`` (a socket can be bound to it). No packet is sent."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


def relay_addressing(public_ip: str, bind: str) -> RelayAddressing:
    """The relay address rules for ``[turn] public_ip`` (one address of each family at most,
    comma-separated) and ``[turn] bind``; looks at the host's addresses once."""
    publics = [p.strip() for p in public_ip.split(",") if p.strip()]
    v4 = next((p for p in publics if ":" not in p), "")
    v6 = next((p for p in publics if ":" in p), "")
    bind_v4 = bind if bind and ":" not in bind else "0.0.0.0"
    bind_v6 = bind if ":" in bind else "::"
    return RelayAddressing(
        bind_v4=bind_v4,
        bind_v6=bind_v6,
        public_v4=v4,
        public_v6=v6,
        public_v4_local=bool(v4) and is_local_address(v4),
        public_v6_local=bool(v6) and is_local_address(v6),
        fallback_v4=guess_public_ipv4() if is_wildcard(bind_v4) else bind_v4,
        fallback_v6=guess_public_ipv6() if is_wildcard(bind_v6) else bind_v6,
    )


class _TlsServer(HandshakeGuard, StreamServer):  # type: ignore[misc]
    """TURN over TLS (RFC 8656 §3.1): a stream listener whose handshakes have a deadline."""
