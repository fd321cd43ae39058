"""The gevent shell around the hub: one reader and one writer greenlet per WebSocket.

It only moves bytes: frames are parsed by :mod:`flaskrtc.signal.wsframe`, messages are
routed by :class:`flaskrtc.signal.hub.Hub`. What it adds is what gevent-websocket lacks:
a frame-size cap (close 1009) and a frame-rate cap (close 1008), a single writer per
connection (no two greenlets ever send on one socket), ``{}`` keepalive frames with a PING,
a client silent for ``idle_timeout`` dropped, close frames answered with a lingering close
(the client's unread input is drained, so it gets our close frame instead of a reset), and a
dead peer removed exactly once (only the reader greenlet unregisters it, in its ``finally``).

The HTTP side of the handler adds a deadline for the request head and a per-IP rate limit
on the upgrade (429), and ends the HTTP connection with the WebSocket session.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import gevent
import gevent.event
import gevent.socket
import gevent.ssl
from gevent.pywsgi import WSGIHandler
from geventwebsocket.handler import WebSocketHandler

from flaskrtc.forwarded import client_address
from flaskrtc.ratelimit import ConnectionLimits, LogThrottle, TokenBucket, retry_after_header
from flaskrtc.signal.hub import Action, Broadcast, Close, ConnId, Hub, Send
from flaskrtc.signal.protocol import message
from flaskrtc.signal.wsframe import (
    OP_PING,
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

# The "{}" every client gets each keepalive period, and a PING (RFC 6455 §5.5.2) with it:
# browsers and the apps answer pings by themselves, so even a client that never sends a
# message shows it is alive, and one that has vanished is noticed (idle_timeout).
KEEPALIVE_FRAME = text_frame("{}")
PING_FRAME = encode_frame(OP_PING, b"")
READ_SIZE = 65536
# How long a closing handshake may take before the socket is simply closed; also how long
# the client's input is read and discarded after our close frame (lingering close).
CLOSE_TIMEOUT = 2.0
# Frames per second a connection may send, and the burst it may save up: far above what a
# client needs (one frame per message, a pong per ping), low enough that a flood of tiny
# frames ends with a 1008 close instead of eating the CPU.
FRAME_RATE = 1000.0
FRAME_BURST = 2000.0
# Close code for a refused token (private-use range, RFC 6455 §7.4.2; 401 as in HTTP).
CLOSE_UNAUTHORIZED = 4401
# The request line and headers must be complete this many seconds after the connection
# (or the previous response), however slowly they trickle in.
HEAD_TIMEOUT = 10.0
# A connection whose unsent output exceeds this (or 4 messages of the maximum size, if
# more) is too slow to keep: it would hold the memory of every message meant for it.
MAX_QUEUED_BYTES = 32 * 1024 * 1024
# A single sendall that cannot finish in this time means the peer stopped reading.
SEND_TIMEOUT = 30.0
# A batch of writes (a broadcast) lets the event loop run after this many seconds of work,
# for YIELD_SLEEP seconds (a timer, so that the loop polls the sockets in between).
FLUSH_SLICE = 0.002
YIELD_SLEEP = 0.00001

TRANSPORT_KEY = "flaskrtc.transport"
WS_PATH = "/ws"

_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s]*")
# One line per 10 s at most for slow request heads, however many clients trickle.
_slow_head_log = LogThrottle(10.0)
# ... and for WebSocket sessions refused by the per-client cap behind a trusted proxy.
_ws_cap_log = LogThrottle(10.0)


def _shutdown_socket(sock: socket.socket, how: int) -> None:
    """``shutdown(how)`` on the TCP socket itself, leaving a TLS layer on it intact.

    ``SSLSocket.shutdown`` would also drop the TLS object, and a greenlet blocked reading
    through it would then fail with ValueError instead of seeing the end of the stream.
    """
    base = gevent.socket.socket
    try:
        if isinstance(sock, base):
            base.shutdown(sock, how)
        else:
            sock.shutdown(how)
    except OSError:
        pass  # already closed or reset: nothing left to wake


def _no_delay(sock: Any) -> None:
    """TCP_NODELAY on ``sock``: every write is a whole batch of frames, so Nagle's algorithm
    only holds a small frame (the 101 after TLS 1.3's session tickets, a keepalive echo
    after a big peers list) until the client's delayed ACK, up to 40 ms later."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not TCP (a socket pair in tests, a Unix socket): nothing to turn off


