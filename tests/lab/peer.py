"""An aiortc peer (tests.aiortc_peer: the Flutter apps' path) run inside a lab namespace.

    python -m tests.lab.peer --base https://198.18.0.10:8086 --cert cert.pem --id 111111 \
        --ice udp [--call 222222]

It registers, answers calls (echoing data-channel text) or, with ``--call``, calls and sends
one text over the data channel. It prints one JSON object per line on stdout: ``registered``,
``state`` (the peer connection's connectionState), ``pair`` (the selected candidate pair and
every local candidate, once connected), ``echoed`` (the caller got its text back) and
``error``. It runs until stdin closes or ``--timeout`` passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import threading
import time
from typing import Any

from aiortc import RTCIceServer

from tests.aiortc_peer import AiortcPeer


class Remote:
    """What AiortcPeer needs of a server: its URLs and how to trust its certificate."""

    def __init__(self, base: str, cert: str) -> None:
        self.base = base.rstrip("/")
        self.tls = self.base.startswith("https:")
        self.ws_url = ("wss" if self.tls else "ws") + self.base[self.base.index(":") :] + "/ws"
        self.cert = cert

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cert)

    def sslopt(self) -> dict[str, Any]:
        return {"ca_certs": self.cert} if self.tls else {}


def ice_choice(kind: str) -> Any:
    """ICE servers from /api/turn's answer: one TURN URI (udp, tcp, tls), STUN only, or none."""

    def choose(body: dict[str, Any]) -> list[RTCIceServer]:
        uris: list[str] = body["uris"]
        if kind == "none":
            return []
        if kind == "stun":
            # The TURN server answers STUN Binding requests on its UDP port.
            host_port = uris[0].split(":", 1)[1].split("?", 1)[0]
            return [RTCIceServer(urls=[f"stun:{host_port}"])]
        wanted = {
            "udp": lambda u: u.startswith("turn:") and u.endswith("transport=udp"),
            "tcp": lambda u: u.startswith("turn:") and u.endswith("transport=tcp"),
            "tls": lambda u: u.startswith("turns:"),
        }[kind]
        uri = next(u for u in uris if wanted(u))
        return [RTCIceServer(urls=[uri], username=body["username"], credential=body["password"])]

    return choose


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _candidate(c: Any) -> dict[str, Any]:
    return {"type": c.type, "ip": c.host, "port": c.port}


async def _report_pair(peer: AiortcPeer) -> None:
    pc = peer.pc
    assert pc is not None
    transports = {t.sender.transport for t in pc.getTransceivers() if t.sender.transport}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    for dtls in transports:
        connection = dtls.transport._connection  # aioice's Connection (no public accessor)
        nominated = connection._nominated.get(1)
        if nominated is None:
            continue
        emit(
            "pair",
            local=_candidate(nominated.local_candidate),
            remote=_candidate(nominated.remote_candidate),
            candidates=[_candidate(c) for c in connection.local_candidates],
        )
        return


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--ice", choices=["udp", "tcp", "tls", "stun", "none"], default="udp")
    parser.add_argument("--call")
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args()

    peer = AiortcPeer(
        Remote(args.base, args.cert),  # type: ignore[arg-type]
        args.id,
        f"lab {args.id}",
        ice=ice_choice(args.ice),
        echo=args.call is None,
    )
    emit("registered", id=args.id)
    stop = threading.Event()

    def hang_up_on_eof() -> None:
        sys.stdin.read()  # the test closes stdin to end the peer
        stop.set()

    threading.Thread(target=hang_up_on_eof, daemon=True).start()
    deadline = time.monotonic() + args.timeout
    if args.call:
        peer.call(args.call, media="data")
    last_state, reported, sent = "", False, False
    while not stop.is_set() and time.monotonic() < deadline:
        if peer.errors:
            emit("error", error=repr(peer.errors[0]))
            return 1
        if peer.state != last_state:
            last_state = peer.state
            emit("state", state=last_state)
        if last_state == "connected" and not reported:
            reported = True
            asyncio.run_coroutine_threadsafe(_report_pair(peer), peer.loop).result(10)
        if args.call and last_state == "connected" and peer.channel is not None and not sent:
            channel = peer.channel
            if channel.readyState == "open":
                sent = True
                peer.loop.call_soon_threadsafe(channel.send, "hello through the NAT")
        if "echo: hello through the NAT" in peer.chat:
            emit("echoed")
            peer.chat.clear()
        stop.wait(0.05)
    peer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
