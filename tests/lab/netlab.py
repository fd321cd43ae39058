"""The NAT lab: network namespaces with two symmetric NATs between two clients and a server.

    198.19.1.2 clia ── lan 198.19.1.1 ┐                       ┌ 198.19.2.1 lan ── clib 198.19.2.2
                                     nata (symmetric NAT)   natb (symmetric NAT)
                                     wan 198.18.0.1 ─┐     ┌─ wan 198.18.0.2
                                                     inet (bridge br0)
                                                     srv 198.18.0.10 (flaskrtc)

Every interface, address, route and firewall rule lives inside namespaces this module makes
(``ip -n``, ``ip netns exec``); the root namespace gets none. Addresses are from 198.18.0.0/15
(RFC 2544's range for test networks) only. The NATs masquerade with ``fully-random`` (a new
random port for every new flow: endpoint-dependent mapping) and drop inbound packets that are
not replies (address-and-port-dependent filtering): a symmetric NAT, the kind that defeats STUN.

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
NAT_WAN = {"a": "198.18.0.1", "b": "198.18.0.2"}
CLIENT_IP = {"a": "198.19.1.2", "b": "198.19.2.2"}
_LAN_ROUTER = {"a": "198.19.1.1", "b": "198.19.2.1"}
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


class NetLab:
    """The namespaces above; ``ns(name)`` is the full name of ``srv``, ``nata``, ``clia``..."""

    NAMES = ("inet", "srv", "nata", "natb", "clia", "clib")

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
                # IPv4 only: no link-local IPv6 candidates, no duplicate address detection wait.
                for scope in ("all", "default"):
                    self.run(name, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
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
        except BaseException:
            self.down()
            raise

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
        self._ip(there, "addr", "add", address, "dev", there_if)
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
