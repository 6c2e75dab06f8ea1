"""Driving the dashboard in a browser: open its pages, wait for what they show, screenshots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Where the screenshots go (git-ignored), kept after the run for a person to look at.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
#: How long a page may take to show what a test waits for; pages poll every 1.5 to 3 s.
PATIENCE = 15.0


class Dashboard:
    """A browser on the dashboard of one test's server."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url

    def open(self, path: str) -> None:
        """Load a page of the server (``/ui/...``)."""
        self.browser.get(f"{self.base_url}{path}")

    def shoot(self, name: str) -> Path:
        """Save the window as ``test-artifacts/dashboard/NAME.png``."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.browser.save_screenshot(str(path))
        return path

    def until(self, condition: Callable[[Any], Any], timeout: float = PATIENCE) -> Any:
        """Wait until ``condition(browser)`` is true; its value."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # Pages redraw what they poll: an element read may be replaced meanwhile.
        wait = WebDriverWait(
            self.browser,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException,),
        )
        return wait.until(condition)

    def all(self, css: str) -> list[Any]:
        """The elements ``css`` selects, shown or not."""
        from selenium.webdriver.common.by import By

        return list(self.browser.find_elements(By.CSS_SELECTOR, css))

    def one(self, css: str) -> Any:
        """The element ``css`` selects (wait for it)."""
        return self.until(lambda _: (self.all(css) or [None])[0])

    def visible(self, css: str, timeout: float = PATIENCE) -> Any:
        """The first element ``css`` selects, once it is shown."""
        return self.until(
            lambda _: next((e for e in self.all(css) if e.is_displayed()), None), timeout
        )

    def text(self, css: str) -> str:
        """The shown text of the first element ``css`` selects ("" if there is none)."""
        found = self.texts(css)
        return found[0] if found else ""

    def texts(self, css: str) -> list[str]:
        """The shown text of every element ``css`` selects (read again if the page redrew
        one of them meanwhile)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(20):
            try:
                return [str(e.text) for e in self.all(css)]
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being redrawn")

    def attributes(self, css: str, name: str) -> list[str | None]:
        """Attribute ``name`` of every element ``css`` selects (read again if redrawn)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(20):
            try:
                return [e.get_attribute(name) for e in self.all(css)]
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being redrawn")

    def text_is(self, css: str, expected: str, timeout: float = PATIENCE) -> None:
        """Wait until the first element ``css`` selects reads ``expected``."""
        try:
            self.until(lambda _: self.text(css) == expected, timeout)
        except Exception as exc:
            raise AssertionError(f"{css} reads {self.text(css)!r}, not {expected!r}") from exc
