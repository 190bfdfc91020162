"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conduix_local.moto_server import LockedMotoServer
from conduix_local.upstream import FakeUpstream

from tests.support.stack import stack  # noqa: F401 - one stack per session for e2e and browser tests


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LockedMotoServer]:
    """One locked moto server per test session (state is reset by the fixtures that use it)."""
    with LockedMotoServer() as server:
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
