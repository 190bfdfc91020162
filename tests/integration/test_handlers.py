"""Each function's handler, invoked in-process with its sample event from events/."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conduix import catalog, clock, invoicing
from conduix_local.upstream import FakeUpstream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_KEY = "cdx_op_handler_tests"


def handler(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fn_{name}", ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def event(name: str, **placeholders: str) -> dict[str, Any]:
    text = (ROOT / "events" / f"{name}.json").read_text()
    for key, value in placeholders.items():
        text = text.replace("{{" + key + "}}", value)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def context(name: str) -> Any:
    return SimpleNamespace(
        function_name=name,
        function_version="$LATEST",
        memory_limit_in_mb=512,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        aws_request_id="test-request",
        get_remaining_time_in_millis=lambda: 30_000,
    )


@pytest.fixture
def env(tables: dict[str, str], upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPERATOR_KEY_SHA256", hashlib.sha256(OPERATOR_KEY.encode()).hexdigest())
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.url)
    monkeypatch.setenv("OPENAI_API_KEY", "unused-by-the-fake")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_handler_tests")
    from conduix import config

    config.operator_key_sha256.cache_clear()
    catalog.catalog.cache_clear()


def test_every_sample_event_drives_its_handler(env: None, upstream: FakeUpstream) -> None:
    admin = handler("admin")
    created = admin.lambda_handler(event("admin", OPERATOR_KEY=OPERATOR_KEY), context("admin"))
    assert created["statusCode"] == 201
    org_id = json.loads(created["body"])["org_id"]

    def operator_call(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        ev = event("admin", OPERATOR_KEY=OPERATOR_KEY)
        ev.update(httpMethod=method, path=path, body=json.dumps(body))
        result = admin.lambda_handler(ev, context("admin"))
        assert result["statusCode"] in (200, 201), result
        parsed: dict[str, Any] = json.loads(result["body"])
        return parsed

    key = operator_call("POST", f"/admin/orgs/{org_id}/api-keys", {})["api_key"]
    operator_call(
        "POST", f"/admin/orgs/{org_id}/credits", {"amount": "1", "reason": "t", "idempotency_key": "t"}
    )

    billing = handler("billing_api").lambda_handler(event("billing_api", ORG_API_KEY=key), context("billing"))
    assert json.loads(billing["body"])["balance"] == "1"

    served = handler("completion").lambda_handler(event("completion", ORG_API_KEY=key), context("completion"))
    assert served["statusCode"] == 200, served["body"]
    assert served["headers"]["x-conduix-cache"] == "BYPASS"
    assert upstream.calls()["total"] == 1

    webhook = handler("stripe_webhook").lambda_handler(event("stripe_webhook"), context("webhook"))
    assert webhook["statusCode"] == 400  # the sample's signature is not valid for its body
    assert json.loads(webhook["body"])["error"]["code"] == "invalid_signature"

    assert (
        handler("hold_sweeper").lambda_handler(event("hold_sweeper"), context("sweeper"))["holds_released"]
        == 0
    )
    assert handler("auto_reload").lambda_handler(event("auto_reload"), context("reload")) == {"orgs": 0}
    invoiced = handler("monthly_invoicing").lambda_handler(event("monthly_invoicing"), context("inv"))
    assert invoiced == {"period": invoicing.previous_month(clock.now()), "orgs": {}}
