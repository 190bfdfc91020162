"""The billed request against an upstream that bills as providers do: images, tool prompts,
what the hold cannot bound, and idempotent retries (completion.serve on the locked moto
server and the fake upstream)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conduix.accounts.auth import Principal
from conduix.core.clock import now as clock_now
from conduix.core.errors import IdempotencyConflict, InvalidRequest, RequestInProgress, UpstreamError
from conduix.core.money import NANOS_PER_CREDIT as C
from conduix.inference import answers, completion, idempotency
from conduix.ledger import settles
from conduix_local.upstream import FakeUpstream, png_data_url

from tests.integration.helpers import assert_consistent, fund, ledger_items

pytestmark = pytest.mark.integration

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def ask(model: str, *, images: int = 0, tools: bool = False, **extra: Any) -> bytes:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "describe these"}]
    parts += [{"type": "image_url", "image_url": {"url": png_data_url(768, 2048)}}] * images
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": parts}], **extra}
    if tools:
        body["tools"] = TOOLS
    return json.dumps(body).encode()


def serve(org: str, body: bytes, request_id: str, key: str | None = None) -> answers.Served:
    principal = Principal(org_id=org, key_id="key_1", scopes=("inference",))
    served = completion.serve(principal, body, request_id, time.monotonic() + 20, key)
    if served.live is None:
        return served
    sent = "".join(served.live)  # a live stream bills at its end
    assert served.live.served is not None and served.live.served.body == sent
    return served.live.served


def charged(org: str) -> list[tuple[str, int, int, int]]:
    """(request id, prompt tokens, completion tokens, amount) of each usage entry."""
    return sorted(
        (
            i["entry_id"]["S"].removeprefix("usage:"),
            int(i["prompt_tokens"]["N"]),
            int(i["completion_tokens"]["N"]),
            -int(i["amount"]["N"]),
        )
        for i in ledger_items(org)
        if i["entry_type"]["S"] == "usage"
    )


def test_images_and_tools_are_billed_at_the_providers_count_within_the_hold(
    org: str, served_catalog: FakeUpstream
) -> None:
    fund(org, "1")
    served = serve(org, ask("t/vision", images=3, tools=True), "r1")
    usage = json.loads(served.body)["usage"]
    # 3 images of 768x2048 (1,445 tokens each) and a hidden tool prompt, on top of the text
    assert usage["prompt_tokens"] > 3 * 1445 + 320
    cost = usage["prompt_tokens"] * 2000 + usage["completion_tokens"] * 8000
    assert served.cost == cost
    assert charged(org) == [("r1", usage["prompt_tokens"], usage["completion_tokens"], cost)]
    assert not settles.over_hold_incidents(org)
    assert assert_consistent(org).balance == C - cost


def test_images_on_a_model_without_an_image_bound_are_refused_before_the_provider(
    org: str, served_catalog: FakeUpstream
) -> None:
    fund(org, "1")
    with pytest.raises(InvalidRequest) as refused:
        serve(org, ask("t/text", images=2), "r1")
    assert (refused.value.code, refused.value.param) == ("unsupported_content", "messages[0].content[1]")
    assert served_catalog.calls()["total"] == 0
    w = assert_consistent(org)
    assert (w.balance, w.held) == (C, 0)


def test_a_provider_that_bills_above_the_hold_is_billed_exactly_and_leaves_an_incident(
    org: str,
    served_catalog: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from conduix.audit import reconcile

    fund(org, "1")
    served = serve(org, ask("t/overbill", max_tokens=5), "r1")
    usage = json.loads(served.body)["usage"]
    cost = usage["prompt_tokens"] * 2000 + usage["completion_tokens"] * 8000
    assert served.cost == cost and charged(org) == [
        ("r1", usage["prompt_tokens"], usage["completion_tokens"], cost)
    ]
    (incident,) = settles.over_hold_incidents(org)
    assert (incident["request_id"]["S"], int(incident["cost"]["N"])) == ("r1", cost)
    assert int(incident["hold"]["N"]) < cost
    assert any(
        r.getMessage() == "settle incident" and (r.kind, r.request_id) == ("charge_above_hold", "r1")
        for r in caplog.records
    )
    metric = json.loads(next(line for line in capsys.readouterr().out.splitlines() if '"_aws"' in line))
    assert metric["SettleIncidents"] == [1.0] or metric["SettleIncidents"] == 1
    assert [d.request_ids for d in reconcile.reconcile_org(org)] == [("r1",)]
    assert_consistent(org)


# ------------------------------------------------------------------ Idempotency-Key


def test_the_same_key_and_body_replays_the_first_answer_billed_once(
    org: str, served_catalog: FakeUpstream
) -> None:
    fund(org, "1")
    first = serve(org, ask("t/vision", images=1), "r1", key="order-42")
    again = serve(org, ask("t/vision", images=1), "r2", key="order-42")
    assert (again.body, again.headers(), again.content_type) == (
        first.body,
        first.headers(),
        first.content_type,
    )
    assert (first.replay_of, again.replay_of) == (None, "r1")
    assert json.loads(again.body)["id"] == "chatcmpl-r1"
    assert served_catalog.calls()["total"] == 1
    assert [rid for rid, *_ in charged(org)] == ["r1"]
    assert assert_consistent(org).balance == C - first.cost

    # Keys are per org: another org's same key is another request.
    from conduix.accounts import orgs

    from tests.integration.helpers import NOW

    other = orgs.create_org("Other", "o@example.test", NOW).org_id
    fund(other, "1")
    assert serve(other, ask("t/vision", images=1), "r3", key="order-42").replay_of is None


def test_the_same_key_with_another_body_is_a_conflict(org: str, served_catalog: FakeUpstream) -> None:
    fund(org, "1")
    serve(org, ask("t/text"), "r1", key="k")
    with pytest.raises(IdempotencyConflict) as refused:
        serve(org, ask("t/text", temperature=0.5), "r2", key="k")
    assert refused.value.code == "idempotency_key_reused"
    assert [rid for rid, *_ in charged(org)] == ["r1"]


def test_a_key_still_in_flight_is_409_with_retry_after(org: str, served_catalog: FakeUpstream) -> None:
    fund(org, "1")
    body = ask("t/text")
    assert idempotency.claim(org, "k", json.loads(body), "r1", clock_now()) is None  # r1 is running
    with pytest.raises(RequestInProgress) as busy:
        serve(org, body, "r2", key="k")
    assert busy.value.code == "request_in_progress" and 1 <= busy.value.retry_after_seconds <= 5
    assert served_catalog.calls()["total"] == 0 and charged(org) == []


def test_a_stream_is_replayed_as_the_same_stream(org: str, served_catalog: FakeUpstream) -> None:
    fund(org, "1")
    body = ask("t/text", stream=True, stream_options={"include_usage": True})
    first = serve(org, body, "r1", key="s")
    again = serve(org, body, "r2", key="s")
    assert first.content_type == again.content_type == "text/event-stream"
    assert again.body == first.body and again.body.endswith("data: [DONE]\n\n")
    assert served_catalog.calls()["total"] == 1


def test_a_request_that_failed_unbilled_gives_its_key_back(org: str, served_catalog: FakeUpstream) -> None:
    fund(org, "0.00001")  # too little for the hold: 402, nothing billed
    from conduix.core.errors import InsufficientCredits

    with pytest.raises(InsufficientCredits):
        serve(org, ask("t/text"), "r1", key="k")
    fund(org, "1", key="more")
    retried = serve(org, ask("t/text"), "r2", key="k")
    assert retried.replay_of is None and [rid for rid, *_ in charged(org)] == ["r2"]


def test_an_upstream_failure_gives_the_key_back(
    org: str, served_catalog: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conduix.inference import providers

    fund(org, "1")

    def down(*_: Any, **__: Any) -> Any:
        raise UpstreamError("down")

    monkeypatch.setattr(providers, "complete", down)
    with pytest.raises(UpstreamError):
        serve(org, ask("t/text"), "r1", key="k")
    monkeypatch.undo()
    assert serve(org, ask("t/text"), "r2", key="k").replay_of is None
    assert assert_consistent(org).held == 0


def test_a_bad_key_header_is_a_400(org: str, served_catalog: FakeUpstream) -> None:
    with pytest.raises(InvalidRequest) as refused:
        serve(org, ask("t/text"), "r1", key="x" * 300)
    assert refused.value.param == "Idempotency-Key"


def test_a_live_stream_is_held_first_and_billed_once_even_if_its_reader_leaves(
    org: str, served_catalog: FakeUpstream
) -> None:
    fund(org, "1")
    principal = Principal(org_id=org, key_id="key_1", scopes=("inference",))
    body = ask("t/text", stream=True)
    served = completion.serve(principal, body, "r1", time.monotonic() + 20)
    assert served.live is not None and assert_consistent(org).held > 0  # held before the first byte
    events = iter(served.live)
    assert next(events).startswith("data: ")
    events.close()  # type: ignore[attr-defined]  # the client is gone: the rest is read, then billed
    assert served.live.served is not None and served.live.failure is None
    assert [(rid, c) for rid, _, c, _ in charged(org)] == [("r1", served.live.served.completion_tokens)]
    assert charged(org)[0][3] == served.live.served.cost > 0 and assert_consistent(org).held == 0
    assert served_catalog.calls()["streams"] == {"completed": 1, "cut": 0}