def unmapped(address: Any) -> Any:
    """``address`` with an IPv4-mapped IPv6 host (``::ffff:a.b.c.d``) as the IPv4 one."""
    if isinstance(address, tuple) and str(address[0]).lower().startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(address[0]).ipv4_mapped
        except ValueError:
            return address
        if mapped is not None:
            return (str(mapped), address[1])
    return address


class Transport:
    """The upgraded socket handed from the handler to the signaling loop; ``address`` is
    the client's (from a trusted proxy's headers, else the socket's)."""

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

    # Set by flaskrtc.server on the WSGI server: ``upgrade_gate(ip)`` is 0 to let an upgrade
    # through, else the seconds the client must wait (per-IP rate limit, answered 429).
    _head_timer: gevent.Timeout | None = None
    _head_started = False
    # The current request's client address from a trusted proxy's Forwarded or
    # X-Forwarded-For header; None: the socket's. Per request, not per connection: a proxy
    # may send requests of different clients over one kept-alive connection.
    _forwarded_ip: str | None = None
    _ws_slot: str | None = None  # the forwarded client holding a WebSocket slot (ws_limits)

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        # A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d; logs, rate limits
        # and /api/turn's choice of address family want the IPv4 address.
        super().__init__(sock, unmapped(address), server, rfile)
        _no_delay(sock)

    def upgrade_connection(self) -> list[bytes] | None:
        if self.environ.get("PATH_INFO") != WS_PATH:
            # gevent-websocket would upgrade any path; only /ws speaks the protocol.
            self.start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"WebSocket endpoint is /ws"]
        gate: Callable[[str], float] | None = getattr(self.server, "upgrade_gate", None)
        if gate is not None:
            wait = gate(self._client_ip())
            if wait > 0:
                self.start_response(
                    "429 Too Many Requests",
                    [("Retry-After", retry_after_header(wait)), ("Content-Type", "text/plain")],
                )
                return [b"Too many connection attempts from your address: retry later"]
        version = self.environ.get("HTTP_SEC_WEBSOCKET_VERSION")
        if version != "13":
            self.start_response("426 Upgrade Required", [("Sec-WebSocket-Version", "13")])
            return [b"Unsupported WebSocket version"]
        key = self.environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        if not valid_client_key(key):
            self.start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"Missing or malformed Sec-WebSocket-Key"]
        # Last, so that only a session about to start takes a slot (handle_one_request gives
        # it back, whichever way the request ends).
        if not self._take_ws_slot():
            self.start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"Too many connections from your address"]
        address = (self._forwarded_ip, 0) if self._forwarded_ip else self.client_address
        self.websocket = Transport(self.socket, self.rfile, address)
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
        # The connection never goes back to HTTP: without this, pywsgi's keep-alive loop
        # would parse the client's last bytes (its close frame, in TLS records) as a new
        # request once the session is over.
        self.close_connection = True
        try:
            list(self.application(self.environ, lambda *args: []))
        finally:
            self.environ.pop(TRANSPORT_KEY, None)
            del self.websocket

    # -- the per-client WebSocket cap behind a trusted proxy -----------------------------

    def _take_ws_slot(self) -> bool:
        """Count a WebSocket session of a forwarded client against ``max_connections_per_ip``;
        False when that client has no slot left.

        The cap at accept time (flaskrtc.server.ConnectionCap) sees only the proxy, before any
        header is read, and does not apply it per IP to a trusted proxy: every client comes
        from there. The sessions are what a client holds for long, so they are counted here,
        per forwarded address, once the request is parsed.
        """
        limits: ConnectionLimits | None = getattr(self.server, "ws_limits", None)
        ip = self._forwarded_ip
        if limits is None or ip is None:
            return True
        refusal = limits.admit(ip)
        if refusal is None:
            self._ws_slot = ip
            return True
        quiet = _ws_cap_log.ready(time.monotonic())
        if quiet is not None:
            more = f"; {quiet} more refused since the last such line" if quiet else ""
            log.warning(
                "%s: /ws refused (503): %s%s",
                ip,
                refusal,
                more,
                extra={"client": ip, "proxy": self._socket_ip()},
            )
        return False

    def _release_ws_slot(self) -> None:
        limits: ConnectionLimits | None = getattr(self.server, "ws_limits", None)
        if limits is not None and self._ws_slot is not None:
            limits.release(self._ws_slot)
        self._ws_slot = None

    # -- the request head deadline -------------------------------------------------------

    def handle_one_request(self) -> Any:
        """pywsgi's request handling, with :data:`HEAD_TIMEOUT` for the whole request head."""
        seconds = getattr(self.server, "head_timeout", HEAD_TIMEOUT)
        self._forwarded_ip = None  # until this request's headers say otherwise
        timer = gevent.Timeout(seconds)
        self._head_timer, self._head_started = timer, False
        timer.start()
        try:
            return super().handle_one_request()
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            # A keep-alive connection that sends no further request simply ends; a head that
            # started but did not finish is a slow (or slowloris) client, worth a line.
            if self._head_started:
                quiet = _slow_head_log.ready(time.monotonic())
                if quiet is not None:
                    more = f" ({quiet} more since the last such line)" if quiet else ""
                    log.info(
                        "%s: request head not complete in %g s, closed%s",
                        self._client_ip(),
                        seconds,
                        more,
                    )
            self.close_connection = True
            return None
        finally:
            timer.close()
            self._release_ws_slot()  # the WebSocket session (if any) has ended

    def read_requestline(self) -> str:
        # peek waits for the first byte of a request: from then on the head has started.
        self.rfile.peek(1)
        self._head_started = True
        line: str = super().read_requestline()
        return line

    def get_environ(self) -> dict[str, Any]:
        # Called once the head is read: the body, the application and a WebSocket session
        # take the time they need.
        if self._head_timer is not None:
            self._head_timer.close()
        environ: dict[str, Any] = super().get_environ()
        trusted = getattr(self.server, "trusted_proxies", None)
        if trusted:
            forwarded = client_address(
                self._socket_ip(),
                environ.get("HTTP_FORWARDED"),
                environ.get("HTTP_X_FORWARDED_FOR"),
                trusted,
            )
            if forwarded is not None:
                # Flask's request.remote_addr, so /api/turn's rate gate, logs and choice of
                # address family see the client, not the proxy.
                environ["flaskrtc.proxy"] = environ.get("REMOTE_ADDR")
                environ["REMOTE_ADDR"] = forwarded
                self._forwarded_ip = forwarded
        return environ

    def _socket_ip(self) -> str:
        """The TCP peer's address (a proxy, when there is one)."""
        address = self.client_address
        return str(address[0]) if isinstance(address, tuple) else str(address)

    def _client_ip(self) -> str:
        """The client of the current request: a trusted proxy's forwarded address, else
        the TCP peer (also before the request head is read)."""
        return self._forwarded_ip or self._socket_ip()

    def log_request(self) -> None:
        if "101" in str(self.status):
            return
        writer = self.server.log
        logger = getattr(writer, "logger", None)
        if isinstance(logger, logging.Logger):
            # Through logging itself (flaskrtc.server's writer), with the fields for JSON.
            line = self.format_request()
            status = line.split('" ', 1)[-1].split(" ", 1)[0]
            fields: dict[str, Any] = {"client": self._client_ip()}
            if status.isdigit():
                fields["status"] = int(status)
            logger.log(writer.level, "%s", line, extra=fields)
        else:
            WSGIHandler.log_request(self)

    def format_request(self) -> str:
        # pywsgi's line repeats the time the log line already has.
        length = self.response_length or "-"
        delta = (self.time_finish - self.time_start) if self.time_finish else 0.0
        client = self._client_ip() if isinstance(self.client_address, tuple) else "-"
        status = self.status or "000"
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        status = status.split()[0]
        # A token in the query is a credential: the access log keeps only that there was one.
        line = _TOKEN_IN_QUERY.sub(r"\1***", self.requestline or "")
        return f'{client} "{line}" {status} {length} {delta:.4f}s'


