from __future__ import annotations

import json
from pathlib import Path

import pytest
from conduix.core.errors import ConfigurationError, ModelNotFound
from conduix.pricing.catalog import DEFAULT_CATALOG, PromptBounds, load_catalog, parse_catalog
from conduix.pricing.costs import (
    PromptShape,
    accepts,
    charge_nanos,
    hold_nanos,
    plan_attempts,
    prompt_token_ceiling,
)


def entry(model_id: str, inp: str = "0.15", out: str = "0.60", **extra: object) -> dict[str, object]:
    return {
        "id": model_id,
        "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": model_id.split("/")[-1]},
        "pricing": {"input_per_million": inp, "output_per_million": out},
        **extra,
    }


def test_default_catalog_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    catalog = load_catalog(None)
    assert DEFAULT_CATALOG.exists()
    model = catalog.get("openai/gpt-4o-mini")
    assert model.upstream.base_url == "https://api.openai.com/v1"
    assert model.pricing.input_per_million == 150_000_000


def test_env_placeholders_point_the_catalog_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1234/v1")
    assert load_catalog(None).get("openai/gpt-4o").upstream.base_url == "http://127.0.0.1:1234/v1"


def test_yaml_catalog(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - id: acme/fast\n    upstream: {base_url: 'http://h/v1', model: fast-1}\n"
        "    pricing: {input_per_million: '0.15', output_per_million: '0.60'}\n"
    )
    assert load_catalog(str(path)).get("acme/fast").upstream.model == "fast-1"


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [entry("acme/a", inp="cheap")],
            "entry 'acme/a': field 'pricing.input_per_million' is not a decimal",
        ),
        (
            [entry("acme/a", out="-1")],
            "entry 'acme/a': field 'pricing.output_per_million' must be a non-negative",
        ),
        (
            [entry("acme/a", inp=0.15)],
            "entry 'acme/a': field 'pricing.input_per_million' must be a decimal string",
        ),
        ([{"id": "acme/a", "pricing": {}}], "entry 'acme/a': field 'upstream' is missing"),
        ([entry("acme/a", fallbacks=["acme/zz"])], "entry 'acme/a': field 'fallbacks' names 'acme/zz'"),
        ([entry("acme/a"), entry("acme/a")], "entry 'acme/a': field 'id' is not unique"),
        (
            [entry("acme/a", max_output_tokens=0)],
            "entry 'acme/a': field 'max_output_tokens' must be a positive",
        ),
        ([{"upstream": {}}], "entry '#0': field 'id' is missing"),
        ([], "expected a non-empty list"),
    ],
)
def test_an_invalid_catalog_names_the_entry_and_field(models: list[object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        parse_catalog({"models": models}, "test.json")


def test_unreadable_or_malformed_catalog_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_catalog(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid json"):
        load_catalog(str(bad))


def test_unknown_model_is_model_not_found() -> None:
    catalog = parse_catalog([entry("acme/a")], "t")
    with pytest.raises(ModelNotFound, match="'acme/b' does not exist"):
        catalog.get("acme/b")


def test_hold_is_the_worst_case_over_the_fallback_chain() -> None:
    catalog = parse_catalog(
        [
            entry("acme/cheap", "1", "2", fallbacks=["acme/dear"]),
            entry("acme/dear", "10", "20", max_output_tokens=50),
        ],
        "t",
    )
    attempts = plan_attempts(catalog.chain("acme/cheap"), requested_max_tokens=100, choices=1)
    assert [(a.model.id, a.max_tokens) for a in attempts] == [("acme/cheap", 100), ("acme/dear", 50)]
    # cheap: 1000*1 + 100*2 = 1200 credits-per-million units; dear: 1000*10 + 50*20 = 11000
    # 988 bytes + 4 for the message + 8 for the request = 1000 prompt tokens at most
    assert hold_nanos(attempts, PromptShape(text_bytes=988, messages=1)) == 11_000 * 1000


def test_hold_covers_every_choice() -> None:
    catalog = parse_catalog([entry("acme/a", "0", "1")], "t")
    attempts = plan_attempts(catalog.chain("acme/a"), requested_max_tokens=10, choices=3)
    assert attempts[0].max_tokens == 10
    assert hold_nanos(attempts, PromptShape(text_bytes=0, messages=0)) == 30 * 1000


def test_prompt_ceiling_bounds_tokens_by_bytes() -> None:
    messages = [{"role": "user", "content": "héllo wörld"}]
    size = len(json.dumps(messages, ensure_ascii=False).encode())
    assert prompt_token_ceiling(PromptShape(size, 1), PromptBounds()) >= size


def test_prompt_ceiling_adds_what_the_provider_bills_beyond_the_text() -> None:
    bounds = PromptBounds(per_image=1445, tools=300, per_message=3, per_request=5)
    shape = PromptShape(text_bytes=100, messages=2, images=3, tools=True)
    assert prompt_token_ceiling(shape, bounds) == 100 + 2 * 3 + 5 + 300 + 3 * 1445
    assert prompt_token_ceiling(PromptShape(100, 2), bounds) == 100 + 2 * 3 + 5


def test_prompt_bounds_default_and_parse() -> None:
    plain, declared = parse_catalog(
        [
            entry("acme/a"),
            entry("acme/b", prompt_bounds={"per_image": 765, "tools": 350}),
        ],
        "t",
    )
    assert plain.prompt_bounds == PromptBounds(per_image=None, tools=1000, per_message=4, per_request=8)
    assert declared.prompt_bounds == PromptBounds(per_image=765, tools=350, per_message=4, per_request=8)
    images = PromptShape(10, 1, images=1)
    assert (accepts(plain, images), accepts(declared, images)) == (False, True)
    assert accepts(plain, PromptShape(10, 1, tools=True))


@pytest.mark.parametrize(
    ("bounds", "fault"),
    [
        ({"per_image": -1}, "prompt_bounds.per_image"),
        ({"tools": "300"}, "prompt_bounds.tools"),
        ({"per_audio": 10}, "prompt_bounds.per_audio"),
        ([], "prompt_bounds"),
    ],
)
def test_invalid_prompt_bounds_name_the_field(bounds: object, fault: str) -> None:
    with pytest.raises(ConfigurationError, match=f"'{fault}'"):
        parse_catalog([entry("acme/a", prompt_bounds=bounds)], "t")


def test_the_default_catalog_bounds_images_by_the_providers_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI (high detail): fit in 2048x2048, shortest side to 768, then a base plus a price per
    512 px tile; the most tiles is 2 x 4 = 8 (768 x 2048). Anthropic: about width x height / 750,
    with images kept under ~1.15 megapixels (1,600 tokens)."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    catalog = load_catalog(None)
    bounds = {m.id: m.prompt_bounds for m in catalog}
    assert bounds["openai/gpt-4o"].per_image == 85 + 170 * 8
    assert bounds["openai/gpt-4o-mini"].per_image == 2833 + 5667 * 8
    assert bounds["anthropic/claude-sonnet-4"].per_image == 1600
    assert bounds["anthropic/claude-sonnet-4"].tools >= 346  # Anthropic's published tool prompt


def test_charge_is_exact() -> None:
    model = parse_catalog([entry("acme/a", "0.15", "0.60")], "t").get("acme/a")
    assert charge_nanos(model, 12, 34) == 12 * 150 + 34 * 600


@pytest.mark.parametrize("available", [0, 8_000, 8_999, 9_000, 11_999, 12_000, 1_200_000, 10**12])
def test_the_largest_max_tokens_is_the_exact_edge_of_the_balance(available: int) -> None:
    from conduix.pricing.costs import Attempt, largest_max_tokens

    # prompt 1000 tokens at 8/M = 8,000 nanos; each output token costs 1,000 nanos (two choices)
    catalog = parse_catalog([entry("acme/a", "0.008", "0.5", max_output_tokens=1000)], "t")
    attempts = plan_attempts(catalog.chain("acme/a"), requested_max_tokens=600, choices=2)
    fits = largest_max_tokens(attempts, PromptShape(988, 1), available)
    assert fits == min(max((available - 8_000) // 1_000, 0), 600)

    def hold(budget: int) -> int:
        return hold_nanos([Attempt(attempts[0].model, budget, 2)], PromptShape(988, 1))

    if fits:
        assert hold(fits) <= available
    if fits < 600:
        assert hold(fits + 1) > available


def test_hold_advice_names_the_hold_the_field_and_the_largest_budget() -> None:
    from conduix.pricing.costs import hold_advice

    catalog = parse_catalog([entry("acme/a", "0", "1000", max_output_tokens=4096)], "t")
    attempts = plan_attempts(catalog.chain("acme/a"), requested_max_tokens=4000, choices=1)
    hold = hold_nanos(attempts, PromptShape(88, 1))
    advice = hold_advice(
        attempts, PromptShape(88, 1), hold, 2_500_000_000, requested=4000, field="max_tokens"
    )
    assert advice == (
        "This request holds 4 credits: its prompt plus max_tokens=4000, at acme/a's price. "
        "Set 'max_tokens' to 2500 or less to fit the balance."
    )
    unset = plan_attempts(catalog.chain("acme/a"), requested_max_tokens=None, choices=1)
    text = hold_advice(
        unset,
        PromptShape(88, 1),
        hold_nanos(unset, PromptShape(88, 1)),
        10**6,
        requested=None,
        field="max_completion_tokens",
    )
    assert text is not None and "4096 output tokens (acme/a's limit, because 'max_completion_tokens'" in text
    # when not even one output token fits, changing max_tokens cannot help: no advice
    priced = parse_catalog([entry("acme/b", "1000", "1000")], "t")
    tight = plan_attempts(priced.chain("acme/b"), requested_max_tokens=10, choices=1)
    assert (
        hold_advice(
            tight,
            PromptShape(88, 1),
            hold_nanos(tight, PromptShape(88, 1)),
            100_000,
            requested=10,
            field="max_tokens",
        )
        is None
    )


def _embedding_entry(**extra: object) -> dict[str, object]:
    return {
        "id": "e/one",
        "kind": "embedding",
        "upstream": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
        "pricing": {"input_per_million": "0.02", "output_per_million": "0"},
        "dimensions": 1536,
        **extra,
    }


def test_embedding_entries_are_marked_and_checked() -> None:
    from conduix.core.errors import ConfigurationError
    from conduix.pricing.catalog import parse_catalog

    model = parse_catalog([_embedding_entry(dimensions_adjustable=True)], "t").get("e/one")
    assert (model.kind, model.dimensions, model.adjustable_dimensions) == ("embedding", 1536, True)
    for bad, why in [
        (_embedding_entry(kind="image"), "field 'kind'"),
        (_embedding_entry(dimensions=0), "field 'dimensions'"),
        ({**_embedding_entry(), "dimensions": None}, "field 'dimensions'"),
        ({**_embedding_entry(kind="chat")}, "only for embedding models"),
        (_embedding_entry(dimensions_adjustable="yes"), "dimensions_adjustable"),
    ]:
        with pytest.raises(ConfigurationError, match=why):
            parse_catalog([bad], "t")
    chat = {**_embedding_entry(id="c/one", fallbacks=["e/one"]), "kind": "chat"}
    del chat["dimensions"]
    with pytest.raises(ConfigurationError, match="not a chat model"):
        parse_catalog([_embedding_entry(), chat], "t")


def test_the_default_catalog_has_real_embedding_models() -> None:
    from conduix.pricing.catalog import DEFAULT_CATALOG, load_catalog

    models = {m.id: m for m in load_catalog(str(DEFAULT_CATALOG)) if m.kind == "embedding"}
    assert models["openai/text-embedding-3-small"].pricing.input_per_million == 20_000_000  # $0.02 / M
    assert models["openai/text-embedding-3-large"].pricing.input_per_million == 130_000_000
