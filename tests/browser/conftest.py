"""Browser tests: the dashboard pages in a real headless Chromium (Debian's `chromium` and
`chromium-driver`), driven by selenium, against the stack that `make run` starts (the same
session fixture the end-to-end tests use)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.browser import driver as chromium
from tests.browser.driver import Browser
from tests.support.stack import ARTIFACTS, Stack

__all__ = ["Browser", "Stack", "browser", "page"]


@pytest.fixture(scope="session")
def browser(stack: Stack) -> Iterator[Browser]:
    lacking = chromium.missing()
    if lacking:
        message = f"{lacking} is missing: {chromium.INSTALL_HINT}."
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing browser is a broken setup, not a reason to skip
        pytest.skip(message)
    ARTIFACTS.mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="conduix-chromium-")
    driver = chromium.start(profile, ARTIFACTS / "chromedriver.log")
    try:
        yield Browser(driver, stack.api)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: Browser) -> Iterator[Browser]:
    """The shared browser, signed out, that checks after the test that the page logged no
    script error or CSP violation."""
    browser.reset()
    browser.page_errors()  # drop what earlier tests left in the log
    yield browser
    errors = browser.page_errors()
    browser.reset()
    assert not errors, f"the page logged errors: {errors}"
