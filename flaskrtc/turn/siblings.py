"""The live relay ports of every worker process of one server, in a table they all map.

With ``[general] workers`` > 1 each worker owns its allocations and relay sockets, on its own
share of the relay port range. A client's peer is often another client's relay on this same
host, owned by a sibling worker; the peer policy lets such a peer through (RFC 8656 §9: a
relay of this server) and refuses every other address of the host. Each worker therefore
marks its live relay ports in a table of one byte per port, in a file the parent creates
and every worker maps (``mmap``): bit 0 is an IPv4 relay, bit 1 an IPv6 one. Only the owner
of a port (its share of the range) writes its byte, so no lock is needed; a read is one
byte, so the relay's hot path stays a few look-ups.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

PORTS = 65536
_BITS = {4: 1, 6: 2}


class RelayTable:
    """A byte per UDP port, shared by mapping one file: which ports hold a live relay."""

    def __init__(self, path: str | Path) -> None:
        """Map the table at ``path`` (made by :meth:`create`)."""
        self.path = Path(path)
        self._file = open(self.path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), PORTS)

    @classmethod
    def create(cls, folder: str | None = None) -> RelayTable:
        """A new, empty table in a fresh file (in ``/dev/shm`` where it exists: memory)."""
        if folder is None and Path("/dev/shm").is_dir():
            folder = "/dev/shm"
        fd, name = tempfile.mkstemp(prefix="flaskrtc-relays-", dir=folder)
        try:
            os.ftruncate(fd, PORTS)
        finally:
            os.close(fd)
        return cls(name)

    def mark(self, port: int, family: int, live: bool) -> None:
        """Set whether ``port`` holds a live relay of ``family`` (4 or 6)."""
        bit = _BITS[family]
        value = self._map[port]
        self._map[port] = (value | bit) if live else (value & ~bit)

    def clear(self, low: int, high: int) -> None:
        """Mark ``low..high`` (a worker's share, as it starts) free: a dead predecessor's
        relays died with it."""
        self._map[low : high + 1] = bytes(high - low + 1)

    def is_live(self, port: int, family: int) -> bool:
        """Whether ``port`` holds a live relay of ``family`` in any worker."""
        return 0 <= port < PORTS and bool(self._map[port] & _BITS[family])

    def close(self, *, unlink: bool = False) -> None:
        """Unmap; ``unlink`` (the parent, at the end) also removes the file."""
        self._map.close()
        self._file.close()
        if unlink:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


class SiblingRelays:
    """``(ip, port) in siblings``: a live relay of any worker of this server, at one of the
    host's own addresses (``hosts``: the core's set, which grows as relays are opened)."""

    __slots__ = ("hosts", "table")

    def __init__(self, table: RelayTable, hosts: set[str] | None = None) -> None:
        self.table = table
        self.hosts: set[str] = hosts if hosts is not None else set()

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, tuple) or len(address) < 2:
            return False
        ip, port = address[0], address[1]
        if not isinstance(ip, str) or not isinstance(port, int) or ip not in self.hosts:
            return False
        return self.table.is_live(port, 6 if ":" in ip else 4)
