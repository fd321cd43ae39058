"""/ws on the wire under abuse and loss: ghost peers (idle_timeout), fragment and frame-rate
caps, the lingering close that delivers a 1009, and the end of the HTTP connection with the
WebSocket session (docs/protocol.md §1, §7)."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import ssl
import threading
import time
from pathlib import Path

import websocket

from flaskrtc.signal.wsframe import (
    OP_CONT,
    OP_PONG,
    OP_TEXT,
    CloseReceived,
    Ping,
    Pong,
    encode_close,
    encode_frame,
)
from tests.conftest import ServerProcess
from tests.wire.test_ws import MASK, RawClient, new_id


def raw_client(server: ServerProcess) -> RawClient:
    raw = RawClient(server, base64.b64encode(os.urandom(16)).decode())
    assert raw.status_line.startswith(b"HTTP/1.1 101"), raw.status_line
    return raw


def register_raw(server: ServerProcess, peer_id: str) -> RawClient:
    raw = raw_client(server)
    raw.send_json({"type": "new", "data": {"id": peer_id}})
    assert raw.next_json()["type"] == "peers"
    return raw


def next_close(raw: RawClient, timeout: float = 10) -> CloseReceived:
    """The close frame the server sends, skipping anything before it."""
    deadline = time.monotonic() + timeout
    while True:
        event = raw.next_event(max(0.01, deadline - time.monotonic()))
        assert event is not None, "connection ended without a close frame"
        if isinstance(event, CloseReceived):
            return event


# -- 2. ghost peers ---------------------------------------------------------------------


def test_client_that_stops_answering_is_dropped_and_its_peers_get_leave(tmp_path: Path) -> None:
    keepalive = 0.3  # idle_timeout defaults to three periods: 0.9 s
    srv = ServerProcess(tmp_path, extra={"general.keepalive": str(keepalive)})
    try:
        watcher = srv.connect()  # websocket-client answers pings while it reads
        watcher.register("watcher")
        watcher.expect_peers(["watcher"])
        ghost = register_raw(srv, "ghost")  # never answers a ping, never sends again
        silent_since = time.monotonic()
        watcher.expect_peers(["watcher", "ghost"])
        msg = watcher.recv(timeout=10)
        while msg["type"] == "peers":
            msg = watcher.recv(timeout=10)
        assert msg == {"type": "leave", "data": "ghost"}
        took = time.monotonic() - silent_since
        assert 3 * keepalive * 0.9 <= took <= 8, took  # not before idle_timeout, and not ~15 min
        assert watcher.expect_peers(["watcher"])
        line = srv.wait_for_log(r"peer ghost: disconnected, dropped: nothing received for")
        assert "no pong" in line.string
        # The watcher, silent too but answering every ping, outlived the ghost.
        watcher.send("keepalive", {"alive": True})
        assert watcher.expect("keepalive")["data"] == {"alive": True}
        ghost.sock.close()
        watcher.close()
    finally:
        srv.stop()


def test_client_that_only_answers_pings_stays(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, extra={"general.keepalive": "0.2", "general.idle_timeout": "0.7"})
    try:
        quiet = register_raw(srv, "quiet")
        until = time.monotonic() + 3  # more than four idle_timeouts
        pongs = 0
        while time.monotonic() < until:
            quiet.sock.settimeout(max(0.01, until - time.monotonic()))
            try:
                data = quiet.sock.recv(4096)
            except TimeoutError:
                break
            assert data, "the server dropped a client that answers its pings"
            for event in quiet.decoder.feed(data):
                if isinstance(event, Ping):
                    quiet.sock.sendall(encode_frame(OP_PONG, event.payload, mask=MASK))
                    pongs += 1
        assert pongs >= 10
        # Still registered: a newcomer lists it, and an offer reaches it.
        watcher = srv.connect()
        watcher.register("w")
        watcher.expect_peers(["quiet", "w"])
        watcher.send("offer", {"to": "quiet", "description": {"sdp": ""}})
        msg = quiet.next_json()
        while msg["type"] == "peers":
            msg = quiet.next_json()
        assert msg["type"] == "offer" and msg["data"]["from"] == "w"
        assert not any("peer quiet: disconnected" in line for line in srv.lines)
        quiet.sock.close()
        watcher.close()
    finally:
        srv.stop()


# -- 3. fragments and frame rate ------------------------------------------------------------


def test_endless_empty_fragments_are_closed_with_1009(server: ServerProcess) -> None:
    raw = register_raw(server, new_id())
    frames = encode_frame(OP_TEXT, b"", fin=False, mask=MASK)
    frames += encode_frame(OP_CONT, b"", fin=False, mask=MASK) * 1100  # cap: 1024 in all
    raw.sock.sendall(frames)
    close = next_close(raw)
    assert (close.code, close.reason) == (1009, "message in too many fragments")
    assert raw.next_event() is None
    raw.sock.close()


def test_a_flood_of_tiny_frames_is_closed_with_1008(server: ServerProcess) -> None:
    watcher = server.connect()
    wid = new_id()
    watcher.register(wid)
    watcher.expect("peers")
    pid = new_id()
    raw = register_raw(server, pid)
    # 3000 unsolicited PONGs (allowed one by one, RFC 6455 §5.5.3): over the 2000-frame burst.
    raw.sock.sendall(encode_frame(OP_PONG, b"", mask=MASK) * 3000)
    close = next_close(raw)
    assert (close.code, close.reason) == (1008, "too many frames per second")
    assert watcher.expect("leave") == {"type": "leave", "data": pid}
    raw.sock.close()
    # A client within the rate is fine: 500 pings in one go are all answered.
    calm = raw_client(server)
    calm.sock.sendall(encode_frame(0x9, b"p", mask=MASK) * 500)
    assert [calm.next_event() for _ in range(500)] == [Pong(b"p")] * 500
    calm.sock.close()
    watcher.close()


# -- 4. the 1009 close reaches a client that sent a big message in one go ---------------------


def push_until_close(raw: RawClient, data: bytes, timeout: float = 10) -> CloseReceived | None:
    """Send ``data`` while reading, in one thread (an SSL socket must not be read and written
    by two threads at once), until the server's close frame arrives; None at EOF first.

    Sending stops with the close frame, as a client that honours it would; a reset raises
    ConnectionResetError."""
    sock = raw.sock
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            while True:  # everything readable now, the TLS layer's pending bytes too
                try:
                    chunk = sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                if not chunk:
                    return None
                raw.events += raw.decoder.feed(chunk)
                for i, event in enumerate(raw.events):
                    if isinstance(event, CloseReceived):
                        del raw.events[: i + 1]
                        return event
            if sent < len(view):
                try:
                    sent += sock.send(view[sent : sent + 65536])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(view)  # the server stopped reading: its reply is what counts
            select.select([sock], [sock] if sent < len(view) else [], [], 0.05)
        raise AssertionError(f"no close frame in {timeout} s ({sent} of {len(view)} bytes sent)")
    finally:
        sock.setblocking(True)


def test_oversized_message_sent_in_one_go_gets_the_1009_close_not_a_reset(
    tmp_path: Path,
) -> None:
    srv = ServerProcess(tmp_path, extra={"general.max_message_size": "4096"})
    try:
        for _ in range(3):  # a reset is a race: try it more than once
            raw = register_raw(srv, new_id())
            frame = encode_frame(OP_TEXT, os.urandom(4 << 20), mask=MASK)
            try:
                event = push_until_close(raw, frame)
                assert event is not None, "connection ended without a close frame"
                assert (event.code, event.reason) == (1009, "message too big")
                assert raw.next_event() is None  # then a clean end of stream
            except ConnectionResetError as err:
                raise AssertionError("the server reset the connection: close frame lost") from err
            except AssertionError as err:
                raise AssertionError(f"{err}; server log: {srv.lines[-12:]}") from err
            raw.sock.close()
        assert not any("Traceback" in line for line in srv.lines)
    finally:
        srv.stop()


def test_close_answered_then_server_closes_tcp_first(server: ServerProcess) -> None:
    # RFC 6455 §7.1.1: after the closing handshake the server closes the TCP connection
    # (its FIN comes first), even while the client keeps its side open.
    raw = raw_client(server)
    raw.sock.sendall(encode_close(1000, mask=MASK))
    close = next_close(raw)
    assert close.code == 1000
    started = time.monotonic()
    assert raw.next_event(timeout=5) is None
    assert time.monotonic() - started < 1.5
    raw.sock.close()


# -- 5. the HTTP connection ends with the WebSocket session ----------------------------------


def test_quick_connect_offer_close_cycles_leave_a_clean_log(fresh_server: ServerProcess) -> None:
    target = fresh_server.connect()
    target.register("target")
    target.expect_peers(["target"])
    errors: list[BaseException] = []
    cycles_per_thread, threads = 8, 5

    def cycles(worker: int) -> None:
        try:
            for i in range(cycles_per_thread):
                ws = websocket.create_connection(
                    fresh_server.ws_url, timeout=10, sslopt=fresh_server.sslopt()
                )
                ws.send(json.dumps({"type": "new", "data": {"id": f"c{worker}-{i}"}}))
                ws.send(
                    '{"type":"offer","data":{"to":"target","session_id":"c-target",'
                    '"description":{"type":"offer","sdp":"v=0"}}}'
                )
                ws.close()  # at once: the close frame may cross the server's own end
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=cycles, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors[:3]
    total = cycles_per_thread * threads
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ended = [line for line in fresh_server.lines if re.search(r"peer c\d+-\d+: disc", line)]
        if len(ended) == total:
            break
        time.sleep(0.05)
    bad = [
        line
        for line in fresh_server.lines
        if "ERROR" in line or "Traceback" in line or "BrokenPipe" in line or '" 400 ' in line
    ]
    assert bad == [], bad
    ended = [line for line in fresh_server.lines if re.search(r"peer c\d+-\d+: disc", line)]
    assert len(ended) == total, fresh_server.lines[-20:]
    # Per connection: connected, registered, disconnected; nothing else from the HTTP side.
    mine = [line for line in fresh_server.lines if re.search(r"peer c\d+-\d+|ws#", line)]
    assert len(mine) <= 3 * total + 2, mine
    target.close()


def test_raw_bytes_after_the_websocket_end_are_not_parsed_as_http(tmp_path: Path) -> None:
    # Plain WS makes it visible: a request-looking tail after the session is never answered.
    srv = ServerProcess(tmp_path, tls=False)
    try:
        raw = raw_client(srv)
        raw.sock.sendall(encode_close(1000, mask=MASK) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert next_close(raw).code == 1000
        rest = b""
        raw.sock.settimeout(5)
        while chunk := raw.sock.recv(4096):
            rest += chunk
        assert b"HTTP/1.1" not in rest, rest
        raw.sock.close()
        assert not any('"GET / HTTP/1.1"' in line for line in srv.lines), srv.lines
    finally:
        srv.stop()
