"""The gevent shell around the hub: one reader and one writer greenlet per WebSocket.

It only moves bytes: frames are parsed by :mod:`flaskrtc.signal.wsframe`, messages are
routed by :class:`flaskrtc.signal.hub.Hub`. What it adds is what gevent-websocket lacks:
a frame-size cap (close 1009), a single writer per connection (no two greenlets ever send
on one socket), ``{}`` keepalive frames, close frames answered, and a dead peer removed
exactly once (only the reader greenlet unregisters it, in its ``finally``).
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, BinaryIO

import gevent
import gevent.event
from gevent.pywsgi import WSGIHandler
from geventwebsocket.handler import WebSocketHandler

from flaskrtc.signal.hub import Action, Broadcast, Close, ConnId, Hub, Send
from flaskrtc.signal.wsframe import (
    OP_PONG,
    CloseReceived,
    FrameDecoder,
    FrameError,
    Message,
    Ping,
    accept_key,
    encode_close,
    encode_frame,
    text_frame,
    valid_client_key,
)

log = logging.getLogger("flaskrtc.signal")

KEEPALIVE_FRAME = text_frame("{}")
READ_SIZE = 65536
# How long a closing handshake may take before the socket is simply closed.
CLOSE_TIMEOUT = 2.0
# A connection whose unsent output exceeds this (or 4 messages of the maximum size, if
# more) is too slow to keep: it would hold the memory of every message meant for it.
MAX_QUEUED_BYTES = 32 * 1024 * 1024
# A single sendall that cannot finish in this time means the peer stopped reading.
SEND_TIMEOUT = 30.0

TRANSPORT_KEY = "flaskrtc.transport"
WS_PATH = "/ws"


class Transport:
    """The upgraded socket handed from the handler to the signaling loop."""

    def __init__(self, sock: socket.socket, rfile: BinaryIO, address: Any) -> None:
        self.sock = sock
        self.rfile = rfile
        self.address = address


class SignalingHandler(WebSocketHandler):  # type: ignore[misc]
    """gevent-websocket's handler with a handshake the native apps pass.

    The flutter-webrtc apps send an 8-byte, lower-cased ``Sec-WebSocket-Key`` and no
    ``Origin``; gevent-websocket 0.10.1 answers ``400 Invalid key``. The handshake here
    accepts any base64-looking key (RFC 6455 §4.2.1 asks for 16 bytes, but nothing depends
    on its length) and hands the raw socket to the signaling loop instead of
    gevent-websocket's WebSocket object.
    """

    def upgrade_connection(self) -> list[bytes] | None:
        if self.environ.get("PATH_INFO") != WS_PATH:
            # gevent-websocket would upgrade any path; only /ws speaks the protocol.
            self.start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"WebSocket endpoint is /ws"]
        version = self.environ.get("HTTP_SEC_WEBSOCKET_VERSION")
        if version != "13":
            self.start_response("426 Upgrade Required", [("Sec-WebSocket-Version", "13")])
            return [b"Unsupported WebSocket version"]
        key = self.environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        if not valid_client_key(key):
            self.start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"Missing or malformed Sec-WebSocket-Key"]
        self.websocket = Transport(self.socket, self.rfile, self.client_address)
        self.environ[TRANSPORT_KEY] = self.websocket
        self.environ["wsgi.websocket_version"] = version
        # No subprotocol and no extension is negotiated (docs/protocol.md §1).
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
        ]
        self.start_response("101 Switching Protocols", headers)
        return None

    def run_websocket(self) -> None:
        try:
            list(self.application(self.environ, lambda *args: []))
        finally:
            self.environ.pop(TRANSPORT_KEY, None)
            del self.websocket

    def log_request(self) -> None:
        if "101" not in str(self.status):
            WSGIHandler.log_request(self)

    def format_request(self) -> str:
        # pywsgi's line repeats the time the log line already has.
        length = self.response_length or "-"
        delta = (self.time_finish - self.time_start) if self.time_finish else 0.0
        client = self.client_address[0] if isinstance(self.client_address, tuple) else "-"
        status = self.status or "000"
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        status = status.split()[0]
        return f'{client} "{self.requestline}" {status} {length} {delta:.4f}s'


class Connection:
    """One WebSocket peer: the reader runs in the request greenlet, the writer in its own."""

    def __init__(self, server: SignalServer, conn_id: int, transport: Transport) -> None:
        self.server = server
        self.id = conn_id
        self.transport = transport
        self.address = transport.address
        self._out: deque[bytes | list[bytes]] = deque()
        self._queued = 0
        self._wake = gevent.event.Event()
        self._peers_slot: list[bytes] | None = None
        self._closing = False  # a close frame is queued; nothing else may follow it
        self._done = gevent.event.Event()  # the writer has finished
        self.writer: gevent.Greenlet[Any] | None = None

    # -- output (any greenlet) -----------------------------------------------------------

    def enqueue(self, frame: bytes) -> None:
        """Queue one encoded frame for the writer."""
        if self._closing:
            return
        self._out.append(frame)
        self._account(len(frame))

    def enqueue_peers(self, frame: bytes) -> None:
        """Queue a peers list, dropping an older one that is still waiting to be written."""
        if self._closing:
            return
        if self._peers_slot is not None:
            self._queued -= len(self._peers_slot[0])
            self._peers_slot[0] = b""
        self._peers_slot = [frame]
        self._out.append(self._peers_slot)
        self._account(len(frame))

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: queue a close frame; the writer ends after it."""
        if self._closing:
            return
        self._out.append(encode_close(code, reason))
        self._closing = True
        self._wake.set()

    def _account(self, size: int) -> None:
        self._queued += size
        if self._queued > self.server.max_queued:
            # A client this far behind is not reading: no close frame would reach it either,
            # so drop the TCP connection; the reader then unregisters it as for any loss.
            log.warning("%s: %d bytes unsent, dropping slow connection", self, self._queued)
            self._out.clear()
            self._queued = 0
            self._closing = True
            self._shutdown()
        self._wake.set()

    # -- writer greenlet -----------------------------------------------------------------

    def write_loop(self) -> None:
        """Write queued frames, a ``{}`` every keepalive period, until the close frame."""
        sock = self.transport.sock
        keepalive = self.server.keepalive
        next_ping = time.monotonic() + keepalive
        try:
            while True:
                if not self._out:
                    self._wake.clear()
                    if not self._wake.wait(max(0.0, next_ping - time.monotonic())):
                        self._send(sock, KEEPALIVE_FRAME)
                        next_ping = time.monotonic() + keepalive
                        continue
                batch: list[bytes] = []
                while self._out:
                    item = self._out.popleft()
                    if isinstance(item, list):
                        if item is self._peers_slot:
                            self._peers_slot = None
                        item = item[0]
                    batch.append(item)
                self._queued = 0
                # One sendall per batch: fewer syscalls under load, same order on the wire.
                self._send(sock, b"".join(batch))
                if self._closing and not self._out:
                    # Our close frame is out; a peer that never answers it is cut off.
                    gevent.spawn_later(CLOSE_TIMEOUT, self._shutdown)
                    return
        except (OSError, gevent.Timeout) as exc:
            log.debug("%s: send failed (%s)", self, exc)
            self._closing = True
            self._shutdown()
        finally:
            self._done.set()

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        if data:
            with gevent.Timeout(SEND_TIMEOUT):
                sock.sendall(data)

    def _shutdown(self) -> None:
        # Wakes a reader blocked in recv (it sees EOF) so that it cleans up.
        try:
            self.transport.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- reader (the request greenlet) ---------------------------------------------------

    def run(self) -> None:
        """Read frames until the connection ends, then unregister (exactly once)."""
        decoder = FrameDecoder(self.server.max_message_size)
        read = self.transport.rfile.read1  # type: ignore[attr-defined]
        self.writer = gevent.spawn(self.write_loop)
        log.info("%s: connected", self)
        reason = "closed by peer"
        try:
            while True:
                try:
                    data = read(READ_SIZE)
                except OSError as exc:
                    reason = f"connection lost ({exc.__class__.__name__})"
                    break
                if not data:
                    reason = "connection lost" if not self._closing else "closed"
                    break
                try:
                    events = decoder.feed(data)
                except FrameError as err:
                    reason = f"protocol error {err.code}: {err.reason}"
                    self.close(err.code, err.reason)
                    break
                if self._handle(events):
                    break
            # Let the writer flush a close frame before the socket goes away.
            self._done.wait(CLOSE_TIMEOUT)
        finally:
            self.server.drop(self)
            if self.writer is not None:
                self.writer.kill(block=False)
            self._shutdown()
            log.info("%s: disconnected, %s", self, reason)

    def _handle(self, events: Iterable[object]) -> bool:
        """Carry out decoded events; True when the connection is to end."""
        for event in events:
            if isinstance(event, Message):
                # Once closing (taken over, shutting down) nothing more is acted on.
                if not self._closing:
                    self.server.receive(self, event.data)
            elif isinstance(event, Ping):
                self.enqueue(encode_frame(OP_PONG, event.payload))
            elif isinstance(event, CloseReceived):
                # Answer the close (RFC 6455 §5.5.1) with the same code, then end.
                self.close(event.code if event.code is not None else 1000)
                return True
        return False

    def __str__(self) -> str:
        peer = self.server.hub.peer_of(self.id)
        host = self.address[0] if isinstance(self.address, tuple) else self.address
        return f"ws#{self.id} {host}" + (f" peer {peer}" if peer else "")


