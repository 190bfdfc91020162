"""The local front as an operator uses it: the stack's map, short function names, and the
stage URL API Gateway serves the API under (ApiUrl ends in /api)."""

from __future__ import annotations

import re
import urllib.request
from urllib.parse import urljoin

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


def test_the_stack_map_names_every_part(stack: Stack) -> None:
    reply = stack.operator("GET", "/_local/stack")
    assert reply.status == 200
    assert reply.body == {
        "api": stack.api,
        "dashboard": stack.api + "/dashboard/billing",
        "dynamodb": {"endpoint": stack.moto},
        "stripe": {"api_base": stack.stripe_url, "secret_key": "sk_test_conduix_local"},
        "upstream": {"base_url": stack.upstream},
    }
    assert stack.call("GET", "/_local/stack").status == 401
    assert stack.operator("POST", "/_local/stack").status == 405


def test_scheduled_functions_answer_to_their_short_names(stack: Stack) -> None:
    short, full = stack.run_job("HoldSweeper"), stack.run_job("HoldSweeperFunction")
    assert (short.status, short.body["function"]) == (200, "HoldSweeperFunction")
    assert (full.status, full.body["function"]) == (200, "HoldSweeperFunction")
    assert stack.run_job("NoSuchJob").status == 404


def test_the_dashboard_works_under_the_stage_url(stack: Stack) -> None:
    base = stack.api + "/api/"
    page_url = base + "dashboard/billing"
    with urllib.request.urlopen(page_url, timeout=30) as response:
        page = response.read().decode()
    linked = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert len(linked) >= 5
    for url in linked:
        if url.startswith("mailto:"):
            continue
        absolute = urljoin(page_url, url)
        assert absolute.startswith(base), url
        with urllib.request.urlopen(absolute, timeout=30) as response:
            assert response.status == 200, absolute
    assert stack.call("GET", "/api/v1/pricing").status == 200  # what the scripts fetch, relative
