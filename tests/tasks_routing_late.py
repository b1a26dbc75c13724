"""A task no worker serves until the routing test starts one with this module."""

from __future__ import annotations

import os

from worker import task


@task
async def deployed_late(value: int) -> dict[str, int]:
    return {"pid": os.getpid(), "value": value}