class Connection:
    """One WebSocket peer: the reader runs in the request greenlet, the writer in its own.

    Output is written where it is produced: the greenlet that queued frames (a reader that
    forwarded a message, the tick loop that broadcast a peers list) writes them to the
    socket at once if that does not block, one write for everything it queued to this
    connection (:meth:`flush`). Only what the socket does not take right away is left to the
    writer greenlet, which waits for the socket (bounded by :data:`SEND_TIMEOUT`). The writer
    also sends the keepalive, the close frame, and drops a silent client. One writer at a time
    still: a flush never writes while the writer is sending or holds unsent bytes.
    """

    def __init__(self, server: SignalServer, conn_id: int, transport: Transport) -> None:
        self.server = server
        self.id = conn_id
        self.transport = transport
        self.address = transport.address
        self._tls = isinstance(transport.sock, gevent.ssl.SSLSocket)
        self._out: deque[bytes | list[bytes]] = deque()
        self._queued = 0
        self._wake = gevent.event.Event()
        self._peers_slot: list[bytes] | None = None
        # Bytes a write left unsent, for the writer: the rest of a plain write, or a whole
        # TLS write, which must be retried with the same bytes.
        self._pending: memoryview | None = None
        self._writing = False  # the writer is sending (and may be waiting for the socket)
        self._failed = False  # a write failed: the connection is gone
        self._closing = False  # a close frame is queued; nothing else may follow it
        self._close_sent = False  # ... and it has been written
        self._dropped: str | None = None  # why the writer cut the connection, if it did
        self._done = gevent.event.Event()  # the writer has finished
        self.writer: gevent.Greenlet[Any] | None = None
        now = time.monotonic()
        self.last_seen = now  # when the client last sent anything (a frame, a pong, a byte)
        self._frames = TokenBucket(server.frame_rate, server.frame_burst, now)

    # -- output (any greenlet) -----------------------------------------------------------

    def enqueue(self, frame: bytes) -> None:
        """Queue one encoded frame; it is written by the current batch's flush, if one is
        open (:meth:`SignalServer.apply`), else by the writer."""
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

    def flush(self) -> None:
        """Write everything queued now, in one write, if the socket takes it without
        blocking; what it does not take is left to the writer. Never yields."""
        if self._writing or self._pending is not None or self._closing or not self._out:
            return  # the writer has it, or will (close() and a partial write wake it)
        data = self._take()
        try:
            sent = self._send_nowait(data)
        except OSError as exc:
            log.debug("%s: send failed (%s)", self, exc)
            self._fail()
            return
        self._queued -= sent
        if sent < len(data):
            self._pending = memoryview(data)[sent:]
            self._wake.set()

    def _take(self) -> bytes:
        """Everything queued, as one byte string (the frames in order)."""
        out = self._out
        if len(out) == 1:
            item = out.popleft()
            if isinstance(item, list):
                self._peers_slot = None
                return item[0]
            return item
        batch: list[bytes] = []
        while out:
            item = out.popleft()
            if isinstance(item, list):
                if item is self._peers_slot:
                    self._peers_slot = None
                item = item[0]
            batch.append(item)
        return b"".join(batch)

    def _send_nowait(self, data: bytes | memoryview) -> int:
        """Write what the socket takes now; the number of bytes taken (TLS: all or none)."""
        sock: Any = self.transport.sock
        if self._tls:
            sslobj = sock._sslobj  # gevent's SSLSocket.send, minus its wait for the socket
            if sslobj is None:
                raise OSError("TLS connection closed")
            try:
                return int(sslobj.write(data))
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return 0  # OpenSSL keeps what it took: the same bytes must be written again
        try:
            return int(sock.send(data, 0, 0.0))  # gevent: timeout 0 raises instead of waiting
        except BlockingIOError:
            return 0

    def _account(self, size: int) -> None:
        self._queued += size
        if self._queued > self.server.max_queued:
            # A client this far behind is not reading: no close frame would reach it either,
            # so drop the TCP connection; the reader then unregisters it as for any loss.
            log.warning(
                "%s: %d bytes unsent, dropping slow connection",
                self,
                self._queued,
                extra=self.log_fields(),
            )
            self.server.stats.slow_dropped += 1
            self._drop(f"dropped: {self._queued} bytes unsent")
            self._queued = 0
            return
        batch = self.server.batch
        if batch is not None:
            batch.append(self)  # written when the batch is flushed
        else:
            self._wake.set()

    def _drop(self, why: str) -> None:
        """End the connection without a close frame (the client is gone or not reading)."""
        self._dropped = why
        self._out.clear()
        self._pending = None
        self._closing = True
        self._shutdown()
        self._wake.set()

    def _fail(self) -> None:
        """A write failed: the connection is gone; the reader sees EOF and cleans up."""
        self._failed = True
        self._out.clear()
        self._pending = None
        self._closing = True
        self._shutdown()
        self._wake.set()

    # -- writer greenlet -----------------------------------------------------------------

    def write_loop(self) -> None:
        """Write what a flush left unsent (waiting for the socket), a ``{}`` and a PING every
        keepalive period, and the close frame; drop a client from which nothing arrived
        for ``idle_timeout`` seconds."""
        keepalive = self.server.keepalive
        idle = self.server.idle_timeout
        next_ping = time.monotonic() + keepalive
        try:
            while not self._failed:
                now = time.monotonic()
                silent = now - self.last_seen
                if silent > idle:
                    # No frame and no pong in all that time: the client vanished without a
                    # FIN (a phone out of coverage). TCP would take ~15 min to notice.
                    self._drop(f"dropped: nothing received for {silent:.0f} s (no pong)")
                    return
                if self._dropped is not None:
                    return
                if self._pending is None and not self._out:
                    self._wake.clear()
                    wait = min(next_ping, self.last_seen + idle) - now
                    if not self._wake.wait(max(0.0, wait)):
                        if time.monotonic() >= next_ping:
                            self._send(KEEPALIVE_FRAME + PING_FRAME)
                            next_ping = time.monotonic() + keepalive
                    continue
                pending = self._pending
                if pending is not None:
                    self._send(pending)
                    self._pending = None
                    self._queued = max(0, self._queued - len(pending))
                while self._out:
                    # One write per batch: fewer syscalls under load, same order on the wire.
                    # The batch counts as unsent until it is out: a client that stops reading
                    # mid-batch reaches the cap however the frames were batched.
                    data = self._take()
                    self._send(data)
                    self._queued = max(0, self._queued - len(data))
                if self._closing and not self._out and self._dropped is None:
                    # Our close frame is out; a peer that never answers it is cut off.
                    self._close_sent = True
                    gevent.spawn_later(CLOSE_TIMEOUT, self._shutdown)
                    return
        except (OSError, gevent.Timeout) as exc:
            log.debug("%s: send failed (%s)", self, exc)
            self._closing = True
            self._shutdown()
        finally:
            self._done.set()

    def _send(self, data: bytes | memoryview) -> None:
        """Write all of ``data``, waiting for the socket; :data:`SEND_TIMEOUT` at most."""
        if not data:
            return
        sock: Any = self.transport.sock
        self._writing = True
        try:
            with gevent.Timeout(SEND_TIMEOUT):
                if self._tls:
                    # gevent's SSLSocket.send retries a blocked write with the same bytes, as
                    # OpenSSL requires (sendall would cut them into other chunks).
                    view = memoryview(data)
                    while view:
                        view = view[sock.send(view) :]
                else:
                    sock.sendall(data)
        finally:
            self._writing = False

    def _shutdown(self) -> None:
        # Wakes a reader blocked in recv (it sees EOF) so that it cleans up.
        _shutdown_socket(self.transport.sock, socket.SHUT_RDWR)

    # -- reader (the request greenlet) ---------------------------------------------------

    def run(self) -> None:
        """Read frames until the connection ends, then unregister (exactly once)."""
        decoder = FrameDecoder(self.server.max_message_size)
        # What the HTTP parser read past the request (the client may not have waited for
        # the 101) is in rfile's buffer, and so is the first read; then the socket itself.
        first: Callable[[int], bytes] = self.transport.rfile.read1  # type: ignore[attr-defined]
        sock: Any = self.transport.sock
        # Each read waits until the socket is readable, then reads, instead of trying a read
        # that fails (EAGAIN; for TLS an SSLWantReadError built, raised and caught).
        readable = gevent.get_hub().loop.io(sock.fileno(), 1)
        tls = self._tls
        read = self._tls_reader(readable) if tls else sock.recv
        self.writer = gevent.spawn(self.write_loop)
        log.info("%s: connected", self, extra=self.log_fields())
        reason = "closed by peer"
        linger = False  # our close frame ends the session: drain the client's input after it
        server = self.server
        data = b""
        try:
            while True:
                try:
                    if not data:
                        data = first(READ_SIZE)
                    else:
                        if len(data) < READ_SIZE and not (tls and sock.pending()):
                            gevent.socket.wait(readable)
                        data = read(READ_SIZE)
                except (OSError, ValueError) as exc:
                    # ValueError: a TLS layer already gone (read on an unwrapped socket).
                    reason = f"connection lost ({exc.__class__.__name__})"
                    break
                if not data:
                    reason = "connection lost" if not self._closing else "closed"
                    break
                now = time.monotonic()
                self.last_seen = now
                frames = decoder.frames
                try:
                    events = decoder.feed(data)
                except FrameError as err:
                    server.stats.error("frame_too_big" if err.code == 1009 else "frame_invalid")
                    reason = f"protocol error {err.code}: {err.reason}"
                    self.close(err.code, err.reason)
                    linger = True
                    break
                if not self._frames.take(now, decoder.frames - frames):
                    # §7.4.1: 1008 is for a message that violates policy; here, their rate.
                    server.stats.error("frame_rate")
                    reason = "protocol error 1008: too many frames per second"
                    self.close(1008, "too many frames per second")
                    linger = True
                    break
                if not events:
                    continue
                # Everything these messages queue, to any connection, is written in one
                # write per connection once they are all handled.
                batch = server.begin_batch()
                try:
                    ended = self._handle(events)
                finally:
                    server.end_batch(batch)
                if ended:
                    linger = True
                    break
            # Let the writer flush a close frame before the socket goes away.
            self._done.wait(CLOSE_TIMEOUT)
        finally:
            label, fields = str(self), self.log_fields()  # while they still name the peer
            server.drop(self)
            if linger and self._close_sent:
                self._linger(self.transport.sock.recv)
            readable.close()
            if self.writer is not None:
                self.writer.kill(block=False)
            self._shutdown()
            fields["reason"] = self._dropped or reason
            log.info("%s: disconnected, %s", label, fields["reason"], extra=fields)

    def _tls_reader(self, readable: Any) -> Callable[[int], bytes]:
        """``recv`` for the TLS socket: gevent's SSLSocket.recv without its Python layers,
        and reading what OpenSSL already holds before waiting for the socket again."""
        sock: Any = self.transport.sock

        def read(size: int) -> bytes:
            while True:
                sslobj = sock._sslobj
                if sslobj is None:
                    raise ValueError("TLS connection closed")
                try:
                    data: bytes = sslobj.read(size)
                    return data
                except ssl.SSLWantReadError:
                    gevent.socket.wait(readable)
                except ssl.SSLWantWriteError:
                    gevent.socket.wait_write(sock.fileno())
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""  # the end of the stream, as gevent's read reports it

        return read

    def _linger(self, read: Callable[[int], bytes]) -> None:
        """Lingering close: FIN after our close frame, then read and discard until the client
        closes too, for :data:`CLOSE_TIMEOUT` at most.

        Closing a socket with unread input makes the kernel send a reset, and a client that
        sent a big message in one go would then lose our close frame (1009) unread in its
        buffer (RFC 6455 §7.1.1 wants the TCP close after the closing handshake).
        """
        _shutdown_socket(self.transport.sock, socket.SHUT_WR)
        try:
            with gevent.Timeout(CLOSE_TIMEOUT, False):
                while read(READ_SIZE):
                    pass
        except (OSError, ValueError):
            pass

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

    def log_fields(self) -> dict[str, Any]:
        """This connection's structured log fields (the JSON format's): ``conn``, ``client``
        and, once registered, ``peer``."""
        host = self.address[0] if isinstance(self.address, tuple) else self.address
        fields: dict[str, Any] = {"conn": self.id, "client": str(host)}
        peer = self.server.hub.peer_of(self.id)
        if peer:
            fields["peer"] = peer
        return fields


