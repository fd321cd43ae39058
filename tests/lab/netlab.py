"""The NAT lab: network namespaces with two symmetric NATs between two clients and a server,
and a third client with IPv6 only behind a stateful IPv6 firewall.

    198.19.1.2 clia ── lan 198.19.1.1 ┐                       ┌ 198.19.2.1 lan ── clib 198.19.2.2
                                     nata (symmetric NAT)   natb (symmetric NAT)
                                     wan 198.18.0.1 ─┐     ┌─ wan 198.18.0.2
                                                     inet (bridge br0)
                          srv 198.18.0.10, 2001:db8::10 ─┘     └─ wan 2001:db8::3
                          (flaskrtc)                               fwc (IPv6 firewall, no NAT)
                                                                   lan 2001:db8:3::1 ── clic
                                                                            2001:db8:3::2

Every interface, address, route and firewall rule lives inside namespaces this module makes
(``ip -n``, ``ip netns exec``); the root namespace gets none. IPv4 addresses are from
198.18.0.0/15 (RFC 2544's range for test networks) only, IPv6 ones from 2001:db8::/32 (RFC
3849, the documentation prefix) only. The NATs masquerade with ``fully-random`` (a new random
port for every new flow: endpoint-dependent mapping) and drop inbound packets that are not
replies (address-and-port-dependent filtering): a symmetric NAT, the kind that defeats STUN.

``clic`` is a phone on an IPv6-only mobile network: no IPv4 address (not even loopback's
127.0.0.1) and no IPv4 route, its /64 routed (not translated) to the internet segment by
``fwc``, which, like a carrier's firewall, lets out what ``clic`` starts and drops every
unsolicited inbound packet. Only ``srv``, ``fwc`` and ``clic`` have IPv6 on; the IPv4 clients
and their NATs have it off, so they are IPv4-only.

:meth:`NetLab.down` removes every namespace, and namespaces left by a killed earlier run (their
pid is gone) are removed on the next start.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

SERVER_IP = "198.18.0.10"
SERVER_IP6 = "2001:db8::10"
NAT_WAN = {"a": "198.18.0.1", "b": "198.18.0.2"}
CLIENT_IP = {"a": "198.19.1.2", "b": "198.19.2.2"}
_LAN_ROUTER = {"a": "198.19.1.1", "b": "198.19.2.1"}
# The IPv6-only client c: its /64 and the firewall routing it.
FW_WAN6 = "2001:db8::3"
CLIENT_IP6 = {"c": "2001:db8:3::2"}
_LAN_ROUTER6 = {"c": "2001:db8:3::1"}
_CLIENT_NET6 = {"c": "2001:db8:3::/64"}
IPV6_ONLY = frozenset(CLIENT_IP6)  # the client sides that have no IPv4 at all
_PREFIX = "frtclab"
_STALE = re.compile(rf"^{_PREFIX}(\d+)-")


class LabUnavailable(Exception):
    """The lab cannot be built here (not root, no ip/nft, no namespaces); says why."""


def _run(argv: Sequence[str], *, stdin: str | None = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def why_unavailable() -> str | None:
    """None if this machine can run the lab, else the reason."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package '{package}')"
    probe = f"{_PREFIX}{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except (RuntimeError, OSError) as err:
        return f"cannot create a network namespace: {err}"
    try:
        _run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"])
    except (RuntimeError, OSError) as err:
        return f"nftables does not work in a namespace: {err}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def remove_stale() -> None:
    """Delete lab namespaces whose creating process is gone (a run killed before cleanup)."""
    for line in _run(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.split() else ""
        found = _STALE.match(name)
        if found and not os.path.exists(f"/proc/{found.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def nat_ruleset(*, drop_udp: bool = False, drop_tcp_ports: Sequence[int] = ()) -> str:
    """The nftables rules of a NAT router: symmetric NAT from ``lan`` to ``wan``; optionally
    UDP, or some TCP destination ports, dropped on the way out (a network that blocks them)."""
    drops = []
    if drop_udp:
        drops.append('iifname "lan" meta l4proto udp drop')
    if drop_tcp_ports:
        ports = ", ".join(str(p) for p in drop_tcp_ports)
        drops.append(f'iifname "lan" tcp dport {{ {ports} }} drop')
    blocked = "\n        ".join(drops)
    return f"""flush ruleset
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade fully-random
    }}
}}
table inet filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        {blocked}
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
}}
"""


def firewall6_ruleset() -> str:
    """The nftables rules of the IPv6 firewall: routes ``lan`` to ``wan`` (no translation),
    lets replies back in and drops every other inbound packet, forwarded or for itself
    (neighbour discovery excepted, without which the link does not work)."""
    return """flush ruleset
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
        iifname "wan" drop
    }
}
"""


class NetLab:
    """The namespaces above; ``ns(name)`` is the full name of ``srv``, ``nata``, ``clia``..."""

    NAMES = ("inet", "srv", "nata", "natb", "clia", "clib", "fwc", "clic")
    _IPV6_ON = frozenset({"srv", "fwc", "clic"})

    def __init__(self) -> None:
        self.prefix = f"{_PREFIX}{os.getpid()}"
        self.created: list[str] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``name``."""
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def run(self, name: str, *argv: str, stdin: str | None = None) -> str:
        return _run(self.exec_argv(name, argv), stdin=stdin)

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.exec_argv(name, argv), text=True, **kwargs)

    def _ip(self, name: str, *args: str) -> None:
        _run(["ip", "-n", self.ns(name), *args])

    def up(self) -> None:
        """Build the whole lab; on any failure, remove what was made and raise."""
        remove_stale()
        try:
            for name in self.NAMES:
                _run(["ip", "netns", "add", self.ns(name)])
                self.created.append(self.ns(name))
                self._ip(name, "link", "set", "lo", "up")
                for scope in ("all", "default"):
                    if name in self._IPV6_ON:
                        # No duplicate address detection wait (the link-local addresses too).
                        for key in ("accept_dad=0", "accept_ra=0"):
                            self.run(name, "sysctl", "-qw", f"net.ipv6.conf.{scope}.{key}")
                    else:
                        # IPv4 only: no link-local IPv6 candidates, no DAD wait either.
                        setting = f"net.ipv6.conf.{scope}.disable_ipv6=1"
                        self.run(name, "sysctl", "-qw", setting)
            self._ip("inet", "link", "add", "br0", "type", "bridge")
            self._ip("inet", "link", "set", "br0", "up")
            self._wire("inet", "srv", "srv", "eth0", f"{SERVER_IP}/24", bridge=True)
            for side in ("a", "b"):
                nat, client = f"nat{side}", f"cli{side}"
                self._wire("inet", f"nat{side}", nat, "wan", f"{NAT_WAN[side]}/24", bridge=True)
                self._wire(nat, "lan", client, "eth0", f"{CLIENT_IP[side]}/24")
                self._ip(nat, "addr", "add", f"{_LAN_ROUTER[side]}/24", "dev", "lan")
                self._ip(nat, "link", "set", "lan", "up")
                self._ip(client, "route", "add", "default", "via", _LAN_ROUTER[side])
                self.run(nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                self.set_nat(side)
            self._ip("srv", "addr", "add", f"{SERVER_IP6}/64", "dev", "eth0", "nodad")
            self._up_ipv6_only("c")
        except BaseException:
            self.down()
            raise

    def _up_ipv6_only(self, side: str) -> None:
        """Client ``side`` with IPv6 alone, behind its firewall ``fw<side>``: the server
        routes the client's /64 to the firewall, as an operator's router would."""
        fw, client = f"fw{side}", f"cli{side}"
        self._wire("inet", fw, fw, "wan", f"{FW_WAN6}/64", bridge=True)
        self._wire(fw, "lan", client, "eth0", f"{CLIENT_IP6[side]}/64")
        self._ip(fw, "addr", "add", f"{_LAN_ROUTER6[side]}/64", "dev", "lan", "nodad")
        self._ip(fw, "link", "set", "lan", "up")
        self.run(fw, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self.run(fw, "nft", "-f", "-", stdin=firewall6_ruleset())
        self._ip(client, "-6", "route", "add", "default", "via", _LAN_ROUTER6[side])
        # Not even loopback's IPv4 address: the client cannot send or receive IPv4 at all.
        self._ip(client, "addr", "del", "127.0.0.1/8", "dev", "lo")
        self._ip("srv", "-6", "route", "add", _CLIENT_NET6[side], "via", FW_WAN6)

    def ipv4_state(self, name: str) -> str:
        """Namespace ``name``'s IPv4 addresses and routes, every table ("" when none)."""
        addresses = self.run(name, "ip", "-4", "-o", "addr", "show")
        routes = self.run(name, "ip", "-4", "route", "show", "table", "all")
        return (addresses + routes).strip()

    def _wire(
        self,
        here: str,
        here_if: str,
        there: str,
        there_if: str,
        address: str,
        *,
        bridge: bool = False,
    ) -> None:
        """A veth pair made inside ``here``, its other end moved to ``there`` with ``address``."""
        self._ip(
            here,
            "link",
            "add",
            here_if,
            "type",
            "veth",
            "peer",
            "name",
            there_if,
            "netns",
            self.ns(there),
        )
        if bridge:
            self._ip(here, "link", "set", here_if, "master", "br0")
        self._ip(here, "link", "set", here_if, "up")
        nodad = ["nodad"] if ":" in address else []
        self._ip(there, "addr", "add", address, "dev", there_if, *nodad)
        self._ip(there, "link", "set", there_if, "up")

    def set_nat(
        self, side: str, *, drop_udp: bool = False, drop_tcp_ports: Sequence[int] = ()
    ) -> None:
        """Replace NAT ``side``'s rules (``a`` or ``b``). The drops come before the rule that
        lets tracked flows through, so an earlier scenario's flows cannot pass them."""
        rules = nat_ruleset(drop_udp=drop_udp, drop_tcp_ports=drop_tcp_ports)
        self.run(f"nat{side}", "nft", "-f", "-", stdin=rules)

    def down(self) -> None:
        """Remove every namespace of this lab (processes inside should be stopped first)."""
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.created.clear()
