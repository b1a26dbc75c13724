"""Headless Chromium driven by Playwright: Debian's ``chromium``, a fresh profile.

Playwright cannot download its own browser here, so the system's is used
(``make test`` installs it with apt-get where it may). Shared by the
browser tests and ``python -m examples.status_page --screenshot``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium")


async def launch(playwright: Any, profile: Path, executable: str) -> Any:
    """A persistent context with its own user-data-dir ``profile``, headless."""
    return await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=executable,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000},
    )
