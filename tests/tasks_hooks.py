"""A task module with lifecycle hooks, for ``python -m worker tests.tasks_hooks``."""

from __future__ import annotations

from typing import Any

from worker import current_job, task, task_context


async def on_startup(ctx: dict[str, Any]) -> None:
    ctx["greeting"] = "hello from on_startup"


def on_shutdown(ctx: dict[str, Any]) -> None:
    ctx.pop("greeting", None)


@task(name="hooks.greet")
def greet() -> dict[str, Any]:
    job = current_job()
    return {"greeting": task_context()["greeting"], "queue": job.queue, "attempt": job.attempt}
