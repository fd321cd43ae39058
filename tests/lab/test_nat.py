"""Calls between two clients behind different symmetric NATs, through flaskrtc in the lab.

ICE policy is ``all`` everywhere: nothing tells the clients to relay; the NATs force it
(see netlab.py). Each scenario runs twice: a call of two aiortc peers taking the Flutter
apps' path (one ICE server picked from /api/turn), and a call of the web demo in two headless
Chromiums (all of /api/turn's URIs, as a browser gets them), with a data channel text there
and back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.browser import WebPage
from tests.lab.conftest import SELECTED_PAIR, TURN_PORT, TURNS_PORT, LabPeer, LabServer, chat_call
from tests.lab.netlab import SERVER_IP, NetLab

pytestmark = pytest.mark.lab

StartServer = Callable[..., LabServer]
StartPeer = Callable[..., LabPeer]
OpenPage = Callable[..., WebPage]
Report = dict[str, Any]  # {"local": candidate, "remote": candidate, "candidates": [...]}


class Calls:
    """Places a call from client a to client b with the chosen kind of client."""

    def __init__(self, kind: str, start_peer: StartPeer, open_page: OpenPage) -> None:
        self.kind = kind
        self.start_peer = start_peer
        self.open_page = open_page

    def call(
        self, server: LabServer, ice_a: str = "udp", ice_b: str = "udp"
    ) -> tuple[Report, Report]:
        """Each side's selected pair once a text went both ways. ``ice_*`` is aiortc's one
        ICE server (udp, tcp, tls, stun); Chromium gets all of /api/turn unless it is stun."""
        if self.kind == "aiortc":
            callee = self.start_peer("b", server, "200002", "--ice", ice_b)
            callee.wait("registered")
            caller = self.start_peer("a", server, "100001", "--ice", ice_a, "--call", "200002")
            caller.wait("echoed", timeout=45)
            return caller.wait("pair"), callee.wait("pair")
        a = self.open_page("a", server, stun_only=ice_a == "stun")
        b = self.open_page("b", server, stun_only=ice_b == "stun")
        chat_call(a, b, "hello through the NAT", "and back")
        return a.page.evaluate(SELECTED_PAIR), b.page.evaluate(SELECTED_PAIR)


@pytest.fixture(params=["aiortc", "chromium"])
def calls(request: pytest.FixtureRequest, lab_peer: StartPeer) -> Calls:
    kind = request.param
    # Chromium is started only for its own runs.
    open_page = request.getfixturevalue("lab_page") if kind == "chromium" else None
    return Calls(kind, lab_peer, open_page)  # type: ignore[arg-type]


def relays(report: Report) -> list[str]:
    return [c["ip"] for c in report["candidates"] if c["type"] == "relay"]


def assert_relayed(a: Report, b: Report, *, protocol: set[str] | None = None) -> None:
    """Behind two symmetric NATs only a pair through a relay works; every relay candidate is
    the server's address. ``protocol``: how a relaying side must reach TURN (Chromium says)."""
    for report in (a, b):
        # Each side's selected pair has a relay at one end: its own, or the other side's
        # reached through its NAT (peer-reflexive); Chromium's two views may differ.
        assert "relay" in (report["local"]["type"], report["remote"]["type"]), (a, b)
        # One relay is enough: the other side may reach it straight through its NAT (a
        # peer-reflexive pair) before its own relay candidate is even gathered.
        if report["local"]["type"] == "relay":
            assert relays(report), report
        assert set(relays(report)) <= {SERVER_IP}, report
        if report["remote"]["type"] == "relay":
            assert report["remote"]["ip"] == SERVER_IP, report
        local = report["local"]
        if protocol is not None and local["type"] == "relay" and "relayProtocol" in local:
            assert local["relayProtocol"] in protocol, report


def test_udp_turn(lab_server: StartServer, calls: Calls) -> None:
    a, b = calls.call(lab_server())
    assert_relayed(a, b, protocol={"udp"})


def test_tcp_turn(nat: NetLab, lab_server: StartServer, calls: Calls) -> None:
    # Both networks let only TCP to the TURN port out: no UDP at all, no TLS port.
    for side in ("a", "b"):
        nat.set_nat(side, drop_udp=True, drop_tcp_ports=[TURNS_PORT])
    a, b = calls.call(lab_server(), "tcp", "tcp")
    assert a["local"]["type"] == b["local"]["type"] == "relay"
    assert_relayed(a, b, protocol={"tcp"})


def test_tls_turn(nat: NetLab, lab_server: StartServer, calls: Calls) -> None:
    # Both networks let only TLS out: no UDP, nothing to the plain TURN port.
    for side in ("a", "b"):
        nat.set_nat(side, drop_udp=True, drop_tcp_ports=[TURN_PORT])
    a, b = calls.call(lab_server(), "tls", "tls")
    assert a["local"]["type"] == b["local"]["type"] == "relay"
    assert_relayed(a, b, protocol={"tls"})


def test_udp_dropped_at_one_nat(nat: NetLab, lab_server: StartServer, calls: Calls) -> None:
    nat.set_nat("a", drop_udp=True)
    # Chromium falls back by itself. aiortc, like the Flutter apps, takes one TURN URI and
    # cannot: the peer behind the UDP-blocking network is given the TCP one.
    a, b = calls.call(lab_server(), "tcp", "udp")
    assert a["local"]["type"] == "relay", a
    assert_relayed(a, b)
    # Only a's network blocks UDP: a must reach TURN over TCP or TLS, while b may well use its
    # UDP relay (so the protocol rule is a's alone).
    if calls.kind == "chromium":
        assert a["local"].get("relayProtocol") in {"tcp", "tls"}, a


def test_public_ip_empty_relays_are_reachable(lab_server: StartServer, calls: Calls) -> None:
    server = lab_server(**{"turn.public_ip": ""})
    server.wait_for_log("relays are bound on and advertised as the local address each client")
    # b has no TURN of its own, only STUN: it reaches a's relay directly, which works only if
    # the relay's advertised address is one b can reach (not the server's loopback).
    a, b = calls.call(server, "udp", "stun")
    assert set(relays(a)) == {SERVER_IP}, a
    assert relays(b) == [], b
    assert a["local"]["type"] == "relay", a


def test_control_without_turn_fails(lab_server: StartServer, calls: Calls) -> None:
    """STUN only on both sides: two symmetric NATs defeat it (proof the NAT is real)."""
    server = lab_server()
    if calls.kind == "aiortc":
        callee = calls.start_peer("b", server, "200002", "--ice", "stun")
        callee.wait("registered")
        caller = calls.start_peer("a", server, "100001", "--ice", "stun", "--call", "200002")
        caller.wait("state", timeout=90, state="failed")
        assert "connected" not in caller.states() + callee.states()
        return
    a = calls.open_page("a", server, stun_only=True)
    b = calls.open_page("b", server, stun_only=True)
    a.wait_peer(b.id)
    a.call(b.id, "data", relay_only=False)
    b.accept()
    # Ended without connecting: ICE failed, or the page gave up on the call.
    for page in (a, b):
        page.page.wait_for_function(
            """() => window.__pcs.length > 0 && window.__pcs.every(
                   (pc) => ["failed", "closed"].includes(pc.connectionState))""",
            timeout=90000,
        )
        assert "connected" not in page.page.evaluate("() => window.__states")
