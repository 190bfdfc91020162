"""The SAM template: lint-clean, transformable offline, and shaped as the product needs."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conduix_local.functions import load_functions
from conduix_local.template import TEMPLATE_PATH, load_template, resources_of_type

ROOT = Path(__file__).resolve().parents[2]


class _NoManagedPolicies:
    """The translator asks IAM for AWS-managed policy ARNs; this template names none."""

    def load(self) -> dict[str, str]:
        return {}


def test_sam_translator_transforms_the_template_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from samtranslator.translator.transform import transform

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    template = copy.deepcopy(load_template())
    # `sam build` / `sam package` turn local folders into S3 URIs; stand in for them.
    for logical_id, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://artifacts/{logical_id}.zip"
    output = transform(
        template, {"OperatorKeySha256": "0" * 64, "CursorSigningKey": "k" * 32}, _NoManagedPolicies()
    )
    types = [r["Type"] for r in output["Resources"].values()]
    assert types.count("AWS::Lambda::Function") == 7
    assert types.count("AWS::Events::Rule") == 3
    assert "AWS::ApiGateway::RestApi" in types
    json.dumps(output)  # plain JSON, ready for CloudFormation
    _assert_no_circular_dependency(output["Resources"])


def _assert_no_circular_dependency(resources: dict[str, Any]) -> None:
    """CloudFormation refuses a cycle (say, a function of the API reading the API's own URL)."""

    def deps(resource: dict[str, Any]) -> set[str]:
        text = json.dumps(resource.get("Properties", {}))
        names = set(re.findall(r'"Ref": "(\w+)"', text)) | set(re.findall(r'"Fn::GetAtt": \["(\w+)"', text))
        names |= set(re.findall(r"\$\{(\w+)[.}]", text))
        depends = resource.get("DependsOn", [])
        return {n for n in names | set(depends if isinstance(depends, list) else [depends]) if n in resources}

    graph = {name: deps(resource) for name, resource in resources.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"circular dependency: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in graph[name]:
                visit(dep, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_learn_public_url_defaults_to_the_apis_own_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from conduix import config

    monkeypatch.setenv("CONDUIX_PUBLIC_URL", "")
    stage = {"requestContext": {"domainName": "abc.execute-api.eu-west-1.amazonaws.com", "stage": "api"}}
    config.learn_public_url(stage)
    assert os.environ["CONDUIX_PUBLIC_URL"] == "https://abc.execute-api.eu-west-1.amazonaws.com/api"
    config.learn_public_url({"requestContext": {"domainName": "other.example", "stage": "api"}})
    assert os.environ["CONDUIX_PUBLIC_URL"] == "https://abc.execute-api.eu-west-1.amazonaws.com/api"  # kept
    monkeypatch.setenv("CONDUIX_PUBLIC_URL", "")
    config.learn_public_url({"requestContext": {"domainName": "billing.example.com", "stage": "api"}})
    assert os.environ["CONDUIX_PUBLIC_URL"] == "https://billing.example.com"  # a custom domain's root


def test_every_function_has_a_handler_file_a_log_group_and_a_sample_event() -> None:
    template = load_template()
    functions = resources_of_type(template, "AWS::Serverless::Function")
    log_groups = json.dumps(resources_of_type(template, "AWS::Logs::LogGroup"))
    for logical_id, resource in functions.items():
        code = ROOT / resource["Properties"]["CodeUri"]
        assert (code / "app.py").is_file(), logical_id
        assert f"${{{logical_id}}}" in log_groups, f"{logical_id} has no log group with retention"
        assert (ROOT / "events" / f"{code.name}.json").is_file(), f"events/{code.name}.json is missing"


def test_scheduled_functions_have_a_failure_destination() -> None:
    for logical_id, resource in resources_of_type(load_template(), "AWS::Serverless::Function").items():
        events = resource["Properties"].get("Events", {}).values()
        if any(e["Type"] == "Schedule" for e in events):
            assert resource["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"], logical_id


def test_tables_are_on_demand_with_point_in_time_recovery_and_the_cache_has_ttl() -> None:
    tables = resources_of_type(load_template(), "AWS::DynamoDB::Table")
    for logical_id, table in tables.items():
        props: dict[str, Any] = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", logical_id
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, logical_id
    assert tables["CacheTable"]["Properties"]["TimeToLiveSpecification"]["Enabled"] is True


def test_the_routes_of_the_mission_are_declared() -> None:
    refs = {
        "BillingTable": "b",
        "CacheTable": "c",
        "ScheduledJobFailures.Arn": "arn",
        "OperatorKeySha256": "0" * 64,
        "CursorSigningKey": "k" * 32,
    }
    routes = {
        (spec.logical_id, route.path_template)
        for spec in load_functions(load_template(TEMPLATE_PATH), refs)
        for route in spec.routes
    }
    for expected in [
        ("CompletionFunction", "/v1/chat/completions"),
        ("CompletionFunction", "/v1/models"),
        ("BillingApiFunction", "/v1/billing"),
        ("BillingApiFunction", "/v1/usage"),
        ("BillingApiFunction", "/v1/pricing"),
        ("AdminFunction", "/admin/{proxy+}"),
        ("StripeWebhookFunction", "/webhooks/stripe"),
    ]:
        assert expected in routes
