"""Per-key token buckets with bounded memory (sans-I/O: the time is passed in).

Used to cap what a source IP can get from the TURN server without authenticating (so it
cannot be used to reflect traffic at a spoofed address) and how many authentication failures
of one source are logged.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """``allow(key, now)`` is True while ``key`` has a token: ``burst`` at first, refilled
    at ``rate`` per second. ``rate`` 0 turns the limit off. At most ``max_keys`` buckets
    are kept: when the table is full the least recently used one goes (an evicted key that
    comes back starts with a full bucket, which costs an attacker ``max_keys`` fresh
    sources within the refill time to achieve, and still bounds every key to ``burst``)."""

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be >= 0, burst >= 1 and max_keys >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, time

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Take one token of ``key`` at ``now``; False when its bucket is empty."""
        if not self.rate:
            return True
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            tokens = self.burst
        else:
            tokens, last = entry
            # A clock stepping back refills nothing (and takes nothing away).
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            buckets.move_to_end(key)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return True
        buckets[key] = (tokens, now)
        return False
