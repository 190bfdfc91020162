"""Client input, checked at the edge: the one JSON parser every route uses, and small checks
on the fields and headers that the API modules share.

`parse_json` refuses, with a 4xx, what Python's json module would let through to a 5xx
later: nesting deep enough to exhaust the stack, unpaired UTF-16 surrogates (valid JSON
escapes, but not text: they cannot be encoded as UTF-8 for DynamoDB, Stripe or a provider),
numbers too long to convert or not finite, and NaN/Infinity (not JSON at all).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from conduix.core.errors import InvalidRequest, NotFound

MAX_TEXT = 200
# Deeper than any body we read needs (a tool's JSON Schema included); shallow enough that
# nothing downstream can recurse into trouble.
MAX_DEPTH = 64
MAX_INT_DIGITS = 30  # int() refuses over 4,300 digits, and nothing we read needs more than 20
_SURROGATE = re.compile("[\ud800-\udfff]")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces


class _TooLong(int):
    """An integer literal too long to convert; reported with its place by the walk below."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _TooLong(0)
    return int(text)


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not valid JSON.", code="invalid_json")


def _place(path: tuple[str | int, ...]) -> str | None:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or None


def _check(root: Any, max_depth: int) -> None:
    """Walk the parsed document without recursion: depth, strings (keys too) and numbers."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict | list) and len(path) >= max_depth:
            raise InvalidRequest(
                f"The request body is nested more than {max_depth} levels deep.", code="invalid_json"
            )
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise InvalidRequest(
                    "A string contains an unpaired UTF-16 surrogate (such as \\ud800), which is not "
                    "valid Unicode text.",
                    param=_place(path),
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                if not key.isascii() and _SURROGATE.search(key):
                    raise InvalidRequest(
                        "An object key contains an unpaired UTF-16 surrogate, which is not valid Unicode.",
                        param=_place(path),
                    )
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
        elif isinstance(value, _TooLong):
            raise InvalidRequest(
                f"A number has more than {MAX_INT_DIGITS} digits.",
                param=_place(path),
                code="number_too_large",
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(
                "A number is too large to represent.", param=_place(path), code="number_too_large"
            )


def parse_json(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in `raw`, or InvalidRequest (400) for anything hostile or malformed.

    Numbers with a fraction or exponent parse as float: no amount of money is ever a JSON
    number here (amounts are decimal strings, see `money.parse_credits`)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        document = json.loads(text, parse_int=_parse_int, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest(
            f"The request body is nested more than {max_depth} levels deep.", code="invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    _check(document, max_depth)
    return document


def parse_json_object(raw: bytes | str, *, empty_is_object: bool = False) -> dict[str, Any]:
    """`parse_json` for a body that must be one JSON object ({} for an empty body if allowed)."""
    if empty_is_object and not raw:
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def text_field(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name)
    if len(value) > MAX_TEXT:
        raise InvalidRequest(f"'{name}' must be at most {MAX_TEXT} characters.", param=name)
    if _SURROGATE.search(value):  # bodies are checked on parse; this guards other callers
        raise InvalidRequest(f"'{name}' is not valid Unicode text.", param=name)
    return value.strip()


def idempotency_key(value: str | None) -> str | None:
    """An `Idempotency-Key` header: up to 200 printable ASCII characters, or absent."""
    if value is None or value == "":
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidRequest(
            "The Idempotency-Key header must be 1 to 200 printable ASCII characters without spaces.",
            param="Idempotency-Key",
        )
    return value


def resource_id(value: str, kind: str) -> str:
    """An id from a URL path. Ours are short and plain; anything else names nothing we have
    (and must not reach the store, whose keys have size limits)."""
    if not _ID.fullmatch(value):
        raise NotFound(f"No {kind} '{value[:64]}'.")
    return value


def invalid_request_from(problems: Sequence[Mapping[str, Any]]) -> InvalidRequest:
    """The first of pydantic's validation errors (as `ValidationError.errors()` or Powertools'
    RequestValidationError lists them) as our InvalidRequest, naming the field. Plain dicts
    in: Completion, which validates by hand, never loads pydantic for this."""
    if not problems:
        return InvalidRequest("The request is not valid.")
    first = problems[0]
    loc = list(first.get("loc") or ())
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    names = [part for part in loc if isinstance(part, str)]  # list indexes name no field
    param = ".".join(names) or None
    ctx = first.get("ctx") or {}
    if first.get("type") == "conduix":  # ours (conduix.core.bodies.refuse): the message is final
        message = str(ctx.get("message"))
        if ctx.get("param"):
            param = str(ctx["param"])
        elif len(names) > 1:  # a shared check names the field by its own name only
            message = message.replace(f"'{names[-1]}'", f"'{param}'", 1)
        return InvalidRequest(message, param=param, code=ctx.get("code") or None)
    if first.get("type") == "missing":
        return InvalidRequest(f"'{param}' is required.", param=param)
    detail = str(first.get("msg") or "is not valid")
    if param is None:
        return InvalidRequest(f"The request body is not valid: {detail}.")
    return InvalidRequest(f"'{param}': {detail}.", param=param)
