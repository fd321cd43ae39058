"""Shared settings of the property/fuzz tests (tests/unit/test_fuzz_*.py).

The default budget is small, so that ``make test`` stays fast: a few seconds per file, and
derandomized, so a run is repeatable and the coverage checks ("Allocate succeeded at least
once") cannot flake. ``FLASKRTC_FUZZ_EXAMPLES=N`` raises every budget to N examples and
draws fresh random inputs each run; ``make fuzz`` uses it when atheris is not available.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

_OVERRIDE = os.environ.get("FLASKRTC_FUZZ_EXAMPLES", "").strip()
# Set once at import: the whole run uses one budget.
OVERRIDDEN = bool(_OVERRIDE)


def examples(default: int) -> int:
    """``default``, or FLASKRTC_FUZZ_EXAMPLES when set."""
    if not OVERRIDDEN:
        return default
    try:
        return max(1, int(_OVERRIDE))
    except ValueError:
        raise ValueError(f"FLASKRTC_FUZZ_EXAMPLES={_OVERRIDE!r}: expected an integer") from None


def fuzz_settings(default: int, *, steps: int = 50) -> settings:
    """Hypothesis settings for a fuzz test of ``default`` examples (see the module doc)."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=not OVERRIDDEN,
        database=None,
        stateful_step_count=steps,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        print_blob=True,
    )


class Outcomes(Counter[str]):
    """Names of the paths a fuzz run reached, counted: a test asserts the interesting ones
    were reached at all (a fuzzer that only ever sees 401s proves nothing)."""

    def missing(self, *names: str) -> list[str]:
        """The ``names`` never counted."""
        return [name for name in names if not self[name]]
