"""The dashboard at a phone's width (390 px) and at a desktop's, and the CSV downloads and
ledger filter the pages offer."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from tests.browser.driver import Browser
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello, phone"}]
PAGES = {
    "billing": "/dashboard/billing",
    "usage": "/dashboard/usage",
    "settings": "/dashboard/settings",
    "pricing": "/pricing",
}

# What the page would scroll sideways by, and every number split over more than one line.
_LAYOUT = """
const doc = document.documentElement;
const broken = [];
for (const el of document.querySelectorAll('.amount, td.num, th.num, .tier-amount')) {
  if (el.offsetParent === null) continue;
  for (const node of el.childNodes) {
    if (node.nodeType !== Node.TEXT_NODE || !node.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
    if (tops.size > 1) broken.push(node.textContent);
  }
}
return {overflow: doc.scrollWidth - doc.clientWidth, broken: broken};
"""

# Downloads are caught where the page hands its Blob to the browser, so the test reads the
# file's text without a download folder (and without a blob: fetch, which the CSP forbids).
_CATCH_DOWNLOADS = """
window.__downloads = [];
const make = URL.createObjectURL.bind(URL);
URL.createObjectURL = function (blob) {
  const entry = {text: null};
  window.__downloads.push(entry);
  blob.text().then(t => { entry.text = t; });
  return make(blob);
};
HTMLAnchorElement.prototype.click = function () {
  window.__downloads[window.__downloads.length - 1].name = this.download;
};
"""


def _width(page: Browser, width: int) -> None:
    page.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def _layout(page: Browser) -> dict[str, Any]:
    result: dict[str, Any] = page.driver.execute_script(_LAYOUT)
    return result


def _downloaded(page: Browser) -> dict[str, str]:
    page.until(
        lambda b: b.driver.execute_script(
            "const d = window.__downloads; return d.length > 0 && d[d.length - 1].text !== null"
        ),
        "no download",
    )
    entry: dict[str, str] = page.driver.execute_script("const d = window.__downloads; return d[d.length - 1]")
    return entry


def test_every_page_fits_a_phone_with_whole_numbers_and_the_actions_in_view(
    stack: Stack, page: Browser
) -> None:
    org_id, key = stack.new_org(credits="123456.123456789")
    long_name = {"name": "a very long key name that would widen the table"}
    assert stack.call("POST", "/v1/billing/api-keys", long_name, key=key).status == 201
    client = stack.sdk(key)
    for _ in range(2):
        client.chat.completions.create(model="test/cheap", messages=HELLO)
    page.open(PAGES["billing"])
    page.sign_in(key)
    try:
        for width in (390, 1280):
            _width(page, width)
            for name, path in PAGES.items():
                page.open(path)
                page.visible("content" if name != "pricing" else "main")
                if name == "usage":
                    page.wait_count("#models tbody tr", 1)
                if name == "settings":
                    page.wait_count("#keys td.action button", 4)  # Limit and Revoke, per key
                if name == "billing":
                    page.wait_count("#ledger tbody tr", 3)
                layout = _layout(page)
                assert layout["overflow"] <= 0, (
                    f"{name} scrolls sideways at {width} px by {layout['overflow']} px"
                )
                assert layout["broken"] == [], f"{name} breaks numbers at {width} px: {layout['broken']}"
                if name == "settings":
                    # every Revoke button is inside the window, though the table scrolls in its box
                    for button in page.all("#keys td.action button"):
                        rect = page.driver.execute_script(
                            "const r = arguments[0].getBoundingClientRect(); return [r.left, r.right];",
                            button,
                        )
                        assert rect[0] >= 0 and rect[1] <= width, (width, rect)
                page.screenshot(f"{name}-{width}", width=width)
                _width(page, width)  # screenshot() clears the override
    finally:
        page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert org_id


def test_the_ledger_filters_by_type_and_downloads_what_the_api_lists(stack: Stack, page: Browser) -> None:
    _, key = stack.new_org(credits="5")
    client = stack.sdk(key)
    for _ in range(3):
        client.chat.completions.create(model="test/cheap", messages=HELLO)
    page.open(PAGES["billing"])
    page.sign_in(key)
    page.wait_count("#ledger tbody tr", 4)
    page.driver.execute_script(_CATCH_DOWNLOADS)

    # the type filter shows only usage rows
    from selenium.webdriver.support.ui import Select

    Select(page.by_id("ledger-type")).select_by_value("usage")
    page.until(lambda b: len(b.all("#ledger tbody tr")) == 3, "the filter did not apply")
    assert {r.find_elements(page.by.TAG_NAME, "td")[2].text for r in page.all("#ledger tbody tr")} == {
        "Usage"
    }

    # the download holds the same rows as the API's JSON, as CSV
    page.clickable("#ledger-download").click()
    entry = _downloaded(page)
    assert entry["name"].startswith("conduix-ledger-usage-") and entry["name"].endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(entry["text"])))
    listed = stack.call("GET", "/v1/billing/ledger?type=usage", key=key).body["data"]
    assert [(r["id"], r["amount"], r["balance_after"]) for r in rows] == [
        (e["id"], e["amount"], e["balance_after"]) for e in listed
    ]

    # the usage page downloads its range too
    page.open(PAGES["usage"])
    page.wait_count("#models tbody tr", 1)
    assert page.text("total-answered") == "3"
    page.driver.execute_script(_CATCH_DOWNLOADS)
    page.clickable("#usage-download").click()
    usage = list(csv.DictReader(io.StringIO(_downloaded(page)["text"])))
    assert [(r["model"], r["requests"], r["cache_hits"]) for r in usage] == [("test/cheap", "3", "0")]
