"""What a request may cost before it runs (the hold), and what it did cost (the charge)."""

from __future__ import annotations

from dataclasses import dataclass

from conduix.core.money import cost_nanos, format_credits
from conduix.pricing.catalog import Model, PromptBounds


@dataclass(frozen=True)
class PromptShape:
    """What a request sends that a provider bills as prompt."""

    text_bytes: int  # UTF-8 bytes of everything the model reads as text
    messages: int
    images: int = 0  # image parts
    tools: bool = False  # sends `tools` or `functions` (a hidden tool-use prompt)


def prompt_token_ceiling(prompt: PromptShape, bounds: PromptBounds) -> int:
    """An upper bound on the prompt tokens a provider can bill, with no tokenizer.

    Byte-level BPE tokenizers never emit more tokens than the text has UTF-8 bytes, so the
    text's byte length bounds it; what the provider bills beyond the text (chat template per
    message and per request, a tool-use prompt, images) comes from the catalog entry's bounds.
    A request with images is only sent to a model whose entry bounds them (`accepts`).
    Bounding (not estimating) is what makes the hold a worst case.
    """
    return (
        prompt.text_bytes
        + bounds.per_message * prompt.messages
        + bounds.per_request
        + (bounds.tools if prompt.tools else 0)
        + (bounds.per_image or 0) * prompt.images
    )


def accepts(model: Model, prompt: PromptShape) -> bool:
    """Whether the model's entry bounds everything the request sends."""
    return not prompt.images or model.prompt_bounds.per_image is not None


@dataclass(frozen=True)
class Attempt:
    """One model of the fallback chain, with the output budget sent to its upstream."""

    model: Model
    max_tokens: int  # per choice, sent upstream so the provider cannot exceed the hold
    choices: int

    @property
    def max_output_tokens(self) -> int:
        return self.max_tokens * self.choices


def plan_attempts(chain: list[Model], requested_max_tokens: int | None, choices: int) -> list[Attempt]:
    """The output budget per model: what the client asked for, never above the model's cap."""
    return [
        Attempt(m, min(requested_max_tokens or m.max_output_tokens, m.max_output_tokens), choices)
        for m in chain
    ]


def hold_nanos(attempts: list[Attempt], prompt: PromptShape) -> int:
    """The worst case over every model that may serve: a fallback may be dearer than the first."""
    return max(
        cost_nanos(
            prompt_token_ceiling(prompt, a.model.prompt_bounds),
            a.max_output_tokens,
            a.model.pricing.input_per_million,
            a.model.pricing.output_per_million,
        )
        for a in attempts
    )


def charge_nanos(model: Model, prompt_tokens: int, completion_tokens: int) -> int:
    return cost_nanos(
        prompt_tokens, completion_tokens, model.pricing.input_per_million, model.pricing.output_per_million
    )


def largest_max_tokens(attempts: list[Attempt], prompt: PromptShape, available: int) -> int:
    """The largest per-choice output budget whose hold `available` covers (0 if none does).
    The hold grows with the budget, so a binary search over it finds the edge exactly."""
    low, high = 0, max(a.max_tokens for a in attempts)

    def fits(budget: int) -> bool:
        trial = [Attempt(a.model, min(budget, a.model.max_output_tokens), a.choices) for a in attempts]
        return hold_nanos(trial, prompt) <= available

    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low if low and fits(low) else 0


def hold_advice(
    attempts: list[Attempt],
    prompt: PromptShape,
    hold: int,
    available: int,
    *,
    requested: int | None,
    field: str,
) -> str | None:
    """What to change when the balance covers the request's likely cost but not its hold.

    The likely cost is the prompt plus at least one output token: when even that is beyond the
    balance, no smaller output budget helps and there is nothing to advise."""
    fits = largest_max_tokens(attempts, prompt, available)
    if fits < 1:
        return None
    first = attempts[0]
    budget = (
        f"{field}={requested}"
        if requested is not None
        else f"{first.max_tokens} output tokens ({first.model.id}'s limit, because '{field}' was not set)"
    )
    per_choice = f" for each of n={first.choices} choices" if first.choices > 1 else ""
    return (
        f"This request holds {format_credits(hold)} credits: its prompt plus {budget}{per_choice}, "
        + (f"at {first.model.id}'s price. " if len(attempts) == 1 else "at its dearest fallback's price. ")
        + f"Set '{field}' to {fits} or less to fit the balance."
    )
