"""The response cache for deterministic requests (data access on the cache table).

Only requests with temperature 0 are cached. The key covers the org, the requested model,
the messages and every parameter that shapes the output, so a hit is the answer the client
would have got. Scoping the key by org means one org never sees another's answer. DynamoDB
TTL deletes lazily, so expiry is also checked on read. The cache is an optimisation: when
its table fails, the request is served and billed as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from conduix.core.config import settings
from conduix.store.dynamo import client
from conduix.store.items import as_int, as_str, n, s

log = logging.getLogger(__name__)

# Parameters that change what the model answers; anything else (stream, user, metadata...)
# does not split the cache.
OUTPUT_SHAPING = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "reasoning_effort",
    "modalities",
)


def is_deterministic(body: dict[str, Any]) -> bool:
    temperature = body.get("temperature")
    return isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0


def cache_key(org_id: str, body: dict[str, Any]) -> str:
    shaped = {k: body[k] for k in OUTPUT_SHAPING if k in body}
    canonical = json.dumps(
        {"org": org_id, "model": body["model"], "messages": body["messages"], "params": shaped},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def lookup(key: str, now: datetime) -> dict[str, Any] | None:
    """The cached completion, or None on a miss, an expired entry or a failing table."""
    try:
        item = client().get_item(TableName=settings().cache_table, Key={"cache_key": s(key)}).get("Item")
    except (ClientError, BotoCoreError):
        log.warning("cache read failed; serving as a miss", exc_info=True)
        return None
    if not item or as_int(item, "expires_at") <= int(now.timestamp()):
        return None
    cached: dict[str, Any] = json.loads(as_str(item, "completion"))
    return cached


def store(key: str, org_id: str, completion: dict[str, Any], now: datetime, ttl_seconds: int) -> None:
    try:
        client().put_item(
            TableName=settings().cache_table,
            Item={
                "cache_key": s(key),
                "org_id": s(org_id),
                "completion": s(json.dumps(completion, separators=(",", ":"))),
                "expires_at": n(int(now.timestamp()) + ttl_seconds),
            },
        )
    except (ClientError, BotoCoreError):
        log.warning("cache write failed; the answer is served uncached", exc_info=True)
