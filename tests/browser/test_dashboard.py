"""The dashboard pages in a real browser: sign in with an org key, read the balance, top up
through the local Checkout page, see the new balance and the invoice, set auto-reload and the
spend cap, manage keys, read the usage chart, choose a plan, sign out."""

from __future__ import annotations

import time
import urllib.request
from datetime import date, timedelta
from decimal import Decimal

import openai
import pytest

from tests.browser.driver import Browser
from tests.support.stack import Reply, Stack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello, dashboard"}]


def _skip_while_stripe_is_not_wired(
    stack: Stack, method: str, path: str, body: dict[str, str], key: str
) -> Reply:
    """Money-in needs the local Stripe stand-in inside `make run`; until it is there these
    routes answer 500 (configuration_error), and only then is the test skipped."""
    reply = stack.call(method, path, body, key=key)
    if reply.status == 500:
        pytest.skip(f"{method} {path} answers 500 ({reply.body}): Stripe is not wired into `make run` yet")
    assert reply.status in (200, 201), reply.body
    return reply


def _chart_fits(browser: Browser) -> bool:
    """The chart redraws itself for the width it has (after a resize)."""
    return bool(
        browser.driver.execute_script(
            "const box = document.getElementById('chart'), svg = box.querySelector('svg');"
            "return !!svg && Math.abs(Number(svg.getAttribute('width')) - box.clientWidth) < 2;"
        )
    )


def _key_left_no_trace(stack: Stack, browser: Browser, key: str) -> None:
    assert key not in browser.driver.current_url
    assert key not in stack.log.read_text(errors="replace"), "the key shows up in the stack's log"


# ---------------------------------------------------------------------------- public pricing


def test_pricing_is_public_and_lists_plans_tiers_and_model_prices(stack: Stack, page: Browser) -> None:
    pricing = stack.call("GET", "/v1/pricing").body
    page.open("/pricing")
    cards = page.wait_count(".plan", len(pricing["plans"]))
    assert [c.get_attribute("data-plan") for c in cards] == [p["id"] for p in pricing["plans"]]
    builder = page.css('.plan[data-plan="builder"]').text
    assert "$29" in builder and "25 credits included every month" in builder
    assert page.css('.plan[data-plan="builder"] button').text == "Choose Builder"
    tiers = [li.text for li in page.all("#pricing-tiers li")]
    assert tiers == [f"${t} → {t} credits" for t in pricing["top_up_tiers"]]
    rows = {r.get_attribute("data-model"): r.text for r in page.all("#model-prices tbody tr")}
    assert set(rows) == {m["id"] for m in pricing["models"]}
    cheap = next(m for m in pricing["models"] if m["id"] == "test/cheap")
    assert rows["test/cheap"].split()[-2:] == [cheap["input_per_million"], cheap["output_per_million"]]
    assert page.text("cache-note") == pricing["cache"]
    assert not page.by_id("sign-in").is_displayed()  # public: nobody is asked for a key
    page.screenshot("pricing")


# ---------------------------------------------------------------------------- sign-in


def test_sign_in_refuses_unknown_keys_and_keys_without_billing_scope(stack: Stack, page: Browser) -> None:
    page.open("/dashboard/billing")
    page.visible("sign-in-key").send_keys("cdx_not_a_real_key")
    page.by_id("sign-in-submit").click()
    assert "not recognized" in page.wait_text("sign-in-error", "not recognized")
    assert page.by_id("sign-in-key").get_attribute("aria-invalid") == "true"

    _, inference_only = stack.new_org(credits="1", scopes=["inference"])
    page.type_into("sign-in-key", inference_only)
    page.by_id("sign-in-submit").click()
    page.wait_text("sign-in-error", "billing scope")
    assert not page.by_id("content").is_displayed()
    assert page.session_key() is None
    assert "?" not in page.driver.current_url


# ---------------------------------------------------------------------------- billing


