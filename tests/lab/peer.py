"""An aiortc peer (tests.aiortc_peer: the Flutter apps' path) run inside a lab namespace.

    python -m tests.lab.peer --base https://198.18.0.10:8086 --cert cert.pem --id 111111 \
        --ice udp [--call 222222]

It registers, answers calls (echoing data-channel text) or, with ``--call``, calls and sends
one text over the data channel. It prints one JSON object per line on stdout: ``registered``,
``ice`` (the URIs /api/turn offered and those it took), ``gathered`` (the local candidates
its offer or answer carries), ``state`` (the peer connection's connectionState), ``pair``
(the selected candidate pair, every local candidate and, when the selected local candidate
is a relay, the two ends of the socket it reaches the TURN server over), ``echoed`` (the
caller got its text back) and ``error``. It runs until stdin closes or ``--timeout`` passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
import threading
import time
from typing import Any

from aiortc import RTCIceServer, rtcicetransport
from aiortc.sdp import candidate_from_sdp

from tests.aiortc_peer import AiortcPeer, first_uri

_BRACKETED = re.compile(r"(stuns?:|turns?:)\[([0-9A-Fa-f:.]+)\](.*)")


def accept_ipv6_literals() -> None:
    """Let aiortc take ``turn:[2001:db8::10]:19302?transport=udp`` (RFC 7065 §3.1).

    aiortc 1.16 refuses it ("malformed uri": its URI regexes allow no ``:`` in the host), so
    an aiortc peer cannot be given a TURN server by its IPv6 address; aioice itself connects
    to one (``create_turn_endpoint`` resolves the host with getaddrinfo, either family). The
    literal is parsed in place of a name and the host, unbracketed, put back.
    """
    parse = rtcicetransport.parse_stun_turn_uri
    if getattr(parse, "accepts_ipv6_literals", False):
        return

    def parse_literal(uri: str) -> dict[str, Any]:
        found = _BRACKETED.fullmatch(uri)
        if found is None:
            return parse(uri)
        scheme, host, rest = found.groups()
        parsed = parse(f"{scheme}ipv6-literal{rest}")
        parsed["host"] = host
        return parsed

    parse_literal.accepts_ipv6_literals = True  # type: ignore[attr-defined]
    rtcicetransport.parse_stun_turn_uri = parse_literal


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
    """ICE servers from /api/turn's answer: ``uris[0]`` (first: the Flutter apps' choice),
    one TURN URI (udp, tcp, tls), STUN only, or none. Says both in an ``ice`` event."""

    def choose(body: dict[str, Any]) -> list[RTCIceServer]:
        servers = pick(body)
        chosen = [u for s in servers for u in ([s.urls] if isinstance(s.urls, str) else s.urls)]
        emit("ice", offered=body["uris"], chosen=chosen)
        return servers

    def pick(body: dict[str, Any]) -> list[RTCIceServer]:
        uris: list[str] = body["uris"]
        if kind == "none":
            return []
        if kind == "first":
            return first_uri(body)
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


_emitting = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout (whole: ``ice`` is said from another thread)."""
    with _emitting:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def _candidate(c: Any) -> dict[str, Any]:
    # related: a relay's mapped address (where the TURN server saw this peer), else None.
    return {"type": c.type, "ip": c.host, "port": c.port, "related": c.related_address}


def _turn_connection(pair: Any) -> dict[str, Any] | None:
    """The local and server addresses of the socket a relayed pair reaches TURN over."""
    if pair.local_candidate.type != "relay":
        return None
    # aioice's TurnTransport keeps its TURN client protocol in a private attribute.
    client = pair.protocol.transport._TurnTransport__inner_protocol
    info = client.transport.get_extra_info
    return {"local": list(info("sockname")[:2]), "server": list(info("peername")[:2])}


async def _gathered(peer: AiortcPeer) -> list[dict[str, Any]] | None:
    """The candidates of the local description, once there is one (aiortc gathers them all
    before it sets it); None before."""
    description = peer.pc.localDescription if peer.pc is not None else None
    if description is None:
        return None
    prefix = "a=candidate:"
    lines = [line for line in description.sdp.splitlines() if line.startswith(prefix)]
    parsed = [candidate_from_sdp(line[len(prefix) :]) for line in lines]  # RTCIceCandidate
    return [
        {"type": c.type, "ip": c.ip, "port": c.port, "related": c.relatedAddress} for c in parsed
    ]


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
            turn=_turn_connection(nominated),
        )
        return


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--id", required=True)
    kinds = ["first", "udp", "tcp", "tls", "stun", "none"]
    parser.add_argument("--ice", choices=kinds, default="udp")
    parser.add_argument("--call")
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args()

    accept_ipv6_literals()
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
    last_state, gathered, reported, sent = "", False, False, False
    while not stop.is_set() and time.monotonic() < deadline:
        if peer.errors:
            emit("error", error=repr(peer.errors[0]))
            return 1
        if not gathered:
            candidates = asyncio.run_coroutine_threadsafe(_gathered(peer), peer.loop).result(10)
            if candidates is not None:
                gathered = True
                emit("gathered", candidates=candidates)
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
