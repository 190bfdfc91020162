"""One set of models for BillingApi's and Admin's requests and answers (conduix.core.bodies,
conduix.api.views): the resolver validates with them, and /openapi.json is generated from them.

Bad input on every body route is our 400 naming the field (never Powertools' 422), who is
calling is checked before what was sent, and real answers validate against the document's
own response schemas, none of which is a bare object."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import jsonschema
import pytest
from conduix.api import openapi
from conduix.ledger import statements

from tests.integration.api.test_handlers import OPERATOR_KEY, context, env, event, handler  # noqa: F401

pytestmark = pytest.mark.integration


class Api:
    """The two functions in-process, called the way API Gateway calls them."""

    def __init__(self) -> None:
        self.admin: ModuleType = handler("admin")
        self.billing: ModuleType = handler("billing_api")
        created = self.operator("POST", "/admin/orgs", {"name": "Shapes", "email": "ops@shapes.test"})
        self.org_id = str(created[1]["org_id"])
        self.key = str(
            self.operator("POST", f"/admin/orgs/{self.org_id}/api-keys", {"name": "k"})[1]["api_key"]
        )

    def _call(self, module: ModuleType, name: str, key: str | None, method: str, path: str, body: Any) -> Any:
        ev = event(name, OPERATOR_KEY=OPERATOR_KEY, ORG_API_KEY=key or "")
        path, _, query = path.partition("?")
        ev.update(httpMethod=method, path=path, body=None if body is None else json.dumps(body))
        # As API Gateway sends a query string: the last value of each name, and every value.
        pairs = parse_qsl(query, keep_blank_values=True)
        ev["queryStringParameters"] = dict(pairs) or None
        ev["multiValueQueryStringParameters"] = {n: [v for k, v in pairs if k == n] for n, _ in pairs} or None
        if key is None:
            ev["headers"] = {k: v for k, v in ev["headers"].items() if k.lower() != "authorization"}
        result = module.lambda_handler(ev, context(name))
        return result["statusCode"], json.loads(result["body"]) if result["body"] else None

    def operator(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, payload = self._call(self.admin, "admin", OPERATOR_KEY, method, path, body)
        return status, payload

    def org(self, method: str, path: str, body: Any = None, key: str | None = "") -> tuple[int, Any]:
        status, payload = self._call(
            self.billing, "billing_api", self.key if key == "" else key, method, path, body
        )
        return status, payload


@pytest.fixture
def api(env: None) -> Api:  # noqa: F811 - the fixture imported above
    return Api()


# (method, path, body, the field the 400 must name); {org} and {key} filled in. Every route
# with a request body has at least one case (checked against the document below).
BAD = [
    ("PUT", "/v1/billing/alerts", {"cap_used_percent": [0]}, "cap_used_percent"),
    ("PUT", "/v1/billing/alerts", {"cap_used_percent": [True]}, "cap_used_percent"),
    ("PUT", "/v1/billing/alerts", {"balance_below": ["1e3"]}, "balance_below"),
    ("PUT", "/v1/billing/alerts", {"other": []}, "other"),
    ("POST", "/v1/billing/top-ups", {"amount": 10}, "amount"),
    ("POST", "/v1/billing/top-ups", {}, "amount"),
    ("PUT", "/v1/billing/spend-cap", {}, "monthly_limit"),
    ("PUT", "/v1/billing/spend-cap", {"monthly_limit": 5.5}, "monthly_limit"),
    ("PUT", "/v1/billing/auto-reload", {"enabled": "yes"}, "enabled"),
    ("PUT", "/v1/billing/auto-reload", {"enabled": True, "threshold": None}, "threshold"),
    ("PUT", "/v1/billing/auto-reload", {"enabled": True, "threshold": "5", "amount": "-1"}, "amount"),
    ("POST", "/v1/billing/subscription", {}, "plan"),
    ("POST", "/v1/billing/subscription", {"plan": 7}, "plan"),
    ("POST", "/v1/billing/api-keys", {"scopes": []}, "scopes"),
    ("POST", "/v1/billing/api-keys", {"name": "   "}, "name"),
    (
        "PATCH",
        "/v1/billing/api-keys/{key}",
        {"spend_limit": {"amount": "5", "period": "year"}},
        "spend_limit.period",
    ),
    (
        "PATCH",
        "/v1/billing/api-keys/{key}",
        {"spend_limit": {"amount": 5, "period": "day"}},
        "spend_limit.amount",
    ),
    ("PATCH", "/v1/billing/api-keys/{key}", {}, "spend_limit"),
    ("POST", "/admin/orgs", {"name": "n"}, "email"),
    ("POST", "/admin/orgs", {"name": 5, "email": "a@b.co"}, "name"),
    ("POST", "/admin/orgs/{org}/api-keys", {"scopes": ["root"]}, "scopes"),
    ("POST", "/admin/orgs/{org}/credits", {"amount": "1", "reason": "r"}, "idempotency_key"),
    (
        "POST",
        "/admin/orgs/{org}/credits",
        {"amount": "1", "reason": "r", "idempotency_key": "k", "expires_at": 5},
        "expires_at",
    ),
    ("PUT", "/admin/orgs/{org}/billing", {"mode": "invoice", "net_terms_days": True}, "net_terms_days"),
    ("PUT", "/admin/orgs/{org}/billing", {"mode": "postpaid"}, "mode"),
]


def _call(api: Api, method: str, path: str, body: Any) -> tuple[int, Any]:
    key_id = api.org("GET", "/v1/billing/api-keys")[1]["data"][0]["key_id"]
    path = path.format(org=api.org_id, key=key_id)
    return api.operator(method, path, body) if path.startswith("/admin") else api.org(method, path, body)


def test_bad_input_on_every_body_route_is_our_400_naming_the_field(api: Api) -> None:
    before = api.org("GET", "/v1/billing")[1]
    for method, path, body, param in BAD:
        status, answer = _call(api, method, path, body)
        assert status == 400, (method, path, body, answer)
        assert set(answer) == {"error"} and "detail" not in answer, answer  # not Powertools' 422 shape
        error = answer["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param), (path, body, error)
        assert param.split(".")[-1] in error["message"], error  # the message names the field too
    assert api.org("GET", "/v1/billing")[1] == before  # nothing moved


def test_the_old_messages_are_kept(api: Api) -> None:
    assert _call(api, "PUT", "/v1/billing/spend-cap", {})[1]["error"]["message"] == (
        'Send {"monthly_limit": "100"} to set the monthly cap, or null to remove it.'
    )
    assert _call(api, "PUT", "/v1/billing/auto-reload", {"enabled": 1})[1]["error"]["message"] == (
        "'enabled' must be true or false."
    )
    amount = _call(api, "POST", "/v1/billing/top-ups", {"amount": 10})[1]["error"]["message"]
    assert amount == "'amount' must be a decimal string such as \"10.5\" (JSON numbers are not accepted)."
    nested = _call(
        api, "PATCH", "/v1/billing/api-keys/{key}", {"spend_limit": {"amount": "0", "period": "day"}}
    )
    assert nested[1]["error"]["message"] == "'spend_limit.amount' must be greater than zero."
    unknown = _call(api, "PUT", "/v1/billing/alerts", {"other": []})[1]["error"]["message"]
    assert unknown == "Unknown field 'other': send balance_below and cap_used_percent."


# Every query parameter a route reads has bad cases: (path with its query, the parameter the 400
# names, its message when the old hand-written one is pinned).
BAD_QUERIES = [
    ("/v1/billing/ledger?limit=0", "limit", "'limit' must be between 1 and 200."),
    ("/v1/billing/ledger?limit=201", "limit", None),
    ("/v1/billing/ledger?limit=ten", "limit", "'limit' must be an integer."),
    ("/v1/billing/ledger?limit=2.5", "limit", "'limit' must be an integer."),
    ("/v1/billing/ledger?cursor=garbage", "cursor", "'cursor' is not one this API gave out."),
    ("/v1/billing/ledger?type=bonus", "type", None),
    ("/v1/billing/ledger?from=yesterday", "from", "'from' must be a date such as 2026-11-01."),
    ("/v1/billing/ledger?to=2026-02-30", "to", "'to' must be a date such as 2026-11-01."),
    ("/v1/billing/ledger?from=2026-11-02&to=2026-11-01", "to", "'to' must not be before 'from'."),
    ("/v1/billing/ledger?format=xml", "format", "'format' must be json or csv."),
    ("/v1/billing/ledger?format=xml&limit=x", "format", None),  # the first check told
    ("/v1/billing/ledger?format=csv&cursor=abc", "cursor", None),
    ("/v1/usage?from=20261101", "from", None),
    ("/v1/usage?to=1700000000", "to", None),  # a timestamp is not a day
    ("/v1/usage?from=2026-11-30&to=2026-11-01", "to", None),
    ("/v1/usage?from=2024-01-01&to=2026-01-01", "to", "A usage range spans at most 366 days."),
    ("/v1/usage?group_by=colour", "group_by", None),
    ("/v1/usage?group_by=model,model", "group_by", None),
    ("/v1/usage?group_by=,", "group_by", "'group_by' must be model, day or key, or a comma-separated mix."),
    ("/v1/usage?format=pdf", "format", None),
    ("/v1/billing/notices?limit=101", "limit", "'limit' must be between 1 and 100."),
    ("/v1/billing/notices?limit=-1", "limit", None),
    ("/admin/orgs?limit=0", "limit", None),
    ("/admin/orgs?limit=x", "limit", "'limit' must be an integer."),
    ("/admin/orgs?cursor=not-a-cursor", "cursor", None),
    ("/admin/orgs?email=" + "a" * 201, "email", "'email' must be up to 200 printable characters."),
    ("/admin/orgs?name=%00", "name", "'name' must be up to 200 printable characters."),
]


def test_bad_query_parameters_are_our_400_naming_the_parameter(api: Api) -> None:
    before = api.org("GET", "/v1/billing")[1]
    for path, param, message in BAD_QUERIES:
        status, answer = _call(api, "GET", path, None)
        assert status == 400 and set(answer) == {"error"}, (path, answer)  # never 422, never 500
        error = answer["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param), (path, error)
        assert f"'{param}'" in error["message"] or "usage range" in error["message"], (path, error)
        assert message is None or error["message"] == message, (path, error)
    unknown = _call(api, "GET", "/v1/billing/ledger?type=bonus", None)[1]["error"]
    assert unknown["code"] == "invalid_entry_type" and "hold_release" in unknown["message"]
    assert api.org("GET", "/v1/billing")[1] == before  # nothing moved


def test_good_query_parameters_are_read_typed(api: Api) -> None:
    # Empty values count as left out; unknown parameters are ignored, as before.
    for path in ("/v1/billing/ledger?limit=&cursor=&type=&from=&to=&format=", "/v1/usage?group_by=&x=1"):
        assert _call(api, "GET", path, None)[0] == 200, path
    usage = _call(api, "GET", "/v1/usage?from=2026-01-01&to=2026-01-31&group_by=day,%20key", None)[1]
    assert (usage["from"], usage["to"], usage["group_by"]) == ("2026-01-01", "2026-01-31", ["day", "key"])
    for n in ("a", "b"):
        grant = {"amount": "1", "reason": "r", "idempotency_key": n}
        assert api.operator("POST", f"/admin/orgs/{api.org_id}/credits", grant)[0] == 201
    status, page = _call(api, "GET", "/v1/billing/ledger?limit=1", None)
    assert status == 200 and len(page["data"]) == 1 and page["has_more"] is True
    nxt = _call(api, "GET", f"/v1/billing/ledger?limit=1&cursor={page['next_cursor']}", None)[1]
    assert [e["balance_after"] for e in page["data"] + nxt["data"]] == ["2", "1"]
    listed = _call(api, "GET", "/admin/orgs?name=shapes&limit=1", None)[1]
    assert [o["org_id"] for o in listed["data"]] == [api.org_id]
    assert _call(api, "GET", "/v1/billing/notices?limit=100", None)[0] == 200


def test_a_versioned_dashboard_asset_is_cached_for_good(api: Api) -> None:
    def cache_control(query: str) -> str:
        ev = event("billing_api", ORG_API_KEY="")
        ev.update(httpMethod="GET", path="/dashboard/assets/common.js", body=None)
        ev["queryStringParameters"] = dict(parse_qsl(query, keep_blank_values=True)) or None
        result = api.billing.lambda_handler(ev, context("billing_api"))
        assert result["statusCode"] == 200
        headers = {
            **result.get("headers", {}),
            **{k: v[-1] for k, v in result.get("multiValueHeaders", {}).items()},
        }
        return str(headers["Cache-Control"])

    assert cache_control("v=abc123") == "public, max-age=31536000, immutable"
    assert cache_control("") == "no-cache"


# The query parameters each route reads: the document must list exactly these, from the code.
QUERIES = {
    ("get", "/v1/billing/ledger"): {"format", "limit", "cursor", "type", "from", "to"},
    ("get", "/v1/usage"): {"format", "from", "to", "group_by"},
    ("get", "/v1/billing/notices"): {"limit"},
    ("get", "/admin/orgs"): {"email", "name", "limit", "cursor"},
}


def _read_by_handlers(app: Any) -> dict[tuple[str, str], set[str]]:
    """The query parameters each documented route's handler declares (a model's fields, by alias)."""
    read: dict[tuple[str, str], set[str]] = {}
    for route in app._static_routes + app._dynamic_routes:
        if not route.include_in_schema:
            continue
        for param in route.dependant.query_params:
            model = param.field_info.annotation
            fields = model.model_fields.values() if hasattr(model, "model_fields") else None
            names = {f.alias or n for n, f in model.model_fields.items()} if fields else {param.alias}
            read.setdefault((route.method.lower(), route.openapi_path), set()).update(names)
    return read


def test_every_query_parameter_read_is_documented_and_none_other(api: Api) -> None:
    documented: dict[tuple[str, str], set[str]] = {}
    for doc in _doc(api):
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
                if names:
                    documented[(method, path)] = names
                for p in operation.get("parameters", []):
                    if p["in"] == "query":  # the field's own schema, not Powertools' bare type
                        assert p["schema"].get("type") == "string" or "maximum" in p["schema"], p
    read = {**_read_by_handlers(api.billing.app), **_read_by_handlers(api.admin.app)}
    assert documented == read == QUERIES
    ledger = {p["name"]: p for p in _doc(api)[0]["paths"]["/v1/billing/ledger"]["get"]["parameters"]}
    assert ledger["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
    assert ledger["type"]["schema"]["enum"] == list(statements.ENTRY_TYPES)
    assert ledger["from"]["schema"]["format"] == "date"
    # Nothing reads the query string by hand: the resolver hands every handler its typed query.
    for app in Path(__file__).parents[3].glob("functions/*/app.py"):
        assert "query_string_parameters" not in app.read_text(), app


def test_who_is_calling_comes_before_what_they_sent(api: Api) -> None:
    assert api.org("PUT", "/v1/billing/spend-cap", {"monthly_limit": 5}, key=None)[0] == 401
    assert api.org("PUT", "/v1/billing/spend-cap", None, key="cdx_unknown")[0] == 401
    assert api.org("GET", "/v1/pricing", key=None)[0] == 200  # public routes need no key


def test_hostile_and_empty_bodies(api: Api) -> None:
    deep = json.loads('{"a":' * 10 + "0" + "}" * 10)  # fine; the parser's own limit is tested elsewhere
    assert api.org("PUT", "/v1/billing/spend-cap", deep)[1]["error"]["param"] == "monthly_limit"
    status, answer = api.org("PUT", "/v1/billing/spend-cap", ["not", "an", "object"])
    assert (status, answer["error"]["code"]) == (400, "invalid_json")
    # An empty body is an empty object: a body whose fields are all optional may be left out.
    status, made = api.operator("POST", f"/admin/orgs/{api.org_id}/api-keys", None)
    assert (status, made["name"]) == (201, "default")


def _doc(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    status, billing_doc = api.org("GET", "/openapi.json", key=None)
    assert status == 200
    status, admin_doc = api.operator("GET", "/admin/openapi.json")
    assert status == 200
    return billing_doc, admin_doc


def test_every_body_route_has_a_bad_input_case_and_its_model_in_the_document(api: Api) -> None:
    covered = {(m.lower(), p.replace("{org}", "{org_id}").replace("{key}", "{key_id}")) for m, p, _, _ in BAD}
    with_bodies = set()
    for doc in _doc(api):
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                if "requestBody" in operation and not path.startswith(("/v1/chat", "/v1/embeddings")):
                    with_bodies.add((method, path))
                    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert with_bodies == covered


def _response_schema(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    schema = doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}  # its $refs resolve against the document


def test_real_answers_validate_against_the_documents_response_schemas(api: Api) -> None:
    billing_doc, admin_doc = _doc(api)
    org, key_id = api.org_id, api.org("GET", "/v1/billing/api-keys")[1]["data"][0]["key_id"]
    api.operator(
        "POST", f"/admin/orgs/{org}/credits", {"amount": "2.5", "reason": "r", "idempotency_key": "s"}
    )
    calls = [
        (billing_doc, "get", "/v1/billing", "/v1/billing", None, 200),
        (billing_doc, "put", "/v1/billing/spend-cap", "/v1/billing/spend-cap", {"monthly_limit": "9"}, 200),
        (billing_doc, "put", "/v1/billing/alerts", "/v1/billing/alerts", {"balance_below": ["1"]}, 200),
        (billing_doc, "post", "/v1/billing/api-keys", "/v1/billing/api-keys", {"name": "two"}, 201),
        (billing_doc, "get", "/v1/billing/api-keys", "/v1/billing/api-keys", None, 200),
        (
            billing_doc,
            "patch",
            "/v1/billing/api-keys/{key_id}",
            f"/v1/billing/api-keys/{key_id}",
            {"spend_limit": {"amount": "1", "period": "week"}},
            200,
        ),
        (billing_doc, "get", "/v1/billing/ledger", "/v1/billing/ledger", None, 200),
        (billing_doc, "get", "/v1/usage", "/v1/usage", None, 200),
        (billing_doc, "get", "/v1/billing/notices", "/v1/billing/notices", None, 200),
        (billing_doc, "get", "/v1/pricing", "/v1/pricing", None, 200),
        (admin_doc, "get", "/admin/orgs/{org_id}", f"/admin/orgs/{org}", None, 200),
        (admin_doc, "get", "/admin/orgs", "/admin/orgs", None, 200),
        (admin_doc, "get", "/admin/orgs/{org_id}/holds", f"/admin/orgs/{org}/holds", None, 200),
        (admin_doc, "get", "/admin/orgs/{org_id}/reconcile", f"/admin/orgs/{org}/reconcile", None, 200),
        (
            admin_doc,
            "put",
            "/admin/orgs/{org_id}/billing",
            f"/admin/orgs/{org}/billing",
            {"mode": "prepaid"},
            200,
        ),
    ]
    for doc, method, template, path, body, expected in calls:
        call = api.operator if path.startswith("/admin") else api.org
        status, answer = call(method.upper(), path, body)
        assert status == expected, (path, answer)
        jsonschema.validate(answer, _response_schema(doc, method, template, status))
    # A drifted answer would be caught: the schemas list every field and allow no other.
    drifted = {**api.org("GET", "/v1/billing")[1], "surprise": 1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(drifted, _response_schema(billing_doc, "get", "/v1/billing", 200))


def test_no_route_answers_a_bare_object(api: Api) -> None:
    for doc in (*_doc(api), openapi.document(api.billing.app)):
        components = doc["components"]["schemas"]
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                for status, response in operation["responses"].items():
                    schema = response.get("content", {}).get("application/json", {}).get("schema")
                    assert schema is not None, (method, path, status)
                    assert "$ref" in schema, (method, path, status, schema)
                    target = components[schema["$ref"].rsplit("/", 1)[1]]
                    assert target.get("properties"), (method, path, status)
                assert "422" not in operation["responses"]  # a validation error is our 400
