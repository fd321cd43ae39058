"""A sans-I/O WebSocket frame codec (RFC 6455 §5) and the handshake key helpers (§4.2).

The server lets gevent-websocket perform the HTTP upgrade only; every frame read from or
written to the socket goes through this module. :class:`FrameDecoder` is fed raw bytes and
returns complete events; it never touches a socket, so it is equally usable by test clients
and benchmarks (``require_mask=False`` for frames coming from a server).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# RFC 6455 §1.3: the GUID appended to Sec-WebSocket-Key before hashing.
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 6455 §5.5: control frames carry at most 125 bytes of payload.
MAX_CONTROL_PAYLOAD = 125
# Largest frame header: 2 bytes + 8-byte extended length + 4-byte masking key (§5.2).
MAX_HEADER_SIZE = 14
# Frames one fragmented message may span (§5.4 sets no bound; §10.4 asks endpoints to limit
# what they buffer). Browsers and the apps send a message in one frame or a few large ones;
# without a cap, empty continuation frames would pile up while the size check never grows.
MAX_FRAGMENTS = 1024

_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# Standard keys are base64 of 16 bytes (§4.1); the native flutter-webrtc apps send base64
# of 8 bytes lower-cased, which is no longer canonical base64, so only the alphabet is
# checked.
_CLIENT_KEY_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
_CLIENT_KEY_MIN, _CLIENT_KEY_MAX = 4, 64


@dataclass(frozen=True)
class Message:
    """A complete data message, fragments joined; ``data`` is raw (TEXT is not decoded)."""

    data: bytes
    binary: bool


@dataclass(frozen=True)
class Ping:
    """A PING control frame (§5.5.2); the caller answers with a PONG of the same payload."""

    payload: bytes


@dataclass(frozen=True)
class Pong:
    """A PONG control frame (§5.5.3)."""

    payload: bytes


@dataclass(frozen=True)
class CloseReceived:
    """A CLOSE frame (§5.5.1); ``code`` is None when the frame had no payload."""

    code: int | None
    reason: str


Event = Message | Ping | Pong | CloseReceived


class FrameError(Exception):
    """A violation that fails the connection; carries the close code to send (RFC 6455 §7.4.1)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} ({code})")
        self.code = code
        self.reason = reason


def _protocol_error(reason: str) -> FrameError:
    return FrameError(1002, reason)