def test_billing_shows_the_wallet_and_ledger_refuses_reload_without_a_card_and_signs_out(
    stack: Stack, page: Browser
) -> None:
    org_id, key = stack.new_org(credits="12.5")
    for i in range(25):  # one more ledger line than a page holds
        grant = stack.operator(
            "POST",
            f"/admin/orgs/{org_id}/credits",
            {"amount": "0.02", "reason": f"bonus {i}", "idempotency_key": f"bonus-{org_id}-{i}"},
        )
        assert grant.status == 201, grant.body

    page.open("/dashboard/billing")
    page.sign_in(key)
    assert page.wait_text("balance", "13") == "13"
    assert page.text("held") == "0"
    assert page.text("available") == "13"
    assert page.text("account-state") == "Active"
    assert page.text("plan-name") == "Free"
    assert page.text("account-org") == org_id
    assert page.session_key() == key
    _key_left_no_trace(stack, page, key)

    # the ledger: newest first with the balance after each line, and "Load more"
    rows = page.wait_count("#ledger tbody tr", 25)
    assert len(rows) == 25
    first = rows[0].text
    assert "bonus 24" in first and "+0.02" in first and first.endswith("13")
    page.clickable("#ledger-more").click()
    rows = page.wait_count("#ledger tbody tr", 26)
    assert "test" in rows[-1].text and rows[-1].text.endswith("12.5")
    page.until(lambda b: not b.by_id("ledger-more").is_displayed(), "Load more stayed after the last page")

    # top-up tiers come from /v1/pricing
    tiers = stack.call("GET", "/v1/pricing").body["top_up_tiers"]
    buttons = page.wait_count("#top-up-tiers button", len(tiers))
    assert [b.get_attribute("data-amount") for b in buttons] == tiers

    # auto-reload without a saved card: the API's own 409 message, and the switch stays off
    page.css('label[for="reload-enabled"]').click()
    page.type_into("reload-threshold", "5")
    page.type_into("reload-amount", "25")
    page.by_id("reload-save").click()
    assert "needs a saved card" in page.wait_text("reload-error", "needs a saved card")
    assert not page.by_id("reload-enabled").is_selected()
    assert stack.billing(key)["auto_reload"]["enabled"] is False
    page.screenshot("billing")
    page.screenshot("billing-mobile", width=390)

    page.clickable("#sign-out").click()
    page.visible("sign-in-key")
    page.wait_text("notice", "signed out")
    assert page.session_key() is None
    assert not page.by_id("content").is_displayed()
    assert page.text("balance") in ("—", "")


def test_a_top_up_through_checkout_lands_with_its_invoice_and_enables_auto_reload(
    stack: Stack, page: Browser
) -> None:
    _, key = stack.new_org(credits="3")
    tier = stack.call("GET", "/v1/pricing").body["top_up_tiers"][0]
    _skip_while_stripe_is_not_wired(stack, "POST", "/v1/billing/top-ups", {"amount": tier}, key)

    page.open("/dashboard/billing")
    page.sign_in(key)
    page.wait_text("balance", "3")
    page.clickable(f'#top-up-tiers button[data-amount="{tier}"]').click()

    # the local stand-in of Stripe Checkout: a card field and a Pay button
    page.wait_url_not(stack.api)
    card = page.visible("card")
    card.clear()
    card.send_keys("4242424242424242")
    page.css('form button[type="submit"]').click()

    page.wait_url(stack.api + "/dashboard/billing")
    expected = str(Decimal("3") + Decimal(tier))
    page.wait_text("balance", expected)
    assert "credits were added" in page.wait_text("notice", "credits were added")
    assert "?" not in page.driver.current_url  # ?top_up=success&session_id=… is cleaned away
    _key_left_no_trace(stack, page, key)

    invoice = page.wait_count("#invoices tbody tr", 1)[0]
    assert f"${tier}.00" in invoice.text and "paid" in invoice.text
    links = {a.text: a.get_attribute("href") for a in invoice.find_elements(page.by.TAG_NAME, "a")}
    assert set(links) == {"View", "PDF"} and all(h.startswith("http") for h in links.values())
    with urllib.request.urlopen(links["PDF"], timeout=10) as pdf:  # the download link serves the PDF
        assert pdf.headers["Content-Type"] == "application/pdf" and pdf.read(5) == b"%PDF-"
    assert "ending in 4242" in page.text("saved-card")
    ledger_top = page.wait_count("#ledger tbody tr", 2)[0].text
    assert "Top-up" in ledger_top and f"+{tier}" in ledger_top

    # now there is a card: auto-reload turns on, and stays on after a reload of the page
    page.css('label[for="reload-enabled"]').click()
    page.type_into("reload-threshold", "2")
    page.type_into("reload-amount", "25")
    page.by_id("reload-save").click()
    page.wait_text("notice", "Auto-reload is on")
    saved = stack.billing(key)["auto_reload"]
    assert (saved["enabled"], saved["threshold"], saved["amount"]) == (True, "2", "25")
    page.open("/dashboard/billing")
    page.until(lambda b: b.by_id("reload-threshold").get_attribute("value") == "2", "threshold not shown")
    assert page.by_id("reload-enabled").is_selected()
    page.wait_count("#ledger tbody tr", 2)
    page.wait_count("#invoices tbody tr", 1)
    page.wait_count("#top-up-tiers button", 1)
    page.screenshot("billing-after-top-up")


