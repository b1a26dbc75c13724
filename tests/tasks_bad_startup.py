"""A task module whose on_startup hook fails, for the worker's exit code 2."""

from __future__ import annotations

from typing import Any


def on_startup(ctx: dict[str, Any]) -> None:
    raise ConnectionRefusedError("the database is not there")
