"""Sans-I/O limits for the HTTP side: token buckets per client, connection caps, quiet logs.

Nothing here reads a clock or touches a socket: every call takes ``now`` (seconds, any
monotonic origin) and returns a decision, so the rules are unit-tested without sleeping.
The shells (``flaskrtc.server``, ``flaskrtc.app``, ``flaskrtc.signal.server``) ask and obey.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

# Buckets kept at most by one RateLimiter; beyond it the least recently used one is forgotten
# (a forgotten client simply starts again with a full bucket).
DEFAULT_MAX_KEYS = 65536


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, count: float = 1.0) -> bool:
        """Spend ``count`` tokens if there are that many; False (nothing spent) if not."""
        self._refill(now)
        if self.tokens >= count:
            self.tokens -= count
            return True
        return False

    def retry_after(self, now: float, count: float = 1.0) -> float:
        """Seconds until ``count`` tokens are there (0 if they are now)."""
        self._refill(now)
        missing = count - self.tokens
        return max(0.0, missing / self.rate)

    def full(self, now: float) -> bool:
        """True when the bucket is as if it had never been used (it can be forgotten)."""
        return self.tokens + max(0.0, now - self.stamp) * self.rate >= self.burst


class RateLimiter:
    """One :class:`TokenBucket` per key (a client IP), with bounded memory.

    ``rate`` 0 turns the limiter off. Memory: at most ``max_keys`` buckets; buckets that have
    filled up again are dropped first (they hold no information), then the least recently
    used one.
    """

    def __init__(
        self, rate: float, burst: float | None = None, *, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, 2 * rate)
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when ``rate`` is 0: every request is allowed."""
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: Hashable, now: float) -> float:
        """Count one request from ``key``: 0.0 if allowed, else the seconds to wait (> 0)."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            return 0.0
        return max(bucket.retry_after(now), 1e-3)

    def _make_room(self, now: float) -> None:
        # Oldest first: the least recently used buckets are the likeliest to be full again,
        # and a full one holds no information. Shedding two per new key keeps idle buckets
        # from piling up; at the cap the least recently used one goes even if not full.
        if len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)
        for _ in range(2):
            if not self._buckets:
                break
            key, bucket = next(iter(self._buckets.items()))
            if not bucket.full(now):
                break
            del self._buckets[key]


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value (RFC 9110 §10.2.3: whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True)
class Refusal:
    """Why a connection was refused: which cap, and its value."""

    cap: str  # "max_connections" or "max_connections_per_ip"
    limit: int

    def __str__(self) -> str:
        return f"[general] {self.cap} = {self.limit} reached"


class ConnectionLimits:
    """Live connections in total and per client IP; 0 means unlimited.

    :meth:`admit` before a connection is handled, :meth:`release` exactly once when it ends.
    Memory is one counter per IP with a live connection.
    """

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        if max_total < 0 or max_per_ip < 0:
            raise ValueError("connection caps must not be negative")
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}

    def count(self, ip: str) -> int:
        """Live connections from ``ip``."""
        return self._per_ip.get(ip, 0)

    def admit(self, ip: str, *, per_ip: bool = True) -> Refusal | None:
        """Take a slot for a connection from ``ip``; a :class:`Refusal` if a cap is reached.
        ``per_ip`` False: only the total cap applies (the connection is still counted)."""
        if self.max_total and self.total >= self.max_total:
            return Refusal("max_connections", self.max_total)
        held = self._per_ip.get(ip, 0)
        if per_ip and self.max_per_ip and held >= self.max_per_ip:
            return Refusal("max_connections_per_ip", self.max_per_ip)
        self.total += 1
        self._per_ip[ip] = held + 1
        return None

    def release(self, ip: str) -> None:
        """Give back the slot of a connection from ``ip`` that has ended."""
        held = self._per_ip.get(ip, 0)
        if held <= 0:
            return  # never admitted (or released twice): nothing to give back
        self.total -= 1
        if held == 1:
            del self._per_ip[ip]
        else:
            self._per_ip[ip] = held - 1


class LogThrottle:
    """At most one log line per ``interval`` seconds for one kind of event.

    :meth:`ready` says whether to log now and how many events were kept quiet since the last
    line, so a flood costs one line per interval that still says how big it was.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next = -math.inf
        self._quiet = 0

    def ready(self, now: float) -> int | None:
        """None: stay quiet (counted); else the number of events suppressed before this one."""
        if now < self._next:
            self._quiet += 1
            return None
        self._next = now + self.interval
        quiet, self._quiet = self._quiet, 0
        return quiet
