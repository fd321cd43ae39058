"""Settings of the unit tests' property tests."""

from __future__ import annotations

from hypothesis import settings

# No per-example deadline (hypothesis's default is 200 ms): on a loaded 2-core machine, a
# slow example is not a failure, and a deadline miss turned a passing property test flaky.
settings.register_profile("flaskrtc", deadline=None)
settings.load_profile("flaskrtc")
