"""The OpenAPI document of the public API, generated from the code.

BillingApi's (and Admin's) routes, with their query parameters, request bodies and answers,
come from the Powertools resolver: the handlers' parameters name the models it validates with
(`conduix.api.queries`, `conduix.core.bodies`), and their `responses` the models of
`conduix.api.views`. The Completion routes
(which use no resolver, to keep that function's cold start small) are described from the
models below. Served at GET /openapi.json (and the operator's at GET /admin/openapi.json);
schemathesis drives the local stack with it in the tests.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Credits = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,15}(\.[0-9]{1,9})?$",
        examples=["10", "0.5"],
        description="Credits, as an exact decimal string.",
    ),
]


Temperature = Annotated[float, Field(ge=0, le=2, description="0 makes the request cacheable.")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None


class ChatCompletionRequest(_Body):
    """OpenAI's chat completion request. The other OpenAI fields that do not change what the
    provider charges (top_p, stop, seed, tools, response_format, ...) are passed to the model;
    any other field, and content parts the model's hold cannot bound, get a 400."""

    model: str = Field(min_length=1, examples=["openai/gpt-4o-mini"])
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    stream: bool = False
    n: int | None = Field(default=None, ge=1, le=16)


class EmbeddingRequest(_Body):
    """OpenAI's embeddings request; any other field gets a 400."""

    model: str = Field(min_length=1, examples=["openai/text-embedding-3-small"])
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, an array of strings, or token arrays (at most 2048 inputs)."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None, ge=1, description="Only for models whose catalog entry allows it; else 400."
    )
    user: str | None = None


class ChatMessage(_Body):
    role: Literal["assistant"]
    content: str | None


class Choice(_Body):
    index: int
    message: ChatMessage
    finish_reason: str | None


class Usage(_Body):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ChatCompletion(_Body):
    """OpenAI's chat completion, as the model's provider answered it (its other fields pass through)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Embedding(_Body):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 with encoding_format base64")


class EmbeddingList(_Body):
    object: Literal["list"]
    data: list[Embedding] = Field(description="One per input, in order")
    model: str
    usage: Usage


class ModelPricing(BaseModel):
    input_per_million: str
    output_per_million: str
    unit: Literal["credits"]


class CatalogModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: str
    max_output_tokens: int | None = None
    dimensions: int | None = None
    fallbacks: list[str]
    pricing: ModelPricing


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[CatalogModel]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class Error(BaseModel):
    error: ErrorDetail


# Completion's bodies (it validates by hand, for its cold start); the resolvers' bodies come
# from their handlers' parameters (conduix.core.bodies).
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/v1/chat/completions"): ChatCompletionRequest,
    ("post", "/v1/embeddings"): EmbeddingRequest,
}
PUBLIC = {("get", "/v1/models"), ("get", "/v1/pricing")}
_ERRORS = {
    "400": "Bad input (nothing is held or charged)",
    "401": "Missing, unknown or revoked API key",
    "402": "insufficient_credits, spend_cap_exceeded or key_spend_limit_exceeded",
    "403": "The key lacks the scope",
    "404": "Unknown model, object or route",
    "409": "Conflict (idempotency key reused, a plan limit, a missing saved card)",
    "413": "Body over 1 MB",
    "429": "Requests per minute of the plan reached",
    "502": "The model provider failed (nothing billed)",
    "503": "The model provider or a store is unavailable (nothing billed)",
    "504": "The model provider timed out (nothing billed)",
}


def _schema_of(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _completion_paths(components: dict[str, Any]) -> dict[str, Any]:
    return {
        "/v1/chat/completions": {
            "post": {
                "summary": "Create a chat completion, billed in credits",
                "description": "Held before the provider is called and settled from its usage. Headers: "
                "x-conduix-cache (HIT, MISS, BYPASS), x-conduix-cost, x-conduix-balance, x-request-id.",
                "operationId": "create_chat_completion",
                "tags": ["Completions"],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Kept 24 hours per org: a retry with the same key and body gets the "
                        "first answer and is billed once; another body gets 409.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The completion (JSON, or server-sent events when stream is true)",
                        "content": {
                            "application/json": {"schema": _schema_of(ChatCompletion, components)},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        "/v1/embeddings": {
            "post": {
                "summary": "Create embeddings, billed per input token in credits",
                "description": "Held before the provider is called (the inputs' UTF-8 bytes bound their "
                "tokens) and settled from its usage; cached like a deterministic completion. Same "
                "headers as chat completions.",
                "operationId": "create_embeddings",
                "tags": ["Completions"],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "As for chat completions.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "One embedding per input, in order, and the usage with its cost",
                        "content": {"application/json": {"schema": _schema_of(EmbeddingList, components)}},
                    }
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "List the models and their prices",
                "operationId": "list_models",
                "tags": ["Completions"],
                "responses": {
                    "200": {
                        "description": "The catalog",
                        "content": {"application/json": {"schema": _schema_of(ModelList, components)}},
                    }
                },
            }
        },
    }


def _finish(doc: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Our error answers on every operation, in place of Powertools' 422 (which we never send:
    a validation error is our 400)."""
    error_ref = _schema_of(Error, components)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            model = REQUEST_BODIES.get((method, path))
            if model is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _schema_of(model, components)}},
                }
            if (method, path) in PUBLIC:
                operation["security"] = []
            operation["responses"].pop("422", None)
            for status, description in _ERRORS.items():
                operation["responses"].setdefault(
                    status,
                    {"description": description, "content": {"application/json": {"schema": error_ref}}},
                )
    return doc


