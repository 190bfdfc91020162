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
from conduix.core import clock
from conduix.core.money import format_credits
from conduix.payments import invoicing
from conduix.pricing import catalog
from conduix_local.upstream import FakeUpstream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
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
    from conduix.core import config

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


def _json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            found.append(parsed)
    return found


def _emf(lines: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The EMF blobs that carry `metric`, checked to be well formed."""
    blobs = []
    for line in lines:
        spec = (line.get("_aws") or {}).get("CloudWatchMetrics") or []
        if any(m["Name"] == metric for s in spec for m in s["Metrics"]):
            assert spec[0]["Namespace"] == "Conduix" and isinstance(line["_aws"]["Timestamp"], int)
            for dimension in spec[0]["Dimensions"][0]:
                assert dimension in line  # every dimension has its value in the blob
            blobs.append(line)
    return blobs


def test_completions_log_one_line_and_emit_metrics_per_request(
    env: None, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Conduix")
    admin = handler("admin")

    def org_with(credits: str) -> tuple[str, str]:
        ev = event("admin", OPERATOR_KEY=OPERATOR_KEY)
        org_id = json.loads(admin.lambda_handler(ev, context("admin"))["body"])["org_id"]
        ev.update(path=f"/admin/orgs/{org_id}/api-keys", body="{}")
        made = json.loads(admin.lambda_handler(ev, context("admin"))["body"])
        if credits != "0":
            ev.update(
                path=f"/admin/orgs/{org_id}/credits",
                body=json.dumps({"amount": credits, "reason": "t", "idempotency_key": org_id}),
            )
            admin.lambda_handler(ev, context("admin"))
        return made["api_key"], made["key_id"]

    (rich, rich_key_id), (poor, _) = org_with("1"), org_with("0")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "completion")
    completion = handler("completion")
    capsys.readouterr()
    served = completion.lambda_handler(event("completion", ORG_API_KEY=rich), context("completion"))
    refused = completion.lambda_handler(event("completion", ORG_API_KEY=poor), context("completion"))
    assert (served["statusCode"], refused["statusCode"]) == (200, 402)
    lines = _json_lines(capsys.readouterr().out)

    # One log line per completion, with what an operator searches by.
    logged = [line for line in lines if line.get("message") == "completion"]
    assert [line["outcome"] for line in logged] == ["billed", "402_credits"]
    billed = logged[0]
    cost = billed["cost_nanos"]
    assert cost > 0 and served["headers"]["x-conduix-cost"] == format_credits(cost)
    assert billed["request_id"] == served["headers"]["x-request-id"] and billed["key_id"] == rich_key_id
    assert billed["org_id"].startswith("org_") and billed["cache"] == "BYPASS"
    assert billed["requested_model"] == billed["model"] and billed["fallback_used"] is False
    assert billed["prompt_tokens"] > 0 and billed["completion_tokens"] > 0
    # Metrics: requests by outcome, the credits billed (exact nano-credits), upstream latency.
    requests = {blob["outcome"]: blob for blob in _emf(lines, "Requests")}
    assert set(requests) == {"billed", "402_credits"}
    assert requests["billed"]["service"] == "completion" and requests["billed"]["Requests"] == [1.0]
    assert requests["billed"]["BilledNanoCredits"] == [cost] and requests["billed"]["UpstreamLatency"][0] >= 0
    assert "BilledNanoCredits" not in requests["402_credits"]

    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "stripe-webhook")
    handler("stripe_webhook").lambda_handler(event("stripe_webhook"), context("webhook"))
    handler("hold_sweeper").lambda_handler(event("hold_sweeper"), context("sweeper"))
    lines = _json_lines(capsys.readouterr().out)
    assert [b["outcome"] for b in _emf(lines, "WebhookEvents")] == ["invalid_signature"]
    assert [b["HoldsReleased"] for b in _emf(lines, "HoldsReleased")] == [[0.0]]


def test_a_settle_incident_is_counted_and_telemetry_never_fails_a_request(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from conduix.core import errors, telemetry

    telemetry.settle_incident("settle_failed", request_id="r1")
    assert _emf(_json_lines(capsys.readouterr().out), "SettleIncidents")[0]["SettleIncidents"] == [1.0]
    assert (
        telemetry.outcome_of(
            errors.SpendCapExceeded("cap", limit_nanos=1, committed_nanos=1, period="2026-01")
        )
        == "402_cap"
    )
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "x" * 300)  # refused by Powertools' schema
    telemetry.count_outcome("billed", billed_nanos=5)  # logged, not raised
