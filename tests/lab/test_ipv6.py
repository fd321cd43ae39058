"""A client with IPv6 only calls a client with IPv4 only, through flaskrtc's TURN server.

``clic`` is a phone on an IPv6-only mobile network (no IPv4 address or route at all, behind a
stateful firewall that drops unsolicited inbound packets); ``clib`` is behind a symmetric
IPv4 NAT and has no IPv6. They share no address family, so no pair of their own addresses
can work: only a relay can join them (RFC 6156's case). The server listens on both families
(``bind = ::``, the default). The calls are of aiortc peers taking the Flutter apps' path
(``uris[0]`` of /api/turn, which names the TURN server by the family the client reached
/api/turn over), then of the web demo in Chromium (every URI). The IPv6-only client's
Allocate, sent over IPv6, asks for no address family, so its relay is IPv4 (RFC 8656 §7.2);
the IPv4 client's relay is IPv4 too. See netlab.py for the drawing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flaskrtc.tls import ensure_certificate
from tests.browser import WebPage
from tests.lab.conftest import SELECTED_PAIR, TURN_PORT, LabPeer, LabServer, chat_call
from tests.lab.netlab import CLIENT_IP6, NAT_WAN, SERVER_IP, SERVER_IP6, NetLab
from tests.lab.test_nat import relays

pytestmark = pytest.mark.lab

StartServer = Callable[..., LabServer]
StartPeer = Callable[..., LabPeer]
OpenPage = Callable[..., WebPage]
Report = dict[str, Any]

# The shipped defaults: HTTP(S) and TURN on every address of both families.
DUAL_STACK = {"general.bind": "::", "turn.bind": "::"}
BOTH_ADDRESSES = f"{SERVER_IP}, {SERVER_IP6}"


def family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def call(server: LabServer, start_peer: StartPeer, caller: str) -> tuple[Report, Report]:
    """``caller`` (``c`` or ``b``) calls the other; the ``gathered``, ``ice`` and ``pair``
    events of c and of b, once a text went both ways over the data channel."""
    callee = "b" if caller == "c" else "c"
    ids = {"b": "200002", "c": "300003"}
    answering = start_peer(callee, server, ids[callee], "--ice", "first")
    answering.wait("registered")
    calling = start_peer(caller, server, ids[caller], "--ice", "first", "--call", ids[callee])
    peers = {caller: calling, callee: answering}
    # Said first, before the call can fail (in seconds, not ICE's tens of seconds): c's relay
    # is the server's IPv4 address, the only one b can reach.
    c_relays = relays(peers["c"].wait("gathered"))
    assert c_relays == [SERVER_IP], f"the IPv6-only client's relays: {c_relays}"
    calling.wait("echoed", timeout=45)
    reports = []
    for side in ("c", "b"):
        peer = peers[side]
        assert "failed" not in peer.states(), peer.events
        reports.append({**peer.wait("pair"), "ice": peer.wait("ice")})
    return reports[0], reports[1]


def assert_relayed_across_families(c: Report, b: Report) -> None:
    """c (IPv6 only) and b (IPv4 only) talked through c's IPv4 relay, allocated over IPv6."""
    # Each was handed the TURN address of its own family first, and took it (uris[0]).
    assert c["ice"]["offered"][0] == f"turn:[{SERVER_IP6}]:{TURN_PORT}?transport=udp", c
    assert c["ice"]["chosen"] == c["ice"]["offered"][:1], c
    assert b["ice"]["offered"][0] == f"turn:{SERVER_IP}:{TURN_PORT}?transport=udp", b
    assert b["ice"]["chosen"] == b["ice"]["offered"][:1], b

    # No pair of their own addresses could work: c's are IPv6 alone, b's IPv4 alone.
    assert {family(x["ip"]) for x in c["candidates"] if x["type"] != "relay"} == {6}, c
    assert {family(x["ip"]) for x in b["candidates"]} == {4}, b

    # c: its relay is IPv4, on the server; it was allocated over IPv6 (the server saw c at
    # its IPv6 address, over a socket between the two IPv6 addresses); it carried the call.
    assert relays(c) == [SERVER_IP], c
    assert c["local"]["type"] == "relay" and c["local"]["ip"] == SERVER_IP, c
    assert c["local"]["related"] == CLIENT_IP6["c"], c  # its XOR-MAPPED-ADDRESS
    assert c["turn"]["local"][0] == CLIENT_IP6["c"], c
    assert c["turn"]["server"] == [SERVER_IP6, TURN_PORT], c
    # ...to b, at an IPv4 address: b's relay, or b's NAT (a peer-reflexive candidate).
    assert c["remote"]["ip"] in {SERVER_IP, NAT_WAN["b"]}, c

    # b: its relay is the server's IPv4 address too, reached over IPv4; it reached c's relay
    # (c has nothing else b could reach), through its own relay or straight through its NAT.
    assert relays(b) == [SERVER_IP], b
    assert b["remote"]["type"] == "relay" and b["remote"]["ip"] == SERVER_IP, b
    if b["local"]["type"] == "relay":
        assert b["turn"]["server"] == [SERVER_IP, TURN_PORT], b


