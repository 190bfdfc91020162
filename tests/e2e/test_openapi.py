"""The OpenAPI document drives the local stack through schemathesis: no generated request,
valid or not, gets a 5xx, and none of them moves money."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("CONDUIX_SCHEMATHESIS_EXAMPLES", "12"))


def test_the_document_describes_the_public_api(stack: Stack) -> None:
    doc = stack.call("GET", "/openapi.json").body
    assert doc["info"]["title"] == "Conduix API"
    for path in ("/v1/chat/completions", "/v1/models", "/v1/billing", "/v1/billing/top-ups", "/v1/usage"):
        assert path in doc["paths"], path
    assert not any(p.startswith(("/dashboard", "/admin", "/webhooks")) for p in doc["paths"])
    body = doc["paths"]["/v1/billing/top-ups"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TopUpRequest"}


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_generated_requests_get_no_5xx_and_move_nothing(
    stack: Stack, mode: schemathesis.GenerationMode
) -> None:
    org_id, key = stack.new_org("5")
    schema = schemathesis.openapi.from_dict(stack.call("GET", "/openapi.json").body)
    before_ledger = stack.call("GET", "/v1/billing/ledger", key=key).body["data"]
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy(generation_mode=mode)

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            headers = {"Authorization": f"Bearer {key}", **(case.headers or {})}
            response = case.call(base_url=stack.api, headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )

        try:
            exercise()
        except Unsatisfiable:
            continue  # an operation without parameters or body has no invalid form to send
    assert not failures, "\n".join(failures[:10])
    billing = stack.billing(key)
    after_ledger = stack.call("GET", "/v1/billing/ledger", key=key).body["data"]
    # Generated chat requests name models that do not exist, so nothing can have been spent.
    assert (billing["balance"], billing["held"], after_ledger) == ("5", "0", before_ledger)
    assert stack.operator("GET", f"/admin/orgs/{org_id}/reconcile").body["ok"] is True