def _query_schemas(app: Any, doc: dict[str, Any]) -> None:
    """Powertools lists a query model's fields as parameters with their bare type only; give
    each the field's own schema (bounds, enum, format, default) and description."""
    for route in app._static_routes + app._dynamic_routes:
        operation = doc["paths"].get(route.openapi_path, {}).get(route.method.lower())
        if not operation:
            continue
        for param in route.dependant.query_params:
            model = param.field_info.annotation
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                continue
            properties = model.model_json_schema(by_alias=True)["properties"]
            for parameter in operation.get("parameters", []):
                field = properties.get(parameter["name"]) if parameter["in"] == "query" else None
                if field is not None:
                    field = {k: v for k, v in field.items() if k != "title" and v is not None}
                    if "description" in field:
                        parameter["description"] = field.pop("description")
                    parameter["schema"] = field


def _generated(app: Any, title: str, version: str, summary: str) -> tuple[dict[str, Any], dict[str, Any]]:
    generated = app.get_openapi_schema(title=title, version=version, summary=summary)
    doc: dict[str, Any] = json.loads(generated.model_dump_json(by_alias=True, exclude_none=True))
    _query_schemas(app, doc)
    components: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    return doc, components


def document(billing_app: Any, version: str = "1.0.0") -> dict[str, Any]:
    doc, components = _generated(
        billing_app,
        "Conduix API",
        version,
        "OpenAI-compatible completions billed in credits, and the billing API behind the dashboard.",
    )
    doc["paths"] = {**_completion_paths(components), **doc.get("paths", {})}
    doc["components"]["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "An org API key (cdx_...)."}
    }
    doc["security"] = [{"apiKey": []}]
    return _finish(doc, components)


def admin_document(admin_app: Any, version: str = "1.0.0") -> dict[str, Any]:
    """The operator's API (served to the operator only, at /admin/openapi.json)."""
    doc, components = _generated(
        admin_app, "Conduix operator API", version, "Orgs, their keys, holds, grants and billing modes."
    )
    doc["components"]["securitySchemes"] = {
        "operatorKey": {"type": "http", "scheme": "bearer", "description": "The operator key."}
    }
    doc["security"] = [{"operatorKey": []}]
    return _finish(doc, components)
