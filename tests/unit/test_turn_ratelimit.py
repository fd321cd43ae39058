"""Token buckets per key (the unauthenticated reply limit, the auth failure log budget)."""

from __future__ import annotations

import pytest

from flaskrtc.turn.ratelimit import TokenBuckets


def allowed(buckets: TokenBuckets, key: str, now: float, times: int) -> int:
    return sum(buckets.allow(key, now) for _ in range(times))


def test_burst_then_rate() -> None:
    buckets = TokenBuckets(rate=10, burst=20)
    assert allowed(buckets, "a", 0.0, 25) == 20
    assert allowed(buckets, "a", 0.05, 5) == 0  # half a token
    assert allowed(buckets, "a", 0.1, 5) == 1  # one token after 0.1 s
    assert allowed(buckets, "a", 0.6, 10) == 5
    assert allowed(buckets, "a", 100.0, 30) == 20  # refilled up to the burst, not beyond


def test_keys_are_independent() -> None:
    buckets = TokenBuckets(rate=1, burst=2)
    assert allowed(buckets, "a", 0.0, 5) == 2
    assert allowed(buckets, "b", 0.0, 5) == 2
    assert len(buckets) == 2


def test_a_clock_stepping_back_refills_nothing() -> None:
    buckets = TokenBuckets(rate=1, burst=3)
    assert allowed(buckets, "a", 100.0, 3) == 3
    assert allowed(buckets, "a", 50.0, 3) == 0
    assert allowed(buckets, "a", 51.0, 3) == 1


def test_table_is_bounded_and_drops_the_least_recently_used() -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_keys=3)
    for key in "abc":
        assert buckets.allow(key, 0.0)
    assert buckets.allow("a", 0.0) is False  # "a" is now the most recently used
    assert buckets.allow("d", 0.0)  # evicts "b"
    assert len(buckets) == 3
    assert buckets.allow("a", 0.0) is False  # kept: still empty
    assert buckets.allow("b", 0.0) is True  # evicted: starts full again
    for i in range(1000):
        buckets.allow(f"k{i}", 0.0)
    assert len(buckets) == 3


def test_rate_zero_is_off_and_keeps_no_state() -> None:
    buckets = TokenBuckets(rate=0, burst=1)
    assert allowed(buckets, "a", 0.0, 100) == 100
    assert len(buckets) == 0


@pytest.mark.parametrize(("rate", "burst", "keys"), [(-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bad_parameters(rate: float, burst: float, keys: int) -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate, burst, keys)


def test_one_key_table_is_allowed_and_evicts_on_every_new_key() -> None:
    buckets = TokenBuckets(1.0, 1, max_keys=1)
    assert buckets.allow("a", 0.0) and not buckets.allow("a", 0.0)
    assert buckets.allow("b", 0.0)  # "a" is evicted ...
    assert len(buckets) == 1 and buckets.allow("a", 0.0)  # ... and comes back full


def test_default_table_keeps_ten_thousand_keys() -> None:
    buckets = TokenBuckets(1.0, 1)
    for i in range(10_000):
        assert buckets.allow(str(i), 0.0)
    assert len(buckets) == 10_000 and not buckets.allow("0", 0.0)  # "0" is still there
    assert buckets.allow("new", 0.0)
    assert len(buckets) == 10_000 and not buckets.allow("0", 0.0)  # "1" went, not "0"
    assert buckets.allow("1", 0.0)
