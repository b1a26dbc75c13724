"""``python -m examples.status_page [--screenshot PATH]``: the status page with traffic.

Starts a broker (its HTTP side on a free loopback port) and two workers,
keeps a few queues busy (fast jobs, slow ones, some that fail for good) and
prints the status page's URL. With ``--screenshot PATH`` it photographs the
page in headless Chromium (Playwright, the system's ``chromium``) after
12 seconds of traffic (enough to fill the sparklines) and stops;
``docs/status-page.png`` is made this way. Stops every process it started,
also when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
from pathlib import Path
from typing import Any

from broker import Client
from harness.browser import chromium_path, launch
from harness.processes import BrokerProc, Proc, WorkerProc

QUEUES = ("default", "emails", "reports", "thumbnails", "webhooks")


async def traffic(address: str, stop: asyncio.Event) -> None:
    rng = random.Random(7)
    async with Client(address, name="traffic") as client:
        for i, message in enumerate(("SMTP timeout", "invalid image", "HTTP 502 from hook")):
            await client.submit(
                "fail",
                [message, "ConnectionError" if i else "TimeoutError"],
                queue=QUEUES[i + 1],
                max_attempts=1,
            )
        await client.submit_many(
            [{"task": "echo", "args": [i], "queue": "held-for-review"} for i in range(42)]
        )
        while not stop.is_set():
            burst: list[dict[str, Any]] = []
            for queue in QUEUES:
                for _ in range(rng.randint(5, 40)):
                    burst.append({"task": "echo", "args": [queue], "queue": queue})
                if rng.random() < 0.5:
                    burst.append({"task": "sleep", "args": [rng.uniform(1, 6)], "queue": queue})
            await client.submit_many(burst)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def screenshot(url: str, path: str) -> None:
    from playwright.async_api import async_playwright  # noqa: PLC0415 (only for --screenshot)

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no chromium on PATH")
    with tempfile.TemporaryDirectory() as profile:
        async with async_playwright() as playwright:
            context = await launch(playwright, Path(profile), executable)
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(url)
                await page.wait_for_selector("#live:text('live')")
                await asyncio.sleep(12)  # let the sparklines fill: one point a second
                await page.screenshot(path=path, full_page=True)
            finally:
                await context.close()


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.status_page")
    parser.add_argument("--screenshot", default=None, help="save a PNG of the page and stop")
    args = parser.parse_args()
    procs: list[Proc] = []
    try:
        broker = BrokerProc(["--http", "127.0.0.1:0"])
        procs.append(broker)
        url = broker.wait_for_line(r"status page: ").rsplit("status page: ", 1)[1].strip()
        for name in ("worker-a", "worker-b"):
            procs.append(
                WorkerProc(
                    broker.address,
                    extra=["--queues", ",".join(QUEUES), "--name", name],
                    concurrency=8,
                    log_level="warning",
                    wait_connected=False,
                )
            )
        print(f"status page: {url}", flush=True)
        stop = asyncio.Event()
        feeding = asyncio.ensure_future(traffic(broker.address, stop))
        try:
            if args.screenshot:
                await screenshot(url, args.screenshot)
                print(f"saved {args.screenshot}")
            else:
                await asyncio.Event().wait()  # until interrupted
        finally:
            stop.set()
            await feeding
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
