"""Headless Chromium for the dashboard's browser tests: Debian's ``chromium`` driven by
Playwright (never a browser Playwright downloads). Without it a test skips, except under CI
(``CI=true``), where it fails: `.ci/run` installs the package."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = os.environ.get("HARVESTER_TEST_CHROMIUM", "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """The system Chromium; skip (fail under CI) when it is missing."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    found = shutil.which("chromium")
    if found is not None:
        return found
    message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message)
    pytest.skip(message)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed on the way out whatever happened inside."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            await browser.close()


async def screenshots(page: Page, folder: Path, name: str) -> None:
    """The current page at 1280x800 and at a phone's width, as ``folder/name-{desktop,phone}.png``
    (Playwright makes the folder)."""
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(size)
        await page.screenshot(path=folder / f"{name}-{label}.png", full_page=True)
    await page.set_viewport_size(DESKTOP)
