"""Fixtures of the browser tests (helpers are in tests/browser/__init__.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import CHROMIUM_FLAGS, chromium_path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's) for a test module; test_web.py and test_check.py have
    their own, which need more than this."""
    from playwright import sync_api

    with sync_api.sync_playwright() as running:
        launched = running.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()
