"""Reload (SIGHUP): which settings a running server takes over, and which need a restart.

Pure: configs in, key names and configs out. :mod:`flaskrtc.server` reads the config again,
asks here what changed, and hands the new settings objects to the parts that use them.

A key is reloadable when changing it cannot break what is live: a quota or a peer rule
governs the next request only, a credential TTL the next credential, a certificate the next
handshake. Anything else (ports, bind addresses, TLS on or off, workers, the cluster, the
relay port range, the TURN realm and secret, which live allocations are signed with) is
named in a warning and left as it is running. A key missing from :data:`RELOADABLE` needs a
restart: a new key is safe by default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

from flaskrtc.config import Config

# "section.name" as in the INI file; log_level is [general] log_level.
RELOADABLE = frozenset(
    {
        "log_level",
        # The next TLS handshakes (HTTPS and TURN over TLS) get the certificate: see
        # flaskrtc.server; the files are read again on every reload, changed paths or not.
        "general.cert",
        "general.key",
        "general.domain",  # the turns: URI host in /api/turn
        "general.rate_limit",  # /api/turn and /ws per IP: a new limiter
        "auth.secret",  # checked when a client connects; open WebSockets stay
        "turn.ttl",  # of the credentials /api/turn hands out from now on
        "turn.servers",  # the other TURN servers' URIs in /api/turn
        "turn.users",  # static users: checked on each request (a removed user's refresh fails)
        "turn.denied_peer_ip",  # new permissions and their refreshes
        "turn.allowed_peer_ip",
        "turn.user_quota",  # new allocations; live ones over a lowered quota stay
        "turn.ip_quota",
        "turn.total_quota",
        "turn.unauth_rate",
        "turn.unauth_burst",
        "turn.max_permissions",
        "turn.max_channels",
        "turn.max_lifetime",  # asked for by the next Allocate or Refresh
        "turn.default_lifetime",
    }
)
_SECTIONS = ("general", "turn", "auth", "cluster")


def settings(config: Config) -> dict[str, Any]:
    """Every key of ``config`` ("section.name", and "log_level") with its value."""
    flat: dict[str, Any] = {"log_level": config.log_level}
    for section in _SECTIONS:
        values = getattr(config, section)
        for field in dataclasses.fields(values):
            flat[f"{section}.{field.name}"] = getattr(values, field.name)
    return flat


def changed(old: Config, new: Config) -> list[str]:
    """The keys whose value differs, in the order of the config's sections."""
    before, after = settings(old), settings(new)
    return [key for key, value in after.items() if before[key] != value]


def restart_needed(started: Config, new: Config) -> list[str]:
    """The keys of ``new`` that differ from the config the server started with and that
    only a restart applies (compared with what was loaded, not with what runs: a port 0
    runs as the port it got)."""
    return [key for key in changed(started, new) if key not in RELOADABLE]


def merge(running: Config, new: Config) -> Config:
    """``running`` with the reloadable keys of ``new``: every other key keeps its running
    value (a changed port is not half-applied)."""
    after = settings(new)
    sections: dict[str, Any] = {}
    for section in _SECTIONS:
        values = getattr(running, section)
        updates = {
            field.name: after[f"{section}.{field.name}"]
            for field in dataclasses.fields(values)
            if f"{section}.{field.name}" in RELOADABLE
        }
        sections[section] = dataclasses.replace(values, **updates)
    return dataclasses.replace(running, log_level=new.log_level, **sections)


# What tells a file's versions apart: modification time, size and inode (a renewal that
# renames a new file into place changes the inode even within one timestamp tick); None
# while the file is missing.
Signature = tuple[int, int, int] | None


def signature(path: str, stat: Callable[[str], os.stat_result] = os.stat) -> Signature:
    """``path``'s :data:`Signature`."""
    try:
        found = stat(path)
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


class FileWatch:
    """Which of some files changed since the last reload, for ``[general] reload_watch``.

    :meth:`due` is called every interval. It names the changed files only once they look
    the same at two calls in a row: a certificate and its key written one after the other,
    or a config file an editor is still writing, are reloaded once they are complete, not
    half-way. ``stat`` is injectable for tests.
    """

    def __init__(
        self, paths: Iterable[str], stat: Callable[[str], os.stat_result] = os.stat
    ) -> None:
        self.stat = stat
        self.paths: tuple[str, ...] = ()
        self._applied: tuple[Signature, ...] = ()
        self._last: tuple[Signature, ...] = self._applied
        self.retarget(paths)

    def retarget(self, paths: Iterable[str]) -> None:
        """Watch ``paths`` from now on, as they are now (after a reload that moved them);
        nothing changes when they are the paths already watched."""
        paths = tuple(dict.fromkeys(paths))
        if paths == self.paths:
            return
        self.paths = paths
        self._applied = self._look()
        self._last = self._applied

    def _look(self) -> tuple[Signature, ...]:
        return tuple(signature(path, self.stat) for path in self.paths)

    def due(self) -> list[str]:
        """The files that changed since the last reload and have settled; empty: no reload."""
        now = self._look()
        settled, self._last = now == self._last, now
        if not settled or now == self._applied:
            return []
        changed = [p for p, a, b in zip(self.paths, self._applied, now, strict=True) if a != b]
        self._applied = now
        return changed
