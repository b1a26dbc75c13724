"""Typed task handles: what mypy accepts and refuses, and what they do at run time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mypy import api as mypy_api

from broker import Broker, Client, TaskRef
from harness.processes import ROOT
from tests.inprocess import running_broker
from tests.typing_cases import typed_uses
from worker import AsyncTask, Task, TaskRegistry, Worker, task

CASES = Path(__file__).parent / "typing_cases"
WAIT = 30.0


def mypy_errors(path: Path) -> tuple[int, list[tuple[int, str]]]:
    """mypy --strict on one file, with the project's settings: (exit status, [(line, code)])."""
    stdout, stderr, status = mypy_api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--strict", "--no-pretty", str(path)]
    )
    assert not stderr, stderr
    errors = [
        (int(match[1]), match[2])
        for match in re.finditer(r"^[^:\n]+:(\d+): error: .*\[([a-z-]+)\]$", stdout, re.M)
    ]
    return status, errors


def test_the_typed_uses_pass_mypy_strict() -> None:
    status, errors = mypy_errors(CASES / "typed_uses.py")
    assert (status, errors) == (0, [])


def test_each_wrong_use_is_the_error_it_is_marked_with() -> None:
    path = CASES / "wrong_uses.py"
    expected = [
        (number, match[1])
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if (match := re.search(r"# E: ([a-z-]+)$", line))
    ]
    assert len(expected) >= 10
    status, errors = mypy_errors(path)
    assert status == 1
    # Every marked line fails with its code, and no other line fails.
    assert {line for line, _ in errors} == {line for line, _ in expected}
    assert set(expected) <= set(errors)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with running_broker() as broker:
        yield broker


async def test_the_typed_uses_run(broker: Broker) -> None:
    worker = Worker(broker.address, registry=typed_uses.REGISTRY, queues=["default", "typed"])
    async with Client(broker.address) as client:
        run = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(WAIT):
                seen = await typed_uses.use(client)
        finally:
            worker.stop_now()
            await asyncio.wait_for(run, WAIT)
    assert seen == {
        "total": 3,
        "urgent": 7,
        "by_name": 11,
        "sums": [0, 2, 4],
        "paired": ["x", "y"],  # a tuple, after msgpack: a list
        "untyped": 15,
        "stub": "add_stub",
    }


async def test_options_and_specs_carry_to_the_broker(broker: Broker) -> None:
    async with Client(broker.address) as client:
        ref = typed_uses.add.options(queue="nobody", priority=4, job_id="typed-1", lease=9)
        job = await ref.submit(client, 1, 2)
        status = await client.status(job.id)
        assert (job.id, status["queue"], status["priority"]) == ("typed-1", "nobody", 4)
        # The task's own queue is the handle's default, and options override it.
        pair = await typed_uses.pair.submit(client, "a")
        assert (await client.status(pair.id))["queue"] == "typed"
        elsewhere = await typed_uses.pair.options(queue="other").submit(client, "a")
        assert (await client.status(elsewhere.id))["queue"] == "other"
    assert typed_uses.add.spec(1, b=2) == {"task": "add", "args": [1], "kwargs": {"b": 2}}
    assert ref.spec(1, 2)["queue"] == "nobody"
    assert ref.options(priority=1).bound_options["priority"] == 1
    assert typed_uses.add.bound_options == {}  # options() returned new references


def test_a_handle_is_the_function_and_registers_it() -> None:
    registry = TaskRegistry()

    @task(registry=registry, name="twice", timeout=5)
    def double(x: int) -> int:
        """Doubles."""
        return 2 * x

    @task(registry=registry)
    async def nothing() -> None:
        return None

    assert isinstance(double, Task) and isinstance(nothing, AsyncTask)
    assert isinstance(double, TaskRef)
    assert double(4) == 8
    assert double.__doc__ == "Doubles." and double.__wrapped__.__name__ == "double"  # type: ignore[attr-defined]
    assert double.name == "twice"
    definition = registry.get("twice")
    assert definition is not None and definition.timeout == 5 and not definition.is_async
    assert registry.get("nothing") is not None and registry.get("nothing").is_async  # type: ignore[union-attr]
    # Registering the handle again registers its function, not the handle.
    assert registry.register(double, name="twice").func is definition.func
    with pytest.raises(TypeError, match="colour"):
        TaskRef("x", colour="blue")
    with pytest.raises(ValueError):
        TaskRef("")