class SignalServer:
    """Owns the hub and every live connection; turns hub actions into queued frames."""

    def __init__(
        self,
        *,
        keepalive: float,
        max_message_size: int,
        idle_timeout: float | None = None,
        frame_rate: float = FRAME_RATE,
        frame_burst: float = FRAME_BURST,
        hub: Hub | None = None,
    ):
        """``idle_timeout``: seconds of silence before a client is dropped (None: 3 periods)."""
        self.hub = hub or Hub()
        self.stats = self.hub.stats  # the hub counts messages; the shell adds its own
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout or 3 * keepalive
        self.frame_rate = frame_rate
        self.frame_burst = frame_burst
        self.max_message_size = max_message_size
        self.max_queued = max(MAX_QUEUED_BYTES, 4 * max_message_size)
        self.conns: dict[ConnId, Connection] = {}
        self._next_id = 0
        self._tick = gevent.event.Event()
        # The deadline the tick loop sleeps until: -inf while it is awake (it reads the
        # hub's next deadline again before it sleeps), None when it waits for no deadline.
        self._tick_at: float | None = float("-inf")
        self._emptied = gevent.event.Event()  # set when the last connection has ended
        self._ticker: gevent.Greenlet[Any] | None = None
        self.stopping = False
        # Connections given frames since begin_batch(), to flush at end_batch(); None when
        # no batch is open (a frame queued then is left to the connection's writer).
        self.batch: list[Connection] | None = None
        # The last frame built, by its text: a peers list goes to the newcomer and then to
        # everyone as the same text, encoded once.
        self._frame_text: str | None = None
        self._frame = b""

    def serve(
        self, transport: Transport, *, peer_id: str | None = None, refusal: str | None = None
    ) -> None:
        """Run one connection to its end (called in the request greenlet).

        ``peer_id``: the only id it may register (its token's). ``refusal``: its token was
        refused for this reason; it gets an ``error`` and a 4401 close, and nothing else.
        """
        self._next_id += 1
        self.stats.ws_opened += 1
        conn = Connection(self, self._next_id, transport)
        if self.stopping:
            conn.close(1001, "server shutting down")
        elif refusal is not None:
            self.stats.error("unauthorized")
            self.stats.sent["error"] += 1
            conn.enqueue(text_frame(message("error", {"request": "", "reason": refusal})))
            conn.close(CLOSE_UNAUTHORIZED, "unauthorized")
        elif peer_id is not None:
            self.hub.bind(conn.id, peer_id)
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
            log.info("%s: registered", conn, extra=conn.log_fields())

    def drop(self, conn: Connection) -> None:
        """``conn`` has ended: forget it and tell the hub (once)."""
        if self.conns.pop(conn.id, None) is None:
            return
        if not self.conns:
            self._emptied.set()
        self.apply(self.hub.disconnect(conn.id, time.monotonic()))

    def begin_batch(self) -> list[Connection] | None:
        """Open a batch: frames queued from now on are written by :meth:`end_batch`, one write
        per connection. Returns the batch it is nested in (None if none), for end_batch."""
        outer = self.batch
        if outer is None:
            self.batch = []
        return outer

    def end_batch(self, outer: list[Connection] | None) -> None:
        """Close the batch :meth:`begin_batch` opened and write what it queued."""
        if outer is not None:
            return  # nested: the outer batch writes it all
        batch, self.batch = self.batch, None
        if batch:
            self._flush(batch)

    @staticmethod
    def _flush(conns: list[Connection]) -> None:
        """Write each connection's queue (see :meth:`Connection.flush`). A long batch (a
        peers list to a thousand peers, encrypted for each) yields to the event loop every
        :data:`FLUSH_SLICE` seconds, so that other connections' reads and replies (a
        keepalive echo, an offer) are not held up behind it."""
        if len(conns) == 1:
            conns[0].flush()
            return
        clock = time.perf_counter
        start = clock()
        hub = gevent.get_hub()
        for conn in conns:
            conn.flush()
            if clock() - start > FLUSH_SLICE and gevent.getcurrent() is not hub:
                # A timer, not sleep(0): it lets the loop poll the sockets before resuming.
                gevent.sleep(YIELD_SLEEP)
                start = clock()

    def _frame_of(self, text: str) -> bytes:
        if text is not self._frame_text:
            self._frame_text, self._frame = text, text_frame(text)
        return self._frame

    def apply(self, actions: list[Action]) -> None:
        """Carry out hub actions: queue frames and write them (one write per connection),
        start closes."""
        outer = self.begin_batch()
        try:
            conns = self.conns
            for action in actions:
                if isinstance(action, Send):
                    conn = conns.get(action.conn)
                    if conn is not None:
                        conn.enqueue(self._frame_of(action.text))
                elif isinstance(action, Broadcast):
                    frame = self._frame_of(action.text)  # encoded once for every receiver
                    for conn_id in action.conns:
                        conn = conns.get(conn_id)
                        if conn is None:
                            continue
                        if action.peers:
                            conn.enqueue_peers(frame)
                        else:
                            conn.enqueue(frame)
                elif isinstance(action, Close):
                    conn = conns.get(action.conn)
                    if conn is not None:
                        fields = {**conn.log_fields(), "reason": action.reason}
                        log.info("%s: closing (%s)", conn, action.reason, extra=fields)
                        conn.close(action.code, action.reason)
        finally:
            self.end_batch(outer)
        deadline = self.hub.next_deadline()
        # Wake the tick loop only for a deadline earlier than the one it sleeps until. Waking
        # it for any pending deadline made it spin without yielding (its own apply woke it
        # again) for the whole coalescing window of every peers list.
        if deadline is not None and (self._tick_at is None or deadline < self._tick_at):
            self._tick.set()

    def _tick_loop(self) -> None:
        # Sends coalesced peers lists when the hub says they are due.
        while True:
            deadline = self._tick_at = self.hub.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._tick.wait(timeout)
            self._tick.clear()
            self._tick_at = float("-inf")
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
