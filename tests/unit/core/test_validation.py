"""The one JSON parser every route uses: hostile documents are a 400 naming what is wrong,
never an exception that would become a 5xx."""

from __future__ import annotations

import pytest
from conduix.core.errors import InvalidRequest, NotFound
from conduix.core.validation import idempotency_key, parse_json, parse_json_object, resource_id, text_field


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "invalid_json", None),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "invalid_json", None),
        (b"[" * 65 + b"]" * 65, "invalid_json", None),  # parses, but deeper than the limit
        (b'{"messages": [{"content": "hi \\ud800"}]}', "invalid_request", "messages[0].content"),
        (b'{"name": "\\udfff"}', "invalid_request", "name"),
        (b'{"\\ud800": 1}', "invalid_request", None),
        (b'{"n": 1e400}', "number_too_large", "n"),
        (b'{"n": -1e400}', "number_too_large", "n"),
        (b'{"n": ' + b"1" * 5000 + b"}", "number_too_large", "n"),
        (b'{"n": NaN}', "invalid_json", None),
        (b'{"n": Infinity}', "invalid_json", None),
        (b'{"n": -Infinity}', "invalid_json", None),
        (b"\xff\xfe{}", "invalid_json", None),
        (b'{"a": 1', "invalid_json", None),
        (b"", "invalid_json", None),
    ],
)
def test_hostile_documents_are_refused_with_a_400(raw: bytes, code: str, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_json(raw)
    assert refused.value.code == code
    assert refused.value.param == param


def test_ordinary_documents_parse_as_before() -> None:
    doc = parse_json(
        '{"a": [1, 2.5, "é", "\\ud83d\\ude00", null, true], "b": {"c": 123456789012345678901234}}'
    )
    assert doc == {"a": [1, 2.5, "é", "😀", None, True], "b": {"c": 123456789012345678901234}}
    assert parse_json(b"[" * 64 + b"]" * 64) is not None  # the limit itself is allowed


def test_a_body_must_be_an_object() -> None:
    assert parse_json_object(b"", empty_is_object=True) == {}
    for raw in (b"[]", b'"x"', b"1", b"null"):
        with pytest.raises(InvalidRequest):
            parse_json_object(raw)


def test_text_fields_idempotency_keys_and_ids() -> None:
    with pytest.raises(InvalidRequest):
        text_field({"name": "a\ud800"}, "name", required=True)
    assert idempotency_key(None) is None
    assert idempotency_key("order-42_A") == "order-42_A"
    for bad in ("\ud800", "with space", "é", "x" * 201):
        with pytest.raises(InvalidRequest):
            idempotency_key(bad)
    assert resource_id("org_0123abcd", "org") == "org_0123abcd"
    for bad in ("x" * 65, "org/../x", "\ud800", ""):
        with pytest.raises(NotFound):
            resource_id(bad, "org")
