"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright cannot download its own browser here, so the tests use the
system's (``make test`` installs it with apt-get where it may). Where either
is missing, :func:`chromium_or_skip` skips with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import browser


def chromium_or_skip() -> str:
    path = browser.chromium_path()
    if path is None:
        pytest.skip("no chromium on PATH (make test installs it with apt-get when run as root)")
    return path


async def launch(playwright: Any, profile: Path) -> Any:
    """A fresh persistent context (its own user-data-dir) in headless Chromium."""
    return await browser.launch(playwright, profile, chromium_or_skip())
