"""One set of models for BillingApi's and Admin's requests and answers (conduix.core.bodies,
conduix.api.views): the resolver validates with them, and /openapi.json is generated from them.

Bad input on every body route is our 400 naming the field (never Powertools' 422), who is
calling is checked before what was sent, and real answers validate against the document's
own response schemas, none of which is a bare object."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import jsonschema
import pytest
from conduix.api import openapi

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
        ev.update(httpMethod=method, path=path, body=None if body is None else json.dumps(body))
        ev["queryStringParameters"] = None
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
