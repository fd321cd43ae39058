"""The sans-I/O limits of the HTTP side: token buckets, per-IP rate limits with bounded memory,
connection caps and the log throttle. Time is passed in; nothing sleeps."""

from __future__ import annotations

import pytest

from flaskrtc.ratelimit import (
    ConnectionLimits,
    LogThrottle,
    RateLimiter,
    Refusal,
    TokenBucket,
    retry_after_header,
)


def test_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=4.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [True, True, True, True, False]
    assert bucket.retry_after(100.0) == pytest.approx(0.5)
    assert not bucket.take(100.4)
    assert bucket.take(100.5)  # one token after 0.5 s at 2/s
    assert not bucket.take(100.5)
    # Never more than the burst, however long it rests.
    assert bucket.take(1000.0, 4)
    assert not bucket.take(1000.0)


def test_bucket_take_many_is_all_or_nothing() -> None:
    bucket = TokenBucket(rate=10.0, burst=20.0, now=0.0)
    assert not bucket.take(0.0, 21)
    assert bucket.take(0.0, 20)  # the refused take spent nothing
    assert bucket.retry_after(0.0, 5) == pytest.approx(0.5)
    assert not bucket.full(0.0)
    assert bucket.full(2.0)


def test_bucket_time_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=50.0)
    assert bucket.take(50.0)
    assert not bucket.take(10.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 2), (1, 0.5)])
def test_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_limiter_burst_is_twice_the_rate_per_key() -> None:
    limiter = RateLimiter(20)
    assert all(limiter.check("a", 0.0) == 0.0 for _ in range(40))
    wait = limiter.check("a", 0.0)
    assert wait == pytest.approx(0.05)  # one request per 1/20 s
    assert limiter.check("b", 0.0) == 0.0  # another client has its own bucket
    assert limiter.check("a", 0.05) == 0.0


def test_limiter_off_allows_everything_and_keeps_nothing() -> None:
    limiter = RateLimiter(0)
    assert not limiter.enabled
    assert all(limiter.check(str(i % 3), 0.0) == 0.0 for i in range(10_000))
    assert len(limiter) == 0


def test_limiter_memory_is_bounded_under_a_flood_of_addresses() -> None:
    limiter = RateLimiter(5, max_keys=100)
    for i in range(10_000):
        limiter.check(f"10.0.{i // 256}.{i % 256}", i * 1e-4)
        assert len(limiter) <= 100
    # The newest clients are still limited: their buckets were kept, the oldest forgotten.
    key = "10.0.39.15"  # i == 9999
    assert all(limiter.check(key, 1.0) == 0.0 for _ in range(9))
    assert limiter.check(key, 1.0) > 0


def test_limiter_sheds_refilled_buckets_before_it_is_full() -> None:
    limiter = RateLimiter(1, max_keys=1000)
    for i in range(50):
        limiter.check(f"old{i}", 0.0)
    # Much later every old bucket is full again: new keys push them out two at a time.
    for i in range(30):
        limiter.check(f"new{i}", 100.0)
    # 25 new keys shed the 50 old ones; the new ones are not full and are kept.
    assert len(limiter) == 30
    assert all(limiter.check(f"new{i}", 100.0) == 0.0 for i in range(30))  # one token left
    assert all(limiter.check(f"new{i}", 100.0) > 0 for i in range(30))


def test_retry_after_header_is_whole_seconds_at_least_one() -> None:
    assert retry_after_header(0.001) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"
    assert retry_after_header(0) == "1"


def test_connection_caps_total_and_per_ip() -> None:
    limits = ConnectionLimits(max_total=3, max_per_ip=2)
    assert limits.admit("1.1.1.1") is None
    assert limits.admit("1.1.1.1") is None
    assert limits.admit("1.1.1.1") == Refusal("max_connections_per_ip", 2)
    assert limits.admit("2.2.2.2") is None
    assert limits.admit("3.3.3.3") == Refusal("max_connections", 3)
    assert str(Refusal("max_connections", 3)) == "[general] max_connections = 3 reached"
    assert (limits.total, limits.count("1.1.1.1")) == (3, 2)
    limits.release("1.1.1.1")
    assert limits.admit("3.3.3.3") is None
    assert limits.admit("1.1.1.1") == Refusal("max_connections", 3)


def test_connection_caps_zero_is_unlimited_and_memory_follows_live_connections() -> None:
    limits = ConnectionLimits(0, 0)
    for i in range(5000):
        assert limits.admit(f"ip{i % 7}") is None
    assert limits.total == 5000
    for i in range(5000):
        limits.release(f"ip{i % 7}")
    assert limits.total == 0
    assert [limits.count(f"ip{i}") for i in range(7)] == [0] * 7
    assert limits._per_ip == {}  # nothing kept for addresses without a live connection


def test_release_without_admit_changes_nothing() -> None:
    limits = ConnectionLimits(1, 1)
    limits.release("9.9.9.9")
    assert limits.total == 0
    assert limits.admit("9.9.9.9") is None
    limits.release("9.9.9.9")
    limits.release("9.9.9.9")  # a second release of the same slot
    assert limits.total == 0
    assert limits.admit("8.8.8.8") is None


def test_log_throttle_one_line_per_interval_with_the_count() -> None:
    throttle = LogThrottle(10.0)
    assert throttle.ready(0.0) == 0
    assert [throttle.ready(t) for t in (0.1, 1.0, 9.9)] == [None, None, None]
    assert throttle.ready(10.0) == 3
    assert throttle.ready(15.0) is None
    assert throttle.ready(100.0) == 1
