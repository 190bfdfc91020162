"""Small checks on client-supplied JSON fields, shared by the API modules."""

from __future__ import annotations

from typing import Any

from conduix.errors import InvalidRequest

MAX_TEXT = 200


def text_field(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name)
    if len(value) > MAX_TEXT:
        raise InvalidRequest(f"'{name}' must be at most {MAX_TEXT} characters.", param=name)
    return value.strip()
