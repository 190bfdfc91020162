"""Headless Chromium for the dashboard: Debian's `chromium` and `chromium-driver`, driven by
selenium (no browser download). Used by the browser tests and by `python -m
tests.browser.screenshots`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
WAIT_SECONDS = 30  # a wait ends as soon as its condition holds; the bound is for a loaded machine
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--lang=en-US",
)
INSTALL_HINT = (
    "the browser tests need Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver) and selenium (pip install selenium)"
)


def find(env: str, *names: str) -> str | None:
    """A program from $env, or the first of `names` on PATH."""
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing() -> str | None:
    """What is missing to run the browser, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium"
    if not find("CONDUIX_CHROMIUM", "chromium", "chromium-browser", "google-chrome"):
        return "chromium (or $CONDUIX_CHROMIUM)"
    if not find("CONDUIX_CHROMEDRIVER", "chromedriver"):
        return "chromedriver (or $CONDUIX_CHROMEDRIVER)"
    return None


def start(profile: str, log: Path | None = None) -> Any:
    """A headless Chromium with a throwaway profile, its console log kept for the tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = find("CONDUIX_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver_path = find("CONDUIX_CHROMEDRIVER", "chromedriver")
    assert binary and driver_path, INSTALL_HINT
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(driver_path, log_output=str(log) if log else None)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    return driver


class Browser:
    """A thin layer over a selenium driver: open a page, sign in, wait for text, screenshot."""

    def __init__(self, driver: Any, base_url: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.by = By
        self.ec = ec
        self._wait = WebDriverWait(driver, WAIT_SECONDS)

    def _until(self, condition: Callable[[Any], Any], message: str = "") -> Any:
        """WebDriverWait.until, also riding out a navigation in progress (Chromium aborts a
        command issued while the page navigates; the next poll asks again)."""
        from selenium.common.exceptions import WebDriverException

        def tolerant(driver: Any) -> Any:
            try:
                return condition(driver)
            except WebDriverException as exc:
                if "aborted by navigation" in str(exc) or "target navigated" in str(exc):
                    return False
                raise

        return self._wait.until(tolerant, message)

    # -------------------------------------------------------------- navigation and lookups

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def css(self, selector: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        return list(self.driver.find_elements(self.by.CSS_SELECTOR, selector))

    def by_id(self, element_id: str) -> Any:
        return self.driver.find_element(self.by.ID, element_id)

    def text(self, element_id: str) -> str:
        return str(self.by_id(element_id).text)

    def visible(self, element_id: str) -> Any:
        return self._until(self.ec.visibility_of_element_located((self.by.ID, element_id)), f"#{element_id}")

    def clickable(self, selector: str) -> Any:
        return self._until(self.ec.element_to_be_clickable((self.by.CSS_SELECTOR, selector)), selector)

    def until(self, condition: Callable[[Any], Any], message: str = "") -> Any:
        return self._until(lambda _driver: condition(self), message)

    def wait_text(self, element_id: str, expected: str) -> str:
        """Wait until the element's text contains `expected`; return the whole text."""
        self._until(
            self.ec.text_to_be_present_in_element((self.by.ID, element_id), expected),
            f"#{element_id} never showed {expected!r}",
        )
        return self.text(element_id)

    def wait_count(self, selector: str, count: int) -> list[Any]:
        self.until(lambda b: len(b.all(selector)) >= count, f"fewer than {count} of {selector}")
        return self.all(selector)

    def wait_url(self, prefix: str) -> str:
        """Wait for a navigation to land on a URL that starts with `prefix`."""
        self.until(lambda b: b.driver.current_url.startswith(prefix), f"never reached {prefix}")
        return str(self.driver.current_url)

    def wait_url_not(self, prefix: str) -> str:
        """Wait for a navigation away from `prefix` (e.g. to the checkout page)."""
        self.until(lambda b: not b.driver.current_url.startswith(prefix), f"never left {prefix}")
        return str(self.driver.current_url)

    def session_key(self) -> str | None:
        value = self.driver.execute_script("return window.sessionStorage.getItem('conduix.apiKey')")
        return str(value) if value is not None else None

    # -------------------------------------------------------------- actions

    def type_into(self, element_id: str, text: str) -> None:
        field = self.visible(element_id)
        field.clear()
        field.send_keys(text)

    def sign_in(self, key: str, then_wait_for: str | None = "content") -> None:
        """Sign in with the keyboard only: type the key, press Enter."""
        from selenium.webdriver.common.keys import Keys

        field = self.visible("sign-in-key")
        field.send_keys(key)
        field.send_keys(Keys.ENTER)
        if then_wait_for:
            self.visible(then_wait_for)

    def screenshot(
        self,
        name: str,
        width: int = 1280,
        settle: Callable[[Browser], object] | None = None,
        directory: Path = SCREENSHOTS,
    ) -> Path:
        """A full-page PNG, <directory>/<name>.png; `settle` waits for the page to adapt to
        the width before the picture is taken."""
        directory.mkdir(parents=True, exist_ok=True)
        driver = self.driver
        metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        if settle:
            settle(self)
        for _ in range(2):  # the height settles once the width is applied
            metrics["height"] = int(driver.execute_script("return document.documentElement.scrollHeight"))
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        path = directory / f"{name}.png"
        driver.save_screenshot(str(path))
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path

    def page_errors(self) -> list[str]:
        """Script errors and CSP violations the page logged (failed API calls that a test
        provokes on purpose, such as a 409, are not errors of the page)."""
        errors = []
        for entry in self.driver.get_log("browser"):
            message = str(entry.get("message", ""))
            if "Failed to load resource" in message:
                continue
            if entry.get("level") == "SEVERE" or "Content Security Policy" in message:
                errors.append(message)
        return errors

    def reset(self) -> None:
        """Leave no session behind for the next test."""
        self.open("/pricing")
        self.driver.execute_script("window.sessionStorage.clear(); window.localStorage.clear();")
        self.driver.delete_all_cookies()
