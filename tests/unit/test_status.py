"""The status page's history (flaskrtc/status.py): samples, the hour, bandwidth."""

from __future__ import annotations

from flaskrtc.status import History, Sample


def sample(t: float, peers: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> Sample:
    return Sample(t, peers, peers // 2, {"udp": peers, "tcp": 0, "tls": 1}, bytes_in, bytes_out)


def test_a_sample_is_due_every_period_from_the_last_one() -> None:
    history = History(every=10)
    assert history.due(0.0)
    history.record(sample(100.0))
    assert not history.due(109.9)
    assert history.due(110.0)


def test_the_history_keeps_one_hour_and_drops_the_oldest() -> None:
    history = History(every=10, span=3600)
    for k in range(400):
        history.record(sample(k * 10.0, peers=k))
    assert len(history.samples) == 361
    assert history.samples[0].peers == 400 - 361
    view = history.view(sample(3990.0, peers=399))
    assert view["series"]["t"][0] == -3600.0 and view["series"]["t"][-1] == 0.0


def test_bandwidth_is_bits_per_second_between_samples() -> None:
    history = History(every=10)
    history.record(sample(0.0, bytes_in=0, bytes_out=0))
    history.record(sample(10.0, bytes_in=1250, bytes_out=2500))
    view = history.view(sample(20.0, bytes_in=1250 + 12500, bytes_out=2500))
    assert view["series"]["in_bps"] == [0.0, 1000.0, 10000.0]
    assert view["series"]["out_bps"] == [0.0, 2000.0, 0.0]
    assert view["now"]["in_bps"] == 10000.0
    assert view["now"]["allocations"] == {"udp": 0, "tcp": 0, "tls": 1}


def test_a_counter_that_went_back_counts_as_no_traffic() -> None:
    history = History(every=10)
    history.record(sample(0.0, bytes_in=5000))
    view = history.view(sample(10.0, bytes_in=100))  # a restarted worker
    assert view["series"]["in_bps"] == [0.0, 0.0]


def test_the_current_numbers_are_the_last_point_once() -> None:
    history = History(every=10)
    current = sample(10.0, peers=3)
    history.record(sample(0.0, peers=1))
    history.record(current)
    view = history.view(current)
    assert view["series"]["peers"] == [1, 3]
    assert view["now"]["peers"] == 3 and view["now"]["calls"] == 1
