"""The billing page's expiring credits and recent notices, at a phone's width and a desktop's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.browser.driver import Browser
from tests.browser.test_phone_and_exports import _layout, _width
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.e2e


def test_the_billing_page_shows_expiring_credits_and_recent_notices(stack: Stack, page: Browser) -> None:
    # Given an org with an expiring grant, and a balance alert it crossed
    org_id, key = stack.new_org("3")
    expires = (datetime.now(UTC) + timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    grant = {"amount": "1234.5", "reason": "promo", "idempotency_key": f"b-{org_id}", "expires_at": expires}
    assert stack.operator("POST", f"/admin/orgs/{org_id}/credits", grant).status == 201
    assert stack.call("PUT", "/v1/billing/alerts", {"balance_below": ["1237"]}, key=key).status == 200
    stack.sdk(key).chat.completions.create(
        model="test/per-token", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert wait_until(lambda: stack.call("GET", "/v1/billing/notices", key=key).body["data"])
    # When the billing page is open, at each width
    page.open("/dashboard/billing")
    page.sign_in(key)
    try:
        for width in (390, 1280):
            _width(page, width)
            page.open("/dashboard/billing")
            rows = page.wait_count("#expiring tbody tr", 1)
            cells = [c.text for c in rows[0].find_elements(page.by.TAG_NAME, "td")]
            # Then the grant shows its date, amount and what is left after the credit spent from it
            assert cells[2:] == ["1,234.5", "1,233.5"], cells
            assert cells[0].endswith(expires[11:16]) and expires[:4] in cells[0]
            notice = page.wait_count("#notices tbody tr", 1)[0]
            assert "Balance alert" in notice.text and "1237" in notice.text
            assert page.by_id("expiring-empty").is_displayed() is False
            layout = _layout(page)
            assert layout["overflow"] <= 0, (
                f"billing scrolls sideways at {width} px by {layout['overflow']} px"
            )
            assert layout["broken"] == [], layout["broken"]
            page.screenshot(f"billing-notices-{width}", width=width)
            _width(page, width)
    finally:
        page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_alerts_are_set_on_the_settings_page(stack: Stack, page: Browser) -> None:
    _, key = stack.new_org("10")
    page.open("/dashboard/settings")
    page.sign_in(key)
    for width in (390, 1280):
        _width(page, width)
        page.open("/dashboard/settings")
        page.visible("alerts-form")
        assert _layout(page)["overflow"] <= 0
    page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    page.wait_count("#keys tbody tr", 1)  # the page is signed in and wired (a loaded machine is slow)
    page.type_into("alerts-balance", "20, 5")
    page.type_into("alerts-cap", "80,95")
    page.clickable("#alerts-save").click()
    # 10 is already below 20 when it is set: shown as sent (it re-arms above 20), with no email
    page.until(lambda b: "below 20 credits" in b.text("alerts-fired"), "the saved alerts did not show")
    saved = stack.call("GET", "/v1/billing/alerts", key=key).body
    assert (saved["balance_below"], saved["cap_used_percent"]) == (["20", "5"], [80, 95])
    page.type_into("alerts-cap", "150")
    page.clickable("#alerts-save").click()
    page.until(lambda b: b.by_id("alerts-error").is_displayed(), "a bad percent was not refused")
    assert stack.call("GET", "/v1/billing/alerts", key=key).body["cap_used_percent"] == [80, 95]


def test_a_key_s_spend_limit_is_set_and_removed_on_the_settings_page(stack: Stack, page: Browser) -> None:
    _, key = stack.new_org("10")
    page.open("/dashboard/settings")
    page.sign_in(key)
    key_id = page.wait_count("#keys tbody tr", 1)[0].get_attribute("data-key")
    row = f'#keys tr[data-key="{key_id}"]'
    page.until(lambda b: "None" in b.css(f"{row} td.limit").text, "no limit shown")
    for width in (390, 1280):
        _width(page, width)
        page.clickable(f'{row} button[aria-label^="Spend limit"]').click()
        page.visible("limit-dialog")
        page.type_into("limit-amount", "two")
        page.clickable("#limit-save").click()
        page.until(lambda b: b.by_id("limit-error").is_displayed(), "a bad amount was not refused")
        assert _layout(page)["overflow"] <= 0
        page.screenshot(f"settings-key-limit-{width}", width=width)
        _width(page, width)
        page.by_id("limit-cancel").click()
        page.until(lambda b: not b.by_id("limit-dialog").is_displayed(), "the dialog stayed open")
    page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert stack.call("GET", "/v1/billing/api-keys", key=key).body["data"][0]["spend_limit"] is None

    page.clickable(f'{row} button[aria-label^="Spend limit"]').click()
    page.type_into("limit-amount", "2.5")
    page.driver.execute_script("document.getElementById('limit-period').value = 'week'")
    page.clickable("#limit-save").click()
    page.until(lambda b: "2.5 a week · spent 0" in b.css(f"{row} td.limit").text, "the limit did not show")
    shown = stack.call("GET", "/v1/billing/api-keys", key=key).body["data"][0]["spend_limit"]
    assert (shown["amount"], shown["period"], shown["spent"]) == ("2.5", "week", "0")

    page.clickable(f'{row} button[aria-label^="Spend limit"]').click()
    page.visible("limit-dialog")
    assert page.by_id("limit-amount").get_attribute("value") == "2.5"
    page.clickable("#limit-remove").click()
    page.until(lambda b: "None" in b.css(f"{row} td.limit").text, "the limit was not removed")
    assert stack.call("GET", "/v1/billing/api-keys", key=key).body["data"][0]["spend_limit"] is None
