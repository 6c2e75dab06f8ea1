"""Fixtures of the browser tests: one headless Chromium (Debian's) per module, driven by
selenium through Debian's chromedriver; nothing downloads a browser or a driver."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browsers import Dashboard
from tests.support.processes import require_module, unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium with a laptop's window; closed after the module's tests."""
    require_module("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            unavailable(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--lang=en-GB",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    # A driver path given to the Service: selenium never runs its Selenium Manager.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard(browser: Any, live_server: str) -> Iterator[Dashboard]:
    """The module's browser on this test's live server; left on a blank page afterwards, so
    that no page of it still streams when the server stops."""
    yield Dashboard(browser, live_server)
    browser.get("about:blank")
