"""A peer that is not a browser: aiortc (PyPI) speaking the signaling protocol, as a
flutter-webrtc app does (uses only ``uris[0]`` from /api/turn, answers offers, puts its
candidates in the SDP, echoes data-channel text).

It runs its own asyncio loop in a thread; websocket-client reads signaling in another.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import aioice.ice
import websocket
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp

from tests.conftest import ServerProcess

IceChoice = Callable[[dict[str, Any]], list[RTCIceServer]]


def first_uri(body: dict[str, Any]) -> list[RTCIceServer]:
    """The Flutter apps' choice: ``uris[0]`` only (the UDP one)."""
    return [
        RTCIceServer(urls=[body["uris"][0]], username=body["username"], credential=body["password"])
    ]


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host addresses, loopback only (it leaves loopback out by default, RFC 8445
    §5.1.1.1, and takes every other interface)."""
    return (["127.0.0.1"] if use_ipv4 else []) + (["::1"] if use_ipv6 else [])


class AiortcPeer:
    """Registers as ``peer_id`` and answers one call at a time.

    ``ice`` picks the ICE servers from the /api/turn answer (default: the Flutter apps'
    ``uris[0]``); ``echo`` makes it answer each data-channel text with ``echo: <text>``.
    ``loopback_only`` keeps its host candidates on loopback, so that no connectivity check
    goes to the machine's other addresses (tests; the lab's peers use their namespace's).
    """

    def __init__(
        self,
        server: ServerProcess,
        peer_id: str,
        name: str,
        *,
        ice: IceChoice = first_uri,
        echo: bool = True,
        loopback_only: bool = False,
    ) -> None:
        if loopback_only:
            # Process-wide: every aiortc peer of this test process gathers on loopback only.
            aioice.ice.get_host_addresses = _loopback_host_addresses
        self.server = server
        self.ice = ice
        self.echo = echo
        self.channel: Any = None  # the data channel of the call, once there is one
        self.id = peer_id
        self.name = name
        self.state = "new"  # the peer connection's connectionState
        self.media = ""
        self.session_id = ""
        self.chat: list[str] = []
        self.frames: dict[str, int] = {"audio": 0, "video": 0}
        self.byes: list[str] = []
        self.errors: list[BaseException] = []
        self.pc: RTCPeerConnection | None = None
        self.pending: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Future[None]] = set()  # frame counters, kept from the GC
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.ws = websocket.create_connection(
            server.ws_url, timeout=10, sslopt=server.sslopt(), suppress_origin=True
        )
        self.ws.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.send(
            "new", {"id": peer_id, "name": name, "user_agent": "flutter-webrtc/aiortc-plugin"}
        )

    def send(self, type_: str, data: Any) -> None:
        self.ws.send(json.dumps({"type": type_, "data": data}))

    def _read(self) -> None:
        while True:
            try:
                text = self.ws.recv()
            except Exception:
                return  # closed
            if not text:
                return
            msg = json.loads(text)
            if msg.get("type"):
                asyncio.run_coroutine_threadsafe(self._on_message(msg), self.loop)

    async def _on_message(self, msg: dict[str, Any]) -> None:
        try:
            data: Any = msg.get("data")
            if msg["type"] == "offer":
                await self._answer(data)
            elif msg["type"] == "answer" and data["session_id"] == self.session_id:
                assert self.pc is not None
                answer = data["description"]
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(answer["sdp"], answer["type"])
                )
                await self._flush()
            elif msg["type"] == "candidate" and data["session_id"] == self.session_id:
                await self._add_candidate(data["candidate"])
            elif msg["type"] == "bye":
                self.byes.append(data["session_id"])
                if self.pc is not None and data["session_id"] == self.session_id:
                    await self.pc.close()
                    self.state = "closed"
        except Exception as err:  # reported by the test through .errors
            self.errors.append(err)

    def _ice_servers(self) -> list[RTCIceServer]:
        url = f"{self.server.base}/api/turn?service=turn&username={self.id}"
        ctx = self.server.ssl_context() if self.server.tls else None
        with urllib.request.urlopen(url, context=ctx, timeout=10) as response:
            body = json.load(response)
        return self.ice(body)

    def call(self, to: str, media: str = "video", channel: bool = True) -> None:
        """Call ``to`` as the Flutter demo does: tracks, data channel, offer with ``media``.

        The Flutter demo itself opens the channel in data calls only: ``channel=False``.
        """
        future = asyncio.run_coroutine_threadsafe(self._offer(to, media, channel), self.loop)
        future.result(20)

    async def _offer(self, to: str, media: str, channel: bool) -> None:
        pc = await self._new_call(f"{self.id}-{to}", media)
        if media == "video":
            pc.addTrack(AudioStreamTrack())
            pc.addTrack(VideoStreamTrack())
        if channel:
            self._echo(pc.createDataChannel("fileTransfer"))
        await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        self.send(
            "offer",
            {
                "to": to,
                "from": self.id,
                "session_id": self.session_id,
                "description": {"sdp": local.sdp, "type": local.type},
                "media": media,
            },
        )

    def _echo(self, channel: Any) -> None:
        self.channel = channel

        def on_text(text: Any) -> None:
            self.chat.append(text)
            if self.echo:
                channel.send(f"echo: {text}")

        channel.on("message", on_text)

    async def _new_call(self, session_id: str, media: str) -> RTCPeerConnection:
        self.session_id = session_id
        self.media = media
        servers = await asyncio.get_running_loop().run_in_executor(None, self._ice_servers)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.pc = pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self.state = pc.connectionState

        @pc.on("datachannel")
        def on_channel(channel: Any) -> None:
            self._echo(channel)

        @pc.on("track")
        def on_track(track: Any) -> None:
            self.tasks.add(asyncio.ensure_future(self._count(track)))

        return pc

    async def _flush(self) -> None:
        held, self.pending = self.pending, []
        for candidate in held:
            await self._add_candidate(candidate)

    async def _answer(self, data: dict[str, Any]) -> None:
        pc = await self._new_call(data["session_id"], data.get("media", "video"))
        description = data["description"]
        await pc.setRemoteDescription(
            RTCSessionDescription(description["sdp"], description["type"])
        )
        if self.media == "video":
            pc.addTrack(AudioStreamTrack())
            pc.addTrack(VideoStreamTrack())
        await self._flush()
        await pc.setLocalDescription(await pc.createAnswer())
        local = pc.localDescription
        self.send(
            "answer",
            {
                "to": data["from"],
                "from": self.id,
                "session_id": self.session_id,
                "description": {"sdp": local.sdp, "type": local.type},
            },
        )

    async def _count(self, track: Any) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.frames[track.kind] += 1

    async def _add_candidate(self, candidate: dict[str, Any]) -> None:
        if self.pc is None or self.pc.remoteDescription is None:
            self.pending.append(candidate)
            return
        text = candidate["candidate"]
        parsed = candidate_from_sdp(
            text.split(":", 1)[1] if text.startswith("candidate:") else text
        )
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pc.addIceCandidate(parsed)

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.errors:
                raise AssertionError(f"aiortc peer failed: {self.errors!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"aiortc peer: timed out waiting for {what}")
            time.sleep(0.05)

    def close(self) -> None:
        self.ws.close()
        if self.pc is not None:
            asyncio.run_coroutine_threadsafe(self.pc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
