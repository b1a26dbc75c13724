"""Typed uses of task handles: ``mypy --strict`` must pass on this file, and the suite runs it.

``tests/test_typed_handles.py`` type-checks this file through mypy's API
(and it is in the project's mypy run), then calls :func:`use` against a
broker and a worker in the test's own program.
"""

from __future__ import annotations

from typing import Any, assert_type

from broker import Client, Job, TaskRef, task_ref
from worker import TaskRegistry, task

REGISTRY = TaskRegistry()


@task(registry=REGISTRY)
async def add(a: int, b: int) -> int:
    return a + b


@task(registry=REGISTRY, name="typed.pair", queue="typed")
def pair(left: str, right: str = "") -> tuple[str, str]:
    return (left, right)


# A producer that must not import the module the task lives in.
add_by_name = TaskRef[[int, int], int]("add")


@task_ref
def add_stub(a: int, b: int) -> int:  # the name is the task's: "add_stub" here
    raise NotImplementedError  # never runs: only the signature matters


async def use(client: Client) -> dict[str, Any]:
    """Every typed use once; returns what the runtime test checks."""
    assert_type(await add(1, 2), int)  # still the function
    assert_type(pair("a"), tuple[str, str])

    job = await add.submit(client, 1, 2)
    assert_type(job, Job[int])
    total = await job.result(timeout=30)
    assert_type(total, int)

    urgent = await add.options(priority=5, max_attempts=2).submit(client, a=3, b=4)
    assert_type(urgent, Job[int])

    by_name = await add_by_name.submit(client, 5, 6)
    assert_type(await by_name.result(timeout=30), int)

    jobs = await client.submit_many([add.spec(i, i) for i in range(3)])
    sums = [await j.result(timeout=30) for j in jobs]
    typed_jobs = [await add.submit(client, i, 1) for i in range(2)]
    async for done in client.as_completed(typed_jobs):
        assert_type(done, Job[int])

    # The msgpack round trip: the tuple comes back as a list, whatever the type says.
    paired = await (await pair.submit(client, "x", right="y")).result(timeout=30)

    untyped: Job = await client.submit("add", [7, 8])  # a bare Job is Job[Any]
    anything: Any = await untyped.result(timeout=30)

    stub: TaskRef[[int, int], int] = add_stub
    return {
        "total": total,
        "urgent": await urgent.result(timeout=30),
        "by_name": await by_name.result(timeout=30),
        "sums": sums,
        "paired": paired,
        "untyped": anything,
        "stub": stub.name,
    }
