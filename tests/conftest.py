"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conduix_local.dynamo_standin import StandIn
from conduix_local.moto_server import LockedMotoServer
from conduix_local.upstream import FakeUpstream

from tests.support.stack import stack  # noqa: F401 - one stack per session for e2e and browser tests

# The tests, like the local stack, have no Secrets Manager: a function's secrets are read from
# the environment variables of their names (conduix.core.config.secret).
os.environ.setdefault("CONDUIX_SECRETS_FROM_ENV", "1")
for _variable in ("PROVIDER_KEYS_SECRET_ID", "STRIPE_API_KEY_SECRET_ID", "STRIPE_WEBHOOK_SECRET_ID"):
    os.environ.setdefault(_variable, "local")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LockedMotoServer]:
    """One locked moto server per test session (state is reset by the fixtures that use it),
    with DynamoDB's throttles and transaction conflicts modelled in front of it."""
    with LockedMotoServer(standin=StandIn()) as server:
        yield server


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def upstream(upstream_server: FakeUpstream) -> FakeUpstream:
    """The fake model provider, with its call counters zeroed."""
    upstream_server.reset_calls()
    return upstream_server
