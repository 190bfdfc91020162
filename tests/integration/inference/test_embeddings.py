"""POST /v1/embeddings through embeddings.serve: held, billed per input token of the model that
served, cached, with fallbacks, against the fake upstream's deterministic embeddings."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conduix.accounts.auth import Principal
from conduix.core import config
from conduix.core.errors import InsufficientCredits, InvalidRequest
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.core.money import cost_nanos
from conduix.inference import answers, completion, embeddings
from conduix.ledger import wallets
from conduix.pricing import catalog
from conduix_local.upstream import FakeUpstream, embedding_tokens

from tests.integration.helpers import assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration

PRICE = 7 * C  # nano-credits per million input tokens


@pytest.fixture
def embed_catalog(
    tables: dict[str, str], upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeUpstream]:
    def entry(model_id: str, upstream_model: str, price: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": model_id,
            "upstream": {"base_url": upstream.url, "model": upstream_model},
            "pricing": {"input_per_million": price, "output_per_million": "0"},
            **extra,
        }

    models = [
        entry("t/chat", "fake-small", "2"),
        entry("t/embed", "fake-embed", "7", kind="embedding", dimensions=16, dimensions_adjustable=True),
        entry("t/fixed", "fake-embed", "7", kind="embedding", dimensions=16),
        entry("t/flaky", "fail-embed", "1", kind="embedding", dimensions=16, fallbacks=["t/fixed"]),
    ]
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": models}))
    monkeypatch.setenv("CONDUIX_MODELS_FILE", str(path))
    config.settings.cache_clear()
    catalog.catalog.cache_clear()
    yield upstream
    catalog.catalog.cache_clear()


def embed(org: str, body: dict[str, Any], request_id: str) -> answers.Served:
    principal = Principal(org_id=org, key_id="key_1", scopes=("inference",))
    return embeddings.serve(principal, json.dumps(body).encode(), request_id, time.monotonic() + 20)


def test_embeddings_are_billed_exactly_per_input_token(org: str, embed_catalog: FakeUpstream) -> None:
    fund(org, "1")
    inputs = ["The quick brown fox", "jumps over the lazy dog, twice!", [101, 2023, 2003]]
    served = embed(org, {"model": "t/embed", "input": inputs}, "e1")
    body = json.loads(served.body)
    tokens = embedding_tokens(inputs)
    assert body["usage"]["prompt_tokens"] == tokens == 4 + 8 + 3
    assert served.cost == cost_nanos(tokens, 0, PRICE, 0) == tokens * 7_000
    assert body["usage"]["cost"] == "0.000105" and served.cache_status == "MISS"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and len(body["data"][0]["embedding"]) == 16
    usage = [i for i in ledger_items(org) if i["entry_type"]["S"] == "usage"]
    assert [-int(i["amount"]["N"]) for i in usage] == [served.cost]
    assert wallets.get_wallet(org).balance == C - served.cost == served.balance
    # The same request again: the cache answers, free, with the same vectors
    again = embed(org, {"model": "t/embed", "input": inputs}, "e2")
    assert again.cache_status == "HIT" and again.cost == 0
    assert json.loads(again.body)["data"] == body["data"]
    assert embed_catalog.calls()["total"] == 1
    assert_consistent(org)


def test_dimensions_and_base64(org: str, embed_catalog: FakeUpstream) -> None:
    fund(org, "1")
    served = embed(
        org, {"model": "t/embed", "input": "hi", "dimensions": 4, "encoding_format": "base64"}, "d"
    )
    packed = json.loads(served.body)["data"][0]["embedding"]
    vector = struct.unpack("<4f", base64.b64decode(packed))
    assert abs(sum(v * v for v in vector) - 1) < 1e-4  # renormalised after shortening
    for body, param in [
        ({"model": "t/fixed", "input": "hi", "dimensions": 4}, "dimensions"),  # not adjustable
        ({"model": "t/embed", "input": "hi", "dimensions": 17}, "dimensions"),
        ({"model": "t/embed", "input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "t/chat", "input": "hi"}, "model"),
        ({"model": "t/embed", "input": ""}, "input"),
        ({"model": "t/embed", "input": []}, "input"),
        ({"model": "t/embed", "input": ["a", 5]}, "input[1]"),
        ({"model": "t/embed", "input": [[1, -2]]}, "input[0]"),
        ({"model": "t/embed", "input": "hi", "dimensions": True}, "dimensions"),
        ({"model": "t/embed", "input": "hi", "temperature": 0}, "temperature"),
        ({"model": "t/embed"}, "input"),
    ]:
        with pytest.raises(InvalidRequest) as refused:
            embed(org, body, "bad")
        assert refused.value.param == param, body
    assert embed_catalog.calls()["total"] == 1
    assert_consistent(org)


def test_chat_refuses_an_embedding_model(org: str, embed_catalog: FakeUpstream) -> None:
    fund(org, "1")
    principal = Principal(org_id=org, key_id="key_1", scopes=("inference",))
    body = {"model": "t/embed", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(InvalidRequest) as refused:
        completion.serve(principal, json.dumps(body).encode(), "c", time.monotonic() + 20)
    assert refused.value.param == "model" and "/v1/embeddings" in refused.value.message


def test_a_fallback_is_billed_at_the_serving_models_price(org: str, embed_catalog: FakeUpstream) -> None:
    fund(org, "1")
    served = embed(org, {"model": "t/flaky", "input": "one two three"}, "f")
    assert served.model == "t/fixed" and served.fallback_used
    assert served.cost == 3 * 7_000
    assert embed_catalog.calls()["by_model"] == {"fail-embed": 1, "fake-embed": 1}
    assert_consistent(org)


def test_a_short_balance_is_refused_before_the_provider_is_called(
    org: str, embed_catalog: FakeUpstream
) -> None:
    fund(org, "0.00001")  # 10,000 nanos: the hold of 2,000 bytes is 14,000
    with pytest.raises(InsufficientCredits):
        embed(org, {"model": "t/embed", "input": "x" * 2000}, "p")
    assert embed_catalog.calls()["total"] == 0
    assert wallets.get_wallet(org).held == 0
    assert_consistent(org)
