"""Stand-ins shared by the local-stack tests: one locked moto server and one fake upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from conduix_local.moto_server import LockedMotoServer
from conduix_local.upstream import FakeUpstream
from openai import OpenAI


@pytest.fixture
def aws(moto_server: LockedMotoServer) -> dict[str, Any]:
    """boto3 client arguments for the moto server, whose state is wiped before each test."""
    moto_server.reset()
    return {
        "endpoint_url": moto_server.url,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }


@pytest.fixture
def dynamodb(aws: dict[str, Any]) -> Any:
    return boto3.client("dynamodb", **aws)


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[OpenAI]:
    with OpenAI(base_url=upstream.url, api_key="x", max_retries=0) as sdk:
        yield sdk
