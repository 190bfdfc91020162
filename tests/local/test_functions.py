"""load_functions reads what the local front runs from a SAM template, the real one included."""

from __future__ import annotations

from pathlib import Path

import pytest
from conduix_local.functions import FunctionSpec, Route, ScheduleSpec, TemplateError, load_functions
from conduix_local.template import ROOT, load_template

FIXTURES = Path(__file__).parent / "fixtures" / "front"
FIXTURE_REFS = {"Table": "t-Table", "Queue.Arn": "arn:aws:sqs:us-east-1:123456789012:q", "Secret": "s3cret"}


def _by_id(specs: list[FunctionSpec]) -> dict[str, FunctionSpec]:
    return {spec.logical_id: spec for spec in specs}


def test_fixture_template_functions() -> None:
    specs = _by_id(load_functions(load_template(FIXTURES / "template.yaml"), FIXTURE_REFS, base_dir=FIXTURES))
    assert list(specs) == [
        "EchoFunction", "SleepFunction", "BoomFunction", "ChattyFunction", "TickFunction",
        "PowertoolsFunction", "BrokenFunction", "StreamFunction",
    ]  # fmt: skip
    echo = specs["EchoFunction"]
    assert echo.code_dir == (FIXTURES / "functions").resolve()
    assert echo.handler == "app.echo"
    assert (echo.timeout_s, echo.memory_mb) == (5, 1024)  # Globals' Timeout, its own MemorySize
    assert (specs["SleepFunction"].timeout_s, specs["SleepFunction"].memory_mb) == (1, 256)
    assert echo.routes[:2] == [Route("ANY", "/echo"), Route("GET", "/items/{id}")]
    assert specs["TickFunction"].routes == []
    assert specs["TickFunction"].schedules == [
        ScheduleSpec("EveryMinute", "rate(1 minute)", None),
        ScheduleSpec("Monthly", "cron(15 0 1 * ? *)", {"job": "monthly"}),
    ]


def test_env_resolution() -> None:
    echo = _by_id(load_functions(load_template(FIXTURES / "template.yaml"), FIXTURE_REFS, base_dir=FIXTURES))[
        "EchoFunction"
    ]
    assert echo.env == {
        "TABLE_NAME": "t-Table",  # Ref to a resource, from Globals
        "GREETING": "hello",  # Ref to a parameter not in refs: its Default
        "QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:q",  # GetAtt
        "SECRET": "s3cret",  # Ref to a parameter without Default
        "FLAG": "true",  # YAML scalars become the strings Lambda sees
        "COUNT": "3",
        "NAME": "t-Table-echo",  # Sub
    }


def test_unresolvable_value_names_function_and_variable() -> None:
    template = load_template(FIXTURES / "template.yaml")
    refs = {k: v for k, v in FIXTURE_REFS.items() if k != "Queue.Arn"}
    with pytest.raises(TemplateError, match=r"EchoFunction: environment variable QUEUE_ARN.*Queue\.Arn"):
        load_functions(template, refs, base_dir=FIXTURES)
    template["Resources"]["EchoFunction"]["Properties"]["Environment"]["Variables"]["QUEUE_ARN"] = {
        "Fn::Join": ["", ["a", "b"]]
    }
    with pytest.raises(TemplateError, match="EchoFunction: environment variable QUEUE_ARN"):
        load_functions(template, FIXTURE_REFS, base_dir=FIXTURES)


REAL_REFS = {
    "BillingTable": "local-BillingTable",
    "CacheTable": "local-CacheTable",
    "ModelsFile": "",
    "OperatorKeySha256": "0" * 64,
    "CursorSigningKey": "k" * 32,
    "ScheduledJobFailures.Arn": "arn:aws:sqs:us-east-1:123456789012:local-ScheduledJobFailures",
    "BillingTable.Arn": "arn:aws:dynamodb:us-east-1:123456789012:table/local-BillingTable",
    "ProviderKeysSecret": "local:ProviderKeysSecret",
    "StripeApiKeySecret": "local:StripeApiKeySecret",
    "StripeWebhookSigningSecret": "local:StripeWebhookSigningSecret",
}


def test_real_template() -> None:
    specs = _by_id(load_functions(load_template(), REAL_REFS))
    assert {k: (v.routes, v.schedules) for k, v in specs.items()} == {
        "CompletionFunction": (
            [
                Route("ANY", "/v1/chat/completions", stream=True),
                Route("ANY", "/v1/models"),
                Route("ANY", "/v1/embeddings"),
            ],
            [],
        ),
        "BillingApiFunction": (
            [
                Route("ANY", "/v1/billing"),
                Route("ANY", "/v1/billing/{proxy+}"),
                Route("ANY", "/v1/usage"),
                Route("ANY", "/v1/pricing"),
                Route("ANY", "/dashboard/{proxy+}"),
                Route("ANY", "/dashboard"),
                Route("ANY", "/pricing"),
                Route("ANY", "/openapi.json"),
            ],
            [],
        ),
        "AdminFunction": ([Route("ANY", "/admin/{proxy+}")], []),
        "StripeWebhookFunction": ([Route("ANY", "/webhooks/stripe")], []),
        "AutoReloadFunction": ([], [ScheduleSpec("EveryMinute", "rate(1 minute)")]),
        "MonthlyInvoicingFunction": ([], [ScheduleSpec("FirstOfMonth", "cron(15 0 1 * ? *)")]),
        "HoldSweeperFunction": ([], [ScheduleSpec("EveryMinute", "rate(1 minute)")]),
    }
    for spec in specs.values():
        assert spec.code_dir.parent == ROOT / "functions"
        assert spec.handler == "app.lambda_handler"
        assert spec.env["BILLING_TABLE"] == "local-BillingTable"
        assert spec.env["CACHE_TABLE"] == "local-CacheTable"
        assert spec.env["POWERTOOLS_LOGGER_LOG_EVENT"] == "false"
    assert specs["AdminFunction"].env["OPERATOR_KEY_SHA256"] == "0" * 64
    assert specs["CompletionFunction"].env["CONDUIX_MODELS_FILE"] == ""
    assert {k: (v.timeout_s, v.memory_mb) for k, v in specs.items()} == {
        "CompletionFunction": (900, 256),
        "BillingApiFunction": (10, 512),
        "AdminFunction": (10, 512),
        "StripeWebhookFunction": (10, 512),
        "AutoReloadFunction": (60, 512),
        "MonthlyInvoicingFunction": (300, 512),
        "HoldSweeperFunction": (60, 512),
    }


def test_real_template_needs_the_operator_key_hash() -> None:
    refs = {k: v for k, v in REAL_REFS.items() if k != "OperatorKeySha256"}
    with pytest.raises(TemplateError, match="AdminFunction: environment variable OPERATOR_KEY_SHA256"):
        load_functions(load_template(), refs)
