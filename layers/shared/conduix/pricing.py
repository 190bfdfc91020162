"""What a request may cost before it runs (the hold), and what it did cost (the charge)."""

from __future__ import annotations

from dataclasses import dataclass

from conduix.catalog import Model
from conduix.money import cost_nanos, format_credits

# Chat formats add a few tokens per message (role markers) and per reply (priming).
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 8


def prompt_token_ceiling(messages_utf8_bytes: int, message_count: int) -> int:
    """An upper bound on prompt tokens that needs no tokenizer.

    Byte-level BPE tokenizers never emit more tokens than the text has UTF-8 bytes, so the
    serialized messages' byte length bounds the content; the per-message overhead covers the
    chat template. Bounding (not estimating) is what makes the hold a worst case.
    """
    return messages_utf8_bytes + _TOKENS_PER_MESSAGE * message_count + _TOKENS_PER_REPLY


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


def hold_nanos(attempts: list[Attempt], prompt_tokens_ceiling: int) -> int:
    """The worst case over every model that may serve: a fallback may be dearer than the first."""
    return max(
        cost_nanos(
            prompt_tokens_ceiling,
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


def largest_max_tokens(attempts: list[Attempt], prompt_tokens_ceiling: int, available: int) -> int:
    """The largest per-choice output budget whose hold `available` covers (0 if none does).
    The hold grows with the budget, so a binary search over it finds the edge exactly."""
    low, high = 0, max(a.max_tokens for a in attempts)

    def fits(budget: int) -> bool:
        trial = [Attempt(a.model, min(budget, a.model.max_output_tokens), a.choices) for a in attempts]
        return hold_nanos(trial, prompt_tokens_ceiling) <= available

    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low if low and fits(low) else 0


def hold_advice(
    attempts: list[Attempt],
    prompt_tokens_ceiling: int,
    hold: int,
    available: int,
    *,
    requested: int | None,
    field: str,
) -> str | None:
    """What to change when the balance covers the request's likely cost but not its hold.

    The likely cost is the prompt plus at least one output token: when even that is beyond the
    balance, no smaller output budget helps and there is nothing to advise."""
    fits = largest_max_tokens(attempts, prompt_tokens_ceiling, available)
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
