"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conduix_local.moto_server import LockedMotoServer


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LockedMotoServer]:
    """One locked moto server per test session (state is reset by the fixtures that use it)."""
    with LockedMotoServer() as server:
        yield server
