"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright cannot download its own browser here, so the tests use the
system's (``make test`` installs it with apt-get where it may). Where either
is missing, :func:`browser_or_skip` skips with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium on PATH (make test installs it with apt-get when run as root)")
    return path


async def launch(playwright: Any, profile: Path) -> Any:
    """A fresh persistent context (its own user-data-dir) in headless Chromium."""
    return await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=chromium_or_skip(),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000},
    )
