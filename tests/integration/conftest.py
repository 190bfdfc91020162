"""Integration tests run the data-access modules against the locked moto server, with tables
created from template.yaml, reset before each test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from conduix.accounts import auth, orgs
from conduix.core import config
from conduix.ledger import leases, wallets
from conduix.pricing import catalog
from conduix.store import dynamo
from conduix_local.moto_server import LockedMotoServer
from conduix_local.tables import create_tables
from conduix_local.template import load_template
from conduix_local.upstream import FakeUpstream

from tests.integration.helpers import NOW, catalog_entries


@pytest.fixture
def tables(moto_server: LockedMotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    moto_server.reset()
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "BILLING_TABLE": "BillingTable",
        "CACHE_TABLE": "CacheTable",
        "CONDUIX_CURSOR_KEY": "integration-tests-cursor-key-0123456789abcdef",
    }.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    dynamo.reset_client()
    auth.clear_cache()
    wallets.forget_views()
    leases.forget()
    names = create_tables(boto3.client("dynamodb"), load_template())
    yield names
    config.settings.cache_clear()
    dynamo.reset_client()


@pytest.fixture
def org(tables: dict[str, str]) -> str:
    return orgs.create_org("Acme", "billing@acme.test", NOW).org_id


@pytest.fixture
def served_catalog(
    tables: dict[str, str], upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeUpstream]:
    """completion.serve against the fake upstream, with the models of `catalog_entries`."""
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": catalog_entries(upstream.url)}))
    monkeypatch.setenv("CONDUIX_MODELS_FILE", str(path))
    config.settings.cache_clear()
    catalog.catalog.cache_clear()
    yield upstream
    catalog.catalog.cache_clear()
