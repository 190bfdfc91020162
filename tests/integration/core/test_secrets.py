"""Secrets in AWS: read through Powertools Parameters from Secrets Manager or SSM (SecureString),
cached, and only by a function whose template names them (moto plays the AWS side)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from conduix.core import config
from conduix.core.errors import ConfigurationError
from conduix_local.moto_server import LockedMotoServer

pytestmark = pytest.mark.integration


@pytest.fixture
def aws(moto_server: LockedMotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    moto_server.reset()
    parameters.clear_caches()
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CONDUIX_SECRETS_FROM_ENV")  # as deployed: no reading keys from the environment
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, "from-the-environment-never-used")
    return {"endpoint_url": moto_server.url, "region_name": "us-east-1"}


def test_keys_come_from_secrets_manager_and_ssm_never_from_plain_variables(
    aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = boto3.client("secretsmanager", **aws)
    stripe_arn = secrets.create_secret(Name="conduix/stripe", SecretString="sk_test_from_sm")["ARN"]
    providers_arn = secrets.create_secret(
        Name="conduix/providers", SecretString=json.dumps({"OPENAI_API_KEY": "sk-openai"})
    )["ARN"]
    boto3.client("ssm", **aws).put_parameter(
        Name="/conduix/webhook", Value="whsec_from_ssm", Type="SecureString"
    )
    monkeypatch.setenv("STRIPE_API_KEY_SECRET_ID", stripe_arn)
    monkeypatch.setenv("PROVIDER_KEYS_SECRET_ID", providers_arn)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET_ID", "/conduix/webhook")

    assert config.secret("STRIPE_API_KEY") == "sk_test_from_sm"
    assert config.secret("STRIPE_WEBHOOK_SECRET") == "whsec_from_ssm"
    assert config.secret("OPENAI_API_KEY") == "sk-openai"
    assert config.secret("ANTHROPIC_API_KEY") is None  # not in the provider keys

    # Cached: a rotation shows after SECRET_MAX_AGE, not on every request.
    secrets.put_secret_value(SecretId=stripe_arn, SecretString="sk_test_rotated")
    assert config.secret("STRIPE_API_KEY") == "sk_test_from_sm"
    parameters.clear_caches()
    assert config.secret("STRIPE_API_KEY") == "sk_test_rotated"

    # A function whose template names no such secret has none, whatever its environment holds.
    monkeypatch.delenv("STRIPE_API_KEY_SECRET_ID")
    assert config.secret("STRIPE_API_KEY") is None


def test_an_unreadable_or_malformed_secret_is_a_configuration_error(
    aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY_SECRET_ID", "conduix/missing")
    with pytest.raises(ConfigurationError, match="conduix/missing"):
        config.secret("STRIPE_API_KEY")
    arn = boto3.client("secretsmanager", **aws).create_secret(Name="conduix/bad", SecretString="[1]")["ARN"]
    monkeypatch.setenv("PROVIDER_KEYS_SECRET_ID", arn)
    with pytest.raises(ConfigurationError, match="JSON object"):
        config.secret("OPENAI_API_KEY")