def test_the_ipv6_only_client_has_no_ipv4(nat: NetLab) -> None:
    assert nat.ipv4_state("clic") == ""
    assert nat.run("clib", "ip", "-6", "-o", "addr", "show") == ""


@pytest.mark.parametrize(
    "public_ip", [BOTH_ADDRESSES, ""], ids=["public-ip-both", "public-ip-empty"]
)
def test_ipv6_only_calls_ipv4_only(
    lab_server: StartServer, lab_peer: StartPeer, tmp_path: Path, public_ip: str
) -> None:
    if not public_ip:
        # The certificate the server would make names [general] domain (the IPv4 address)
        # and public_ip: here, an operator's certificate for both addresses.
        certs = tmp_path / "srv" / "certs"
        ensure_certificate(certs / "cert.pem", certs / "key.pem", [SERVER_IP, SERVER_IP6])
    # Else the generated certificate names both addresses of public_ip, and c's HTTPS
    # to [2001:db8::10] is checked against it.
    server = lab_server(**DUAL_STACK, **{"turn.public_ip": public_ip})
    c, b = call(server, lab_peer, caller="c")
    assert_relayed_across_families(c, b)


def test_ipv4_only_calls_ipv6_only(lab_server: StartServer, lab_peer: StartPeer) -> None:
    server = lab_server(**DUAL_STACK, **{"turn.public_ip": BOTH_ADDRESSES})
    c, b = call(server, lab_peer, caller="b")
    assert_relayed_across_families(c, b)


# The selected pair's local candidate as Chromium's stats say it, with the URL of the ICE
# server a relay candidate came from (which TURN address it was allocated through).
LOCAL_OF_SELECTED_PAIR = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  const stats = await pc.getStats();
  let local = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      local = stats.get(stats.get(r.selectedCandidatePairId).localCandidateId);
    }
  });
  return local && {type: local.candidateType, ip: local.address, url: local.url || null,
                   relayProtocol: local.relayProtocol || null};
}
"""


def test_chromium_ipv6_only_calls_ipv4_only(lab_server: StartServer, lab_page: OpenPage) -> None:
    """The web demo in Chromium, opened at https://[2001:db8::10]:8086/ in c, calls the demo
    in b, with every URI of /api/turn (a browser's way): the same relay across families."""
    server = lab_server(**DUAL_STACK, **{"turn.public_ip": BOTH_ADDRESSES})
    c, b = lab_page("c", server), lab_page("b", server)
    chat_call(c, b, "hello from IPv6", "and back over IPv4")
    local_c = c.page.evaluate(LOCAL_OF_SELECTED_PAIR)
    assert local_c["type"] == "relay" and local_c["ip"] == SERVER_IP, local_c
    assert local_c["url"].startswith(f"turn:[{SERVER_IP6}]:{TURN_PORT}"), local_c
    pair_b = b.page.evaluate(SELECTED_PAIR)
    assert {family(x["ip"]) for x in pair_b["candidates"]} == {4}, pair_b
    assert pair_b["remote"]["type"] == "relay" and pair_b["remote"]["ip"] == SERVER_IP, pair_b