def test_choosing_a_plan_on_pricing_asks_for_a_key_then_goes_through_checkout(
    stack: Stack, page: Browser
) -> None:
    _, key = stack.new_org(credits="1")
    _, probe_key = stack.new_org()
    _skip_while_stripe_is_not_wired(stack, "POST", "/v1/billing/subscription", {"plan": "builder"}, probe_key)

    page.open("/pricing")
    page.clickable('.plan[data-plan="builder"] button').click()
    page.wait_text("sign-in-why", "Builder")
    page.sign_in(key, then_wait_for=None)  # signed in, the choice carries on to Checkout
    page.wait_url_not(stack.api)
    page.visible("card")
    page.css('form button[type="submit"]').click()
    page.wait_url(stack.api + "/dashboard/billing")
    page.wait_text("plan-name", "Builder")
    page.wait_text("notice", "Builder plan")
    assert stack.billing(key)["plan"]["id"] == "builder"
    page.open("/pricing")
    page.wait_text("plans", "Your current plan")
    assert page.css('.plan[data-plan="builder"] button').text == "Your current plan"


# ---------------------------------------------------------------------------- settings


def test_settings_sets_and_removes_the_cap_and_creates_and_revokes_a_key(stack: Stack, page: Browser) -> None:
    _, key = stack.new_org(credits="2")
    page.open("/dashboard/settings")
    page.sign_in(key)
    page.wait_text("cap-limit", "No cap")

    page.type_into("cap-input", "lots")
    page.by_id("cap-save").click()
    page.wait_text("cap-error", "number of credits")
    page.type_into("cap-input", "5")
    page.by_id("cap-save").click()
    page.wait_text("cap-limit", "5 credits")
    assert page.text("cap-remaining") == "5 credits"
    cap = stack.billing(key)["spend_cap"]
    assert cap["monthly_limit"] == "5" and cap["remaining"] == "5"

    # a key with a name: its secret is shown once, with a copy button
    page.type_into("key-name", "ci robot")
    page.by_id("key-create").click()
    page.visible("new-key")
    secret = page.by_id("new-key-secret").get_attribute("value")
    assert secret.startswith("cdx_")
    page.by_id("new-key-copy").click()
    page.until(lambda b: b.text("new-key-copied") != "", "the copy button said nothing")
    row = page.until(lambda b: next((r for r in b.all("#keys tbody tr") if "ci robot" in r.text), None))
    assert "inference" in row.text and "Active" in row.text
    assert stack.call("GET", "/v1/billing", key=secret).status == 403  # inference only, as chosen
    page.screenshot("settings")
    page.by_id("new-key-done").click()
    assert page.by_id("new-key-secret").get_attribute("value") == ""
    assert not page.by_id("new-key").is_displayed()

    # revoke asks first: Cancel keeps the key, Revoke revokes it
    key_id = row.get_attribute("data-key")
    revoke = f'#keys tr[data-key="{key_id}"] button[aria-label^="Revoke"]'
    page.clickable(revoke).click()
    page.visible("revoke-dialog")
    assert "ci robot" in page.text("revoke-text")
    page.by_id("revoke-cancel").click()
    page.until(lambda b: not b.by_id("revoke-dialog").is_displayed(), "the dialog stayed open")
    assert "Active" in page.css(f'#keys tr[data-key="{key_id}"]').text
    page.clickable(revoke).click()
    page.visible("revoke-dialog")
    page.by_id("revoke-confirm").click()
    page.until(lambda b: "Revoked" in b.css(f'#keys tr[data-key="{key_id}"]').text, "not shown as revoked")
    deadline = time.monotonic() + 10  # warm functions remember keys for CONDUIX_KEY_CACHE_SECONDS
    while stack.call("GET", "/v1/billing", key=secret).status != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.3)

    page.clickable("#cap-remove").click()
    page.wait_text("cap-limit", "No cap")
    assert stack.billing(key)["spend_cap"] is None


