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
    _assert_completions_stream(output["Resources"])


def _assert_completions_stream(resources: dict[str, Any]) -> None:
    """Chat completions go through a streaming integration (InvokeWithResponseStream) that may
    run as long as Lambda; every other route stays buffered."""
    (api,) = [r for r in resources.values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    paths = api["Properties"]["Body"]["paths"]
    for path, methods in paths.items():
        for integration in (m["x-amazon-apigateway-integration"] for m in methods.values()):
            uri = json.dumps(integration["uri"])
            if path == "/v1/chat/completions":
                assert integration["responseTransferMode"] == "STREAM"
                assert "/2021-11-15/functions/" in uri and uri.endswith('response-streaming-invocations"}')
                assert integration["timeoutInMillis"] == 900_000
            else:
                assert "responseTransferMode" not in integration and uri.endswith('/invocations"}'), path
    completion = resources["CompletionFunction"]["Properties"]
    assert completion["Timeout"] == 900  # Lambda's limit: the models' catalog timeouts bound a request
    wrapper = completion["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"]
    script = ROOT / "functions/completion" / Path(wrapper).name
    assert wrapper == "/var/task/stream-runtime" and os.access(script, os.X_OK)
    assert "-m conduix.web.runtime" in script.read_text()


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
    from conduix.core import config

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


def test_tables_are_on_demand_the_ledger_is_recoverable_and_the_cache_expires() -> None:
    tables = resources_of_type(load_template(), "AWS::DynamoDB::Table")
    for logical_id, table in tables.items():
        props: dict[str, Any] = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", logical_id
    billing, cache = tables["BillingTable"]["Properties"], tables["CacheTable"]["Properties"]
    assert billing["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    # The cache is rebuilt by asking the model again: no point-in-time recovery to pay for.
    assert (cache.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") in (
        None,
        False,
    )
    assert cache["TimeToLiveSpecification"]["Enabled"] is True


def test_the_routes_of_the_mission_are_declared() -> None:
    refs = {
        "BillingTable": "b",
        "CacheTable": "c",
        "ScheduledJobFailures.Arn": "arn",
        "OperatorKeySha256": "0" * 64,
        "CursorSigningKey": "k" * 32,
        "ProviderKeysSecret": "p",
        "StripeApiKeySecret": "s",
        "StripeWebhookSigningSecret": "w",
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


def _functions_env() -> dict[str, dict[str, Any]]:
    template = load_template()
    globals_env = template["Globals"]["Function"]["Environment"]["Variables"]
    return {
        logical_id: {**globals_env, **resource["Properties"].get("Environment", {}).get("Variables", {})}
        for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function").items()
    }


def test_keys_come_from_secrets_that_only_their_functions_may_read() -> None:
    template = load_template()
    secrets = resources_of_type(template, "AWS::SecretsManager::Secret")
    assert set(secrets) == {"ProviderKeysSecret", "StripeApiKeySecret", "StripeWebhookSigningSecret"}
    # No key travels as a plain environment variable or a template parameter.
    for logical_id, env in _functions_env().items():
        for name in env:
            assert not name.endswith(("_API_KEY", "WEBHOOK_SECRET")), (logical_id, name)
    assert not [p for p in template["Parameters"] if "Stripe" in p or p.endswith("ApiKey")]
    # Who names a secret in its environment is exactly who may read it, and only it.
    readers: dict[str, set[str]] = {}
    for policy in resources_of_type(template, "AWS::IAM::Policy").values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert [s["Action"] for s in statements] == ["secretsmanager:GetSecretValue"]
        secret = statements[0]["Resource"]["Ref"]
        roles = {r["Ref"].removesuffix("Role") for r in policy["Properties"]["Roles"]}
        readers.setdefault(secret, set()).update(roles)
    named: dict[str, set[str]] = {}
    for logical_id, env in _functions_env().items():
        for name, value in env.items():
            if name.endswith("_SECRET_ID"):
                named.setdefault(value["Ref"], set()).add(logical_id)
    assert readers == named
    assert named["StripeWebhookSigningSecret"] == {"StripeWebhookFunction"}
    assert named["ProviderKeysSecret"] == {"CompletionFunction"}
    config_source = (ROOT / "layers" / "shared" / "conduix" / "core" / "config.py").read_text()
    for variable in {
        name for env in _functions_env().values() for name in env if name.endswith("_SECRET_ID")
    }:
        assert f'"{variable}"' in config_source  # the code reads the variable the template sets


def test_alarms_watch_what_an_operator_must_act_on() -> None:
    template = load_template()
    alarms = resources_of_type(template, "AWS::CloudWatch::Alarm")
    assert set(alarms) == {
        "ScheduledJobFailuresAlarm",
        "SettleIncidentsAlarm",
        "Api5xxRateAlarm",
        "WebhookSignatureFailuresAlarm",
    }
    for logical_id, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["TreatMissingData"] == "notBreaching", logical_id
        for actions in ("AlarmActions", "OKActions"):
            assert props[actions]["Fn::If"][0] == "HasAlarmTopic", logical_id
            assert props[actions]["Fn::If"][1] == [{"Ref": "AlarmTopicArn"}], logical_id
    assert template["Conditions"]["HasAlarmTopic"]
    queue = alarms["ScheduledJobFailuresAlarm"]["Properties"]
    assert queue["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["ScheduledJobFailures", "QueueName"]}
    # The custom metrics are spelled as telemetry.py emits them, with its dimensions.
    from conduix.core import telemetry

    source = Path(telemetry.__file__).read_text()
    settle = alarms["SettleIncidentsAlarm"]["Properties"]
    assert (settle["Namespace"], settle["MetricName"]) == ("Conduix", "SettleIncidents")
    assert '"SettleIncidents"' in source and "completion" in json.dumps(settle["Dimensions"])
    webhook = alarms["WebhookSignatureFailuresAlarm"]["Properties"]
    assert webhook["MetricName"] == "WebhookEvents" and '"WebhookEvents"' in source
    assert {d["Name"]: d["Value"] for d in webhook["Dimensions"]} == {
        "service": "stripe-webhook",
        "outcome": "invalid_signature",
    }
    from conduix.core.errors import InvalidSignature

    assert InvalidSignature.code == "invalid_signature"  # what StripeWebhook reports as its outcome
    rate = alarms["Api5xxRateAlarm"]["Properties"]
    stats = {m["Id"]: m.get("MetricStat", {}).get("Metric", {}).get("MetricName") for m in rate["Metrics"]}
    assert stats == {"rate": None, "errors": "5XXError", "requests": "Count"}
    api_name = template["Resources"]["ConduixApi"]["Properties"]["Name"]
    for metric in rate["Metrics"][1:]:
        assert {"Name": "ApiName", "Value": api_name} in metric["MetricStat"]["Metric"]["Dimensions"]
    # The service names the alarms filter on are the functions' own.
    services = {env["POWERTOOLS_SERVICE_NAME"] for env in _functions_env().values()}
    assert {"completion", "stripe-webhook"} <= services


def test_completion_memory_is_what_the_published_benchmark_chose() -> None:
    import re

    memory = load_template()["Resources"]["CompletionFunction"]["Properties"]["MemorySize"]
    report = (ROOT / "docs" / "benchmarks.md").read_text()
    picked = re.search(r"It picks \*\*(\d+) MB\*\*", report)
    assert picked, "docs/benchmarks.md has no memory choice: run make bench"
    assert int(picked.group(1)) == memory


def test_the_runbook_subscribes_the_webhook_to_exactly_the_handled_events() -> None:
    import re

    from conduix.payments import webhooks

    readme = (ROOT / "README.md").read_text()
    subscribed = re.findall(r'enabled_events\[\]=([a-z_.]+)"', readme)
    assert sorted(subscribed) == sorted(webhooks.HANDLERS)


def test_the_stage_throttle_comes_from_parameters_sized_to_the_account() -> None:
    template = load_template()
    (setting,) = template["Resources"]["ConduixApi"]["Properties"]["MethodSettings"]
    assert setting["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert setting["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    parameters = template["Parameters"]
    # The defaults are the account's regional API Gateway limits, above one hot org's 2,000 req/s.
    assert (
        parameters["ApiThrottleRateLimit"]["Default"],
        parameters["ApiThrottleBurstLimit"]["Default"],
    ) == (
        10000,
        5000,
    )
