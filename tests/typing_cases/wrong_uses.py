"""Wrong uses of task handles: each line marked ``# E: code`` must be a mypy error of that code.

Not imported, and excluded from the project's mypy run (``pyproject.toml``);
``tests/test_typed_handles.py`` checks it through mypy's API.
"""

from __future__ import annotations

from broker import Client, Job, TaskRef
from worker import task


@task
async def add(a: int, b: int) -> int:
    return a + b


@task(name="greet")
def greet(name: str) -> str:
    return f"hello {name}"


add_by_name = TaskRef[[int, int], int]("add")


async def wrong(client: Client) -> None:
    await add.submit(client, "x", 2)  # E: arg-type
    await add.submit(client, 1)  # E: call-arg
    await add.submit(client, 1, 2, 3)  # E: call-arg
    await add.submit(1, 2)  # E: arg-type
    await add.submit(client, 1, c=2)  # E: call-arg
    add.options(queue=1)  # E: arg-type
    add.options(colour="blue")  # E: call-arg
    add.spec("1", 2)  # E: arg-type
    await add_by_name.submit(client, 1.5, 2)  # E: arg-type
    job: Job[str] = await add.submit(client, 1, 2)  # E: assignment
    text: str = await (await add.submit(client, 1, 2)).result()  # E: assignment
    number: int = greet("x")  # E: assignment
    greet(5)  # E: arg-type
    await greet.submit(client, name=5)  # E: arg-type
    print(job, text, number)