# ---------------------------------------------------------------------------- usage


def test_usage_draws_credits_per_model_per_day_and_the_model_table(stack: Stack, page: Browser) -> None:
    _, key = stack.new_org(credits="10")
    client = stack.sdk(key)
    calls = [("test/cheap", None), ("test/cheap", None), ("test/backup", None), ("test/per-token", 2)]
    for model, max_tokens in calls:
        extra = {"max_tokens": max_tokens} if max_tokens else {}
        client.chat.completions.create(model=model, messages=HELLO, **extra)
    by_model = stack.call("GET", "/v1/usage?group_by=model", key=key).body
    daily = stack.call("GET", "/v1/usage?group_by=model,day", key=key).body
    models = {r["model"] for r in by_model["data"]}
    assert models == {"test/cheap", "test/backup", "test/per-token"}

    page.open("/dashboard/usage")
    page.sign_in(key)
    segments = page.wait_count("#chart rect.seg", len(daily["data"]))
    drawn = {
        (s.get_attribute("data-model"), s.get_attribute("data-day")): s.get_attribute("data-credits")
        for s in segments
    }
    assert drawn == {(r["model"], r["day"]): r["credits"] for r in daily["data"]}
    assert {li.text for li in page.all("#chart-legend li")} == models
    svg = page.css("#chart svg")
    assert svg.get_attribute("role") == "img"
    labels = [t.text for t in svg.find_elements(page.by.TAG_NAME, "text")]
    assert "Credits" in labels and "Day (UTC)" in labels

    # the accessible table behind the chart: one row for today, its total exact
    page.css("#chart-table-wrap summary").click()
    table_rows = page.wait_count("#chart-table tbody tr", 1)
    assert table_rows[0].text.split()[-1] == by_model["totals"]["credits"]

    rows = {r.get_attribute("data-model"): r.text.split() for r in page.all("#models tbody tr")}
    for r in by_model["data"]:
        assert rows[r["model"]][1:] == [
            str(r["requests"]),
            str(r["cache_hits"]),
            str(r["prompt_tokens"]),
            str(r["completion_tokens"]),
            r["credits"],
            r["saved_credits"],
        ]
    assert page.text("total-credits") == by_model["totals"]["credits"]
    assert page.text("total-requests") == "4"
    page.screenshot("usage")
    page.screenshot("usage-mobile", width=390, settle=lambda b: b.until(_chart_fits, "chart not redrawn"))

    # the date range: a quick range, then a range the form refuses
    today = date.fromisoformat(daily["to"])
    page.clickable('[data-preset="7"]').click()
    page.until(lambda b: b.by_id("range-from").get_attribute("value") == str(today - timedelta(days=6)))
    page.wait_count("#chart rect.seg", len(daily["data"]))
    page.driver.execute_script(
        "document.getElementById('range-from').value = arguments[0];"
        "document.getElementById('range-to').value = arguments[1];",
        str(today),
        str(today - timedelta(days=1)),
    )
    page.css('#range-form button[type="submit"]').click()
    page.wait_text("range-error", "must not be before")


def test_a_paused_account_says_so_on_the_billing_page(stack: Stack, page: Browser) -> None:
    _, key = stack.new_org()  # no credits: the first request is refused and pauses the account
    with pytest.raises(openai.APIStatusError) as refused:
        stack.sdk(key).chat.completions.create(model="test/cheap", messages=HELLO)
    assert refused.value.status_code == 402
    assert stack.billing(key)["account_state"] == "paused"

    page.open("/dashboard/billing")
    page.sign_in(key)
    assert page.wait_text("account-state", "Paused") == "Paused"
    assert "insufficient_credits" in page.visible("paused-help").text
