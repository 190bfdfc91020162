"""The README's pictures of the four pages (docs/screenshots/), taken from a running `make run`
with its default catalog:

    make run                                      # in one terminal
    .venv/bin/python -m tests.browser.screenshots # in another

It makes a fresh org on that stack (through the operator key in the stack's state file), a few
completions, a top-up through the local Checkout page, auto-reload, a spend cap and a second
key, then saves one full-page PNG per page. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.request
from typing import Any

from conduix_local.reconcile import pick_stack
from openai import OpenAI

from tests.browser import driver as chromium
from tests.browser.driver import ROOT, Browser

OUT = ROOT / "docs" / "screenshots"


def _call(api: str, method: str, path: str, key: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        api + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def main() -> int:
    found = pick_stack(os.environ.get("STACK") or None)
    if isinstance(found, str):
        print(found, file=sys.stderr)
        return 1
    lacking = chromium.missing()
    if lacking:
        print(f"{lacking} is missing: {chromium.INSTALL_HINT}", file=sys.stderr)
        return 1
    state = found
    api, operator = state["api"], state["operator_key"]

    org = _call(
        api, "POST", "/admin/orgs", operator, {"name": "Acme Robotics", "email": "billing@acme.example"}
    )
    org_id = org["org_id"]
    key = _call(api, "POST", f"/admin/orgs/{org_id}/api-keys", operator, {"name": "dashboard"})["api_key"]
    _call(
        api,
        "POST",
        f"/admin/orgs/{org_id}/credits",
        operator,
        {"amount": "5", "reason": "Welcome credits", "idempotency_key": f"welcome-{org_id}"},
    )
    models = [m["id"] for m in _call(api, "GET", "/v1/pricing", key)["models"]][:3]
    client = OpenAI(base_url=api + "/v1", api_key=key, max_retries=0)
    prompt = "Summarize the benefits of prepaid credits for an API gateway in three bullet points."
    for model, times in zip(models, (4, 2, 1), strict=False):
        for i in range(times):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"{prompt} ({i})"}], max_tokens=400
            )
    client.chat.completions.create(
        model=models[0], messages=[{"role": "user", "content": prompt}], temperature=0
    )
    client.chat.completions.create(
        model=models[0], messages=[{"role": "user", "content": prompt}], temperature=0
    )

    profile = tempfile.mkdtemp(prefix="conduix-chromium-")
    browser = Browser(chromium.start(profile), api)
    try:
        browser.open("/dashboard/billing")
        browser.sign_in(key)
        browser.clickable('#top-up-tiers button[data-amount="50"]').click()
        browser.wait_url_not(api)
        browser.visible("card")
        browser.css('form button[type="submit"]').click()
        browser.wait_url(api + "/dashboard/billing")
        browser.wait_text("notice", "credits were added")
        browser.wait_count("#invoices tbody tr", 1)
        browser.css('label[for="reload-enabled"]').click()
        browser.type_into("reload-threshold", "5")
        browser.type_into("reload-amount", "25")
        browser.by_id("reload-save").click()
        browser.wait_text("notice", "Auto-reload is on")
        print(browser.screenshot("billing", directory=OUT))

        browser.open("/dashboard/usage")
        browser.wait_count("#chart rect.seg", len(models))
        print(browser.screenshot("usage", directory=OUT))

        browser.open("/dashboard/settings")
        browser.type_into("cap-input", "100")
        browser.by_id("cap-save").click()
        browser.wait_text("cap-limit", "100 credits")
        browser.type_into("key-name", "production")
        browser.by_id("key-create").click()
        browser.visible("new-key")
        browser.by_id("new-key-done").click()
        browser.wait_count("#keys tbody tr", 2)
        print(browser.screenshot("settings", directory=OUT))

        browser.open("/pricing")
        browser.wait_text("plans", "Your current plan")
        print(browser.screenshot("pricing", directory=OUT))
    finally:
        browser.driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
