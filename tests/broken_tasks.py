"""A task module that fails while importing, for the worker's exit code 2."""

from __future__ import annotations

raise RuntimeError("this task module is broken on purpose")