def _xor_mask(data: bytes | bytearray, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (§5.3), as one big-integer operation."""
    n = len(data)
    if n == 0:
        return b""
    # A per-byte Python loop runs at a few MB/s; one XOR of two n-byte integers is done in C.
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _valid_close_code(code: int) -> bool:
    # §7.4.1 defines 1000-1003 and 1007-1011; 1012-1014 are registered in the IANA registry
    # (§11.7). 1004-1006 and 1015 must never be sent; 3000-4999 are for libraries/apps.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _parse_close(payload: bytes) -> CloseReceived:
    """The close code and reason of a CLOSE payload (§5.5.1), validated."""
    if not payload:
        return CloseReceived(None, "")
    if len(payload) == 1:
        raise _protocol_error("close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    if not _valid_close_code(code):
        raise _protocol_error(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        # §8.1: invalid UTF-8 in a frame that must be text fails the connection with 1007.
        raise FrameError(1007, "close reason is not valid UTF-8") from None
    return CloseReceived(code, reason)


class FrameDecoder:
    """Incremental server-side frame parser: bytes in, :data:`Event` objects out.

    Partial frames are kept across :meth:`feed` calls, so the split of the input into chunks
    never changes the events. A :class:`FrameError` is final: later feeds raise it again.
    After a :class:`CloseReceived` all further input is ignored (§5.5.1).
    """

    def __init__(
        self,
        max_message_size: int,
        *,
        require_mask: bool = True,
        max_fragments: int = MAX_FRAGMENTS,
    ) -> None:
        if max_message_size < 0:
            raise ValueError("max_message_size must not be negative")
        if max_fragments < 1:
            raise ValueError("max_fragments must be at least 1")
        self._max = max_message_size
        self._max_fragments = max_fragments
        self._frames = 0  # complete frames decoded, of every kind
        self._require_mask = require_mask
        # Bytes of an incomplete frame; complete frames are consumed within one feed.
        self._buf = bytearray()
        # Opcode of the first frame of a fragmented message in progress (§5.4), else None.
        self._frag_opcode: int | None = None
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self._closed = False
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (at most max(max_message_size, 125) + 14)."""
        return len(self._buf)

    @property
    def frames(self) -> int:
        """Complete frames decoded so far (control frames and empty fragments included)."""
        return self._frames

    @property
    def closed(self) -> bool:
        """True once a CLOSE frame was decoded."""
        return self._closed

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data`` appended to what is buffered; return the completed events."""
        if self._error is not None:
            raise FrameError(self._error.code, self._error.reason)
        if self._closed:
            return []
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            # Common case: nothing pending, so parse the caller's bytes without copying.
            buf = data
        events: list[Event] = []
        try:
            pos = self._parse(buf, events)
        except FrameError as err:
            self._error = err
            self._buf = bytearray()
            self._frag_parts = []
            raise
        if self._closed:
            self._buf = bytearray()
        elif buf is self._buf:
            if pos:
                # Compact: drop consumed frames. The rest arrived in this feed (anything older
                # was an incomplete frame that is now consumed), so the copy is linear.
                del self._buf[:pos]
        elif pos < len(buf):
            self._buf += memoryview(buf)[pos:]
        return events

    def _parse(self, buf: bytes | bytearray, events: list[Event]) -> int:
        """Decode complete frames from ``buf``; return the offset of the first unused byte."""
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            # Everything checkable from the first two bytes is checked before waiting for
            # more input, so a bad frame fails as early as possible.
            if b0 & 0x70:
                # §5.2: RSV1-3 must be 0 unless an extension defines them; none is negotiated.
                raise _protocol_error("reserved bits set")
            masked = b1 & 0x80
            if not masked and self._require_mask:
                # §5.1: a server must close the connection on an unmasked client frame.
                raise _protocol_error("unmasked client frame")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            length = b1 & 0x7F
            hdr = 2
            if opcode in _CONTROL_OPCODES:
                # §5.5: control frames are never fragmented and carry at most 125 bytes.
                if not fin:
                    raise _protocol_error("fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD:
                    raise _protocol_error("control frame payload too long")
            else:
                if opcode == OP_CONT:
                    if self._frag_opcode is None:
                        raise _protocol_error("continuation frame without a message")
                    if len(self._frag_parts) >= self._max_fragments:
                        # 1009 like an oversized message: it is the message that is too big
                        # to take in, counted in frames rather than bytes.
                        raise FrameError(1009, "message in too many fragments")
                elif opcode == OP_TEXT or opcode == OP_BINARY:
                    if self._frag_opcode is not None:
                        # §5.4: fragments of one message may not interleave with another.
                        raise _protocol_error("new message inside a fragmented message")
                else:
                    raise _protocol_error(f"unknown opcode {opcode:#x}")
                # §5.2: 126 means a 16-bit length follows, 127 a 64-bit one.
                if length == 126:
                    if end - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    hdr = 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise _protocol_error("64-bit length with the high bit set")
                    hdr = 10
                # Checked on the header alone, so an announced huge length allocates nothing
                # (§10.4: endpoints should limit frame and message sizes).
                if self._frag_size + length > self._max:
                    raise FrameError(1009, "message too big")
            if masked:
                hdr += 4
            stop = pos + hdr + length
            if stop > end:
                break
            # bytes() is free for a bytes buffer; for the bytearray it is one cheap copy that
            # also makes int.from_bytes about twice as fast as on a bytearray.
            payload = bytes(buf[pos + hdr : stop])
            if masked:
                payload = _xor_mask(payload, bytes(buf[pos + hdr - 4 : pos + hdr]))
            pos = stop
            self._frames += 1

            if opcode == OP_TEXT or opcode == OP_BINARY:
                if fin:
                    events.append(Message(payload, opcode == OP_BINARY))
                else:
                    self._frag_opcode = opcode
                    self._frag_parts = [payload]
                    self._frag_size = length
            elif opcode == OP_CONT:
                self._frag_parts.append(payload)
                self._frag_size += length
                if fin:
                    data = b"".join(self._frag_parts)
                    events.append(Message(data, self._frag_opcode == OP_BINARY))
                    self._frag_opcode = None
                    self._frag_parts = []
                    self._frag_size = 0
            elif opcode == OP_PING:
                events.append(Ping(payload))
            elif opcode == OP_PONG:
                events.append(Pong(payload))
            else:
                events.append(_parse_close(payload))
                # §5.5.1: nothing after a CLOSE frame is data; drop any message in progress.
                self._closed = True
                self._frag_opcode = None
                self._frag_parts = []
                self._frag_size = 0
                return end
        return pos


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """One frame (§5.2) with the shortest length encoding; masked with ``mask`` if given.

    No limits are enforced (tests use this to build invalid frames); servers send unmasked
    frames, clients pass a 4-byte masking key (§5.3).
    """
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"opcode out of range: {opcode}")
    n = len(payload)
    b0 = (opcode | 0x80) if fin else opcode
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        header = bytes((b0, mask_bit | n))
    elif n < 0x10000:
        header = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if mask is None:
        return header + payload
    if len(mask) != 4:
        raise ValueError("masking key must be 4 bytes")
    return header + mask + _xor_mask(payload, mask)


def encode_close(code: int = 1000, reason: str = "", *, mask: bytes | None = None) -> bytes:
    """A CLOSE frame (§5.5.1); ``reason`` is cut on a character boundary to fit 125 bytes."""
    raw = reason.encode("utf-8")
    limit = MAX_CONTROL_PAYLOAD - 2
    if len(raw) > limit:
        # Dropping a partial trailing character keeps the reason valid UTF-8 (§5.5.1).
        raw = raw[:limit].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + raw, mask=mask)


def text_frame(text: str) -> bytes:
    """An unmasked (server) TEXT frame carrying ``text`` as UTF-8."""
    return encode_frame(OP_TEXT, text.encode("utf-8"))


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (§4.2.2 step 5.4)."""
    digest = hashlib.sha1((key + _GUID).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_client_key(key: str) -> bool:
    """Whether a Sec-WebSocket-Key is acceptable (§4.2.1 item 5, relaxed for native apps)."""
    return _CLIENT_KEY_MIN <= len(key) <= _CLIENT_KEY_MAX and (
        _CLIENT_KEY_RE.fullmatch(key) is not None
    )
