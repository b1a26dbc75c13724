"""The status page in a real headless browser, against a real broker and worker process."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from broker import Broker, BrokerConfig, Client
from broker.http import HttpConfig
from harness.processes import BrokerProc, Proc, WorkerProc
from tests.browser import chromium_or_skip, launch
from tests.conftest import E2E_TASKS
from tests.scale import FAILED, QUEUES, fill
from tests.waiting import eventually

try:
    from playwright.async_api import async_playwright, expect
except ImportError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"playwright is not installed: {exc}", allow_module_level=True)

WAIT_MS = 20_000
# Set to a path to keep the screenshot (docs/status-page.png is made this way).
SCREENSHOT_ENV = "JOBWIRE_SCREENSHOT"


def start(procs: list[Proc]) -> tuple[BrokerProc, str]:
    broker = BrokerProc(
        ["--http", "127.0.0.1:0", "--retry-backoff", "0.05", "--retry-backoff-max", "0.1"]
    )
    procs.append(broker)
    line = broker.wait_for_line(r"status page: http://")
    url = line.rsplit("status page: ", 1)[1].strip()
    return broker, url


async def test_status_page_live_counts_retry_and_lookup(procs: list[Proc], tmp_path: Path) -> None:
    chromium_or_skip()
    broker, url = start(procs)
    worker = WorkerProc(broker.address, (E2E_TASKS,), concurrency=4, log_level="info")
    procs.append(worker)
    flag = tmp_path / "fixed"
    async with async_playwright() as playwright, Client(broker.address) as client:
        context = await launch(playwright, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(url)
            await expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)

            # Jobs submitted by a client show up without a reload ("held": no worker serves it).
            await client.submit_many(
                [{"task": "echo", "args": [i], "queue": "held"} for i in range(7)]
            )
            queued = page.locator('tr[data-queue="held"] td[data-field="queued"]')
            await expect(queued).to_have_text("7", timeout=WAIT_MS)
            await client.submit_many(
                [{"task": "echo", "args": [i], "queue": "held"} for i in range(3)]
            )
            await expect(queued).to_have_text("10", timeout=WAIT_MS)
            done = await client.submit_many([{"task": "echo", "args": [i]} for i in range(30)])
            assert [await job.result() for job in done] == list(range(30))
            await expect(
                page.locator('tr[data-queue="default"] td[data-field="succeeded"]')
            ).to_have_text("30", timeout=WAIT_MS)

            # A job fails for good; it is fixed; Retry on the page makes it succeed.
            broken = await client.submit("fails_until", [str(flag)], max_attempts=1)
            row = page.locator(f'tr[data-job="{broken.id}"]')
            await expect(row).to_contain_text("FileNotFoundError", timeout=WAIT_MS)
            flag.touch()
            await row.locator("button[data-retry]").click()
            await expect(row).to_have_count(0, timeout=WAIT_MS)

            async def succeeded() -> bool:
                state: str = (await client.status(broken.id))["state"]
                return state == "succeeded"

            await eventually(succeeded, f"job {broken.id} succeeds after its retry")

            # Look the job up by id: its state, attempts, errors and result.
            await page.fill("#lookup-id", broken.id)
            await page.click("#lookup button[type=submit]")
            await expect(page.locator("#job-state")).to_have_text("succeeded", timeout=WAIT_MS)
            await expect(page.locator("#job-result")).to_have_text('"fixed"')
            await expect(page.locator("#job-body")).to_contain_text("FileNotFoundError")
            await expect(page.locator("#workers tbody tr")).to_have_count(1)

            # Something left on the failed list for the picture.
            for message in ("disk full", "bad input"):
                await client.submit("always_fails", [message], max_attempts=1, queue="default")
            await expect(page.locator("#failed tbody tr")).to_have_count(2, timeout=WAIT_MS)
            await expect(page.locator("#failed-total")).to_have_text(re.compile(r"^2$"))
            target = os.environ.get(SCREENSHOT_ENV)
            await page.screenshot(path=target or str(tmp_path / "status-page.png"), full_page=True)
        finally:
            await context.close()


async def test_status_page_pages_a_thousand_queues_and_ten_thousand_failed_jobs(
    tmp_path: Path,
) -> None:
    chromium_or_skip()
    broker = Broker(BrokerConfig(port=0, http=HttpConfig(port=0)))
    await broker.start()
    try:
        fill(broker.manager, time.time())
        async with async_playwright() as playwright:
            context = await launch(playwright, tmp_path / "profile")
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(f"http://127.0.0.1:{broker.http_port}/")
                await expect(page.locator("#queues tbody tr")).to_have_count(50, timeout=WAIT_MS)
                await expect(page.locator("#failed tbody tr")).to_have_count(50, timeout=WAIT_MS)
                await expect(page.locator("#failed-pager")).to_contain_text(
                    f"1\N{EN DASH}50 of {FAILED}"
                )
                await page.locator("#failed-pager button", has_text="older").click()
                await expect(page.locator("#failed-pager")).to_contain_text(
                    f"51\N{EN DASH}100 of {FAILED}"
                )
                await page.fill("#queue-filter", f"q-{QUEUES - 1:04d}")
                await expect(page.locator("#queues tbody tr")).to_have_count(1)
            finally:
                await context.close()
    finally:
        await broker.stop()


async def test_login_form_with_a_token(tmp_path: Path) -> None:
    chromium_or_skip()
    broker = Broker(BrokerConfig(port=0, token="browser-token", http=HttpConfig(port=0)))
    await broker.start()
    try:
        async with async_playwright() as playwright:
            context = await launch(playwright, tmp_path / "profile")
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(f"http://127.0.0.1:{broker.http_port}/")
                await expect(page).to_have_url(re.compile(r"/login$"), timeout=WAIT_MS)
                await page.fill("#token", "wrong")
                await page.click("#login button[type=submit]")
                await expect(page.locator("#message")).to_have_text("Wrong token.")
                await page.fill("#token", "browser-token")
                await page.click("#login button[type=submit]")
                await expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
                cookies = await context.cookies()
                session = next(cookie for cookie in cookies if cookie["name"] == "jobwire_session")
                assert session["httpOnly"] and session["sameSite"] == "Strict"
            finally:
                await context.close()
    finally:
        await broker.stop()