class SignalServer:
    """Owns the hub and every live connection; turns hub actions into queued frames."""

    def __init__(self, *, keepalive: float, max_message_size: int, hub: Hub | None = None):
        self.hub = hub or Hub()
        self.keepalive = keepalive
        self.max_message_size = max_message_size
        self.max_queued = max(MAX_QUEUED_BYTES, 4 * max_message_size)
        self.conns: dict[ConnId, Connection] = {}
        self._next_id = 0
        self._tick = gevent.event.Event()
        self._emptied = gevent.event.Event()  # set when the last connection has ended
        self._ticker: gevent.Greenlet[Any] | None = None
        self.stopping = False

    def serve(self, transport: Transport) -> None:
        """Run one connection to its end (called in the request greenlet)."""
        self._next_id += 1
        conn = Connection(self, self._next_id, transport)
        if self.stopping:
            conn.close(1001, "server shutting down")
        self.conns[conn.id] = conn
        if self._ticker is None:
            self._ticker = gevent.spawn(self._tick_loop)
        conn.run()

    def receive(self, conn: Connection, payload: bytes) -> None:
        """A message from ``conn``."""
        before = self.hub.peer_of(conn.id)
        self.apply(self.hub.receive(conn.id, payload, time.monotonic()))
        after = self.hub.peer_of(conn.id)
        if after != before and after is not None:
            log.info("%s: registered", conn)

    def drop(self, conn: Connection) -> None:
        """``conn`` has ended: forget it and tell the hub (once)."""
        if self.conns.pop(conn.id, None) is None:
            return
        if not self.conns:
            self._emptied.set()
        self.apply(self.hub.disconnect(conn.id, time.monotonic()))

    def apply(self, actions: list[Action]) -> None:
        """Carry out hub actions: queue frames, start closes."""
        for action in actions:
            if isinstance(action, Send):
                conn = self.conns.get(action.conn)
                if conn is not None:
                    conn.enqueue(text_frame(action.text))
            elif isinstance(action, Broadcast):
                frame = text_frame(action.text)  # encoded once for every receiver
                for conn_id in action.conns:
                    conn = self.conns.get(conn_id)
                    if conn is None:
                        continue
                    if action.peers:
                        conn.enqueue_peers(frame)
                    else:
                        conn.enqueue(frame)
            elif isinstance(action, Close):
                conn = self.conns.get(action.conn)
                if conn is not None:
                    log.info("%s: closing (%s)", conn, action.reason)
                    conn.close(action.code, action.reason)
        if self.hub.next_deadline() is not None:
            self._tick.set()

    def _tick_loop(self) -> None:
        # Sends coalesced peers lists when the hub says they are due.
        while True:
            deadline = self.hub.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._tick.wait(timeout)
            self._tick.clear()
            self.apply(self.hub.poll(time.monotonic()))

    def shutdown(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every connection with 1001 and wait (bounded) for them to end."""
        self.stopping = True
        conns = list(self.conns.values())
        for conn in conns:
            conn.close(1001, "server shutting down")
        if self.conns:
            self._emptied.clear()
            self._emptied.wait(timeout)
        for conn in list(self.conns.values()):
            conn._shutdown()
        if self._ticker is not None:
            self._ticker.kill(block=False)
