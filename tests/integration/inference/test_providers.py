"""conduix.inference.providers against the fake upstream: kept-alive connections, one overall deadline
per exchange, streams read as they come, and fallbacks only before the first chunk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conduix.core.errors import UpstreamError, UpstreamTimeout
from conduix.inference import connections, providers
from conduix.pricing.catalog import Model, Pricing, Upstream
from conduix.pricing.costs import Attempt
from conduix_local.upstream import FakeUpstream, count_tokens, reply_text

HELLO = [{"role": "user", "content": "Hello there"}]


def attempt(upstream: FakeUpstream, name: str, timeout: int = 10) -> Attempt:
    model = Model(f"t/{name}", Upstream(upstream.url, name, None, timeout), Pricing(1, 1), (), 64, "test")
    return Attempt(model, 64, 1)


def payload(stream: bool) -> Any:
    def build(a: Attempt) -> dict[str, Any]:
        body = {"model": a.model.upstream.model, "messages": HELLO}
        return {**body, "stream": True, "stream_options": {"include_usage": True}} if stream else body

    return build


@pytest.fixture
def fresh(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    connections.reset_pool()
    upstream.reset_calls()
    yield upstream
    connections.reset_pool()


def test_warm_calls_reuse_one_kept_alive_connection(fresh: FakeUpstream) -> None:
    deadline = time.monotonic() + 10
    for stream in (False, True, False, True):
        reply = providers.complete([attempt(fresh, "fake-small")], payload(stream), stream, deadline)
        assert reply.completion_tokens == count_tokens(reply_text("fake-small", HELLO))
    assert fresh.calls()["connections"] == 1  # one TCP (and, in AWS, TLS) handshake for four calls


def test_a_stream_is_read_as_the_upstream_writes_it(fresh: FakeUpstream) -> None:
    started = time.monotonic()
    opened = providers.open_stream([attempt(fresh, "pace-100")], payload(True), started + 10)
    at = [time.monotonic() - started for _ in opened.chunks()]
    assert at[0] < 0.1 and at[-1] > 1.0
    assert opened.usage == (count_tokens("Hello there") + 6, count_tokens(reply_text("pace-100", HELLO)))


def test_a_dripping_upstream_is_cut_at_the_models_timeout_not_per_read(fresh: FakeUpstream) -> None:
    started = time.monotonic()
    opened = providers.open_stream([attempt(fresh, "drip-4", timeout=2)], payload(True), started + 60)
    with pytest.raises(UpstreamTimeout):
        for _ in opened.chunks():
            pass
    assert 1.95 < time.monotonic() - started < 2.3  # each byte came within 4 ms; the whole took too long
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):  # the request's own deadline, when it is sooner
        providers.complete([attempt(fresh, "slow-5", timeout=30)], payload(False), False, started + 1)
    assert time.monotonic() - started < 1.3


def test_a_stream_falls_back_before_its_first_chunk_never_after(fresh: FakeUpstream) -> None:
    chain = [attempt(fresh, "fail-down"), attempt(fresh, "fake-small")]
    opened = providers.open_stream(chain, payload(True), time.monotonic() + 10)
    assert opened.attempt.model.id == "t/fake-small" and list(opened.chunks())
    broken = providers.open_stream(
        [attempt(fresh, "broken-stream"), attempt(fresh, "fake-small")], payload(True), time.monotonic() + 10
    )
    with pytest.raises(UpstreamError):
        list(broken.chunks())
    assert fresh.calls()["by_model"] == {"fail-down": 1, "fake-small": 1, "broken-stream": 1}
