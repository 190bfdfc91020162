"""The model catalog: which models exist, where their upstream is, and what they cost.

Operators edit it as JSON or YAML; `CONDUIX_MODELS_FILE` replaces the default that ships in
this package. Validation is strict and names the entry and field at fault, because a wrong
price is a billing bug.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

from conduix.core.config import settings, variable
from conduix.core.errors import ConfigurationError, ModelNotFound
from conduix.core.money import NANOS_PER_CREDIT

DEFAULT_CATALOG = Path(__file__).with_name("models.default.json")
DEFAULT_MAX_OUTPUT_TOKENS = 4096
DEFAULT_TIMEOUT_SECONDS = 20
# Prompt tokens a provider may bill beyond the text, when an entry does not say (README).
DEFAULT_TOOLS_TOKENS = 1000  # a hidden tool-use prompt (Anthropic publishes ~350; others don't)
DEFAULT_PER_MESSAGE_TOKENS = 4  # role markers (OpenAI: 3, +1 with a name)
DEFAULT_PER_REQUEST_TOKENS = 8  # reply priming (OpenAI: 3)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_ENV_REF = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Upstream:
    base_url: str
    model: str
    api_key_env: str | None
    timeout_seconds: int


@dataclass(frozen=True)
class Pricing:
    input_per_million: int  # nano-credits per million prompt tokens
    output_per_million: int  # nano-credits per million completion tokens


@dataclass(frozen=True)
class PromptBounds:
    """The most prompt tokens the provider may bill beyond the request's text."""

    per_image: int | None = None  # per image part; None: the model takes no images from us
    tools: int = DEFAULT_TOOLS_TOKENS  # once, for a request that sends `tools` or `functions`
    per_message: int = DEFAULT_PER_MESSAGE_TOKENS
    per_request: int = DEFAULT_PER_REQUEST_TOKENS


@dataclass(frozen=True)
class Model:
    id: str
    upstream: Upstream
    pricing: Pricing
    fallbacks: tuple[str, ...]
    max_output_tokens: int
    owned_by: str
    prompt_bounds: PromptBounds = PromptBounds()
    kind: str = "chat"  # or "embedding": each route serves only its own kind
    dimensions: int | None = None  # an embedding model's vector size
    adjustable_dimensions: bool = False  # whether a request may ask for fewer `dimensions`


KINDS = ("chat", "embedding")


class Catalog:
    def __init__(self, models: list[Model]) -> None:
        self._models = {m.id: m for m in models}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, model_id: str) -> Model:
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelNotFound(f"The model '{model_id}' does not exist.") from None

    def chain(self, model_id: str) -> list[Model]:
        """The model, then its fallbacks in the order they are tried."""
        first = self.get(model_id)
        return [first, *(self._models[f] for f in first.fallbacks)]


class _Invalid(Exception):
    pass


def _field(entry: dict[str, Any], name: str, where: str) -> Any:
    if name not in entry:
        raise _Invalid(f"field '{where}{name}' is missing")
    return entry[name]


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"field '{where}' must be a non-empty string")
    return value.strip()


def _price(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(
            f"field '{where}' must be a decimal string such as \"0.15\" (credits per million tokens)"
        )
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise _Invalid(f"field '{where}' is not a decimal number: {value!r}") from None
    nanos = amount * NANOS_PER_CREDIT
    if not amount.is_finite() or amount < 0 or nanos != nanos.to_integral_value():
        raise _Invalid(f"field '{where}' must be a non-negative decimal with at most 9 decimal places")
    return int(nanos)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(f"field '{where}' must be a positive integer")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(f"field '{where}' must be a non-negative integer (tokens)")
    return value


def _prompt_bounds(value: Any) -> PromptBounds:
    if value is None:
        return PromptBounds()
    if not isinstance(value, dict):
        raise _Invalid("field 'prompt_bounds' must be an object")
    unknown = sorted(set(value) - {"per_image", "tools", "per_message", "per_request"})
    if unknown:
        raise _Invalid(
            f"field 'prompt_bounds.{unknown[0]}' is not one of per_image, tools, per_message, per_request"
        )
    defaults = PromptBounds()
    per_image = value.get("per_image")
    return PromptBounds(
        per_image=None if per_image is None else _count(per_image, "prompt_bounds.per_image"),
        tools=_count(value.get("tools", defaults.tools), "prompt_bounds.tools"),
        per_message=_count(value.get("per_message", defaults.per_message), "prompt_bounds.per_message"),
        per_request=_count(value.get("per_request", defaults.per_request), "prompt_bounds.per_request"),
    )


def _expand(value: str, where: str) -> str:
    """`${VAR}` and `${VAR:-default}` in URLs, so one catalog serves several environments."""

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        resolved = variable(name) or default
        if resolved is None:
            raise _Invalid(f"field '{where}' needs the environment variable {name}, which is not set")
        return resolved

    return _ENV_REF.sub(sub, value)


def _parse_model(entry: Any) -> Model:
    if not isinstance(entry, dict):
        raise _Invalid("each entry must be an object")
    model_id = _string(_field(entry, "id", ""), "id")
    if not _ID.match(model_id):
        raise _Invalid("field 'id' may hold only letters, digits and . _ : / -")
    upstream = _field(entry, "upstream", "")
    if not isinstance(upstream, dict):
        raise _Invalid("field 'upstream' must be an object")
    base_url = _expand(
        _string(_field(upstream, "base_url", "upstream."), "upstream.base_url"), "upstream.base_url"
    )
    if not base_url.startswith(("http://", "https://")):
        raise _Invalid("field 'upstream.base_url' must be an http(s) URL")
    key_env = upstream.get("api_key_env")
    if key_env is not None:
        key_env = _string(key_env, "upstream.api_key_env")
    pricing = _field(entry, "pricing", "")
    if not isinstance(pricing, dict):
        raise _Invalid("field 'pricing' must be an object")
    fallbacks = entry.get("fallbacks", [])
    if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
        raise _Invalid("field 'fallbacks' must be a list of model ids")
    return Model(
        id=model_id,
        upstream=Upstream(
            base_url=base_url.rstrip("/"),
            model=_string(_field(upstream, "model", "upstream."), "upstream.model"),
            api_key_env=key_env,
            timeout_seconds=_positive_int(
                upstream.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS), "upstream.timeout_seconds"
            ),
        ),
        pricing=Pricing(
            input_per_million=_price(
                _field(pricing, "input_per_million", "pricing."), "pricing.input_per_million"
            ),
            output_per_million=_price(
                _field(pricing, "output_per_million", "pricing."), "pricing.output_per_million"
            ),
        ),
        fallbacks=tuple(fallbacks),
        max_output_tokens=_positive_int(
            entry.get("max_output_tokens", DEFAULT_MAX_OUTPUT_TOKENS), "max_output_tokens"
        ),
        owned_by=str(entry.get("owned_by") or model_id.split("/", 1)[0]),
        prompt_bounds=_prompt_bounds(entry.get("prompt_bounds")),
        **_embedding_fields(entry),
    )


def _embedding_fields(entry: dict[str, Any]) -> dict[str, Any]:
    kind = entry.get("kind", "chat")
    if kind not in KINDS:
        raise _Invalid(f"field 'kind' must be one of {', '.join(KINDS)}")
    if kind == "chat":
        for name in ("dimensions", "dimensions_adjustable"):
            if name in entry:
                raise _Invalid(f'field \'{name}\' is only for embedding models ("kind": "embedding")')
        return {}
    adjustable = entry.get("dimensions_adjustable", False)
    if not isinstance(adjustable, bool):
        raise _Invalid("field 'dimensions_adjustable' must be true or false")
    return {
        "kind": kind,
        "dimensions": _positive_int(_field(entry, "dimensions", ""), "dimensions"),
        "adjustable_dimensions": adjustable,
    }


def parse_catalog(document: Any, source: str) -> Catalog:
    entries = document.get("models") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError(
            f"Model catalog {source}: expected a non-empty list of models (or {{'models': [...]}})."
        )
    models: list[Model] = []
    for index, entry in enumerate(entries):
        label = (
            entry.get("id") if isinstance(entry, dict) and isinstance(entry.get("id"), str) else f"#{index}"
        )
        try:
            models.append(_parse_model(entry))
        except _Invalid as exc:
            raise ConfigurationError(f"Model catalog {source}: entry '{label}': {exc}.") from None
    ids = [m.id for m in models]
    for model in models:
        if ids.count(model.id) > 1:
            raise ConfigurationError(f"Model catalog {source}: entry '{model.id}': field 'id' is not unique.")
        for fallback in model.fallbacks:
            if fallback not in ids or fallback == model.id:
                raise ConfigurationError(
                    f"Model catalog {source}: entry '{model.id}': field 'fallbacks' names "
                    f"'{fallback}', which is not another model of the catalog."
                )
            if models[ids.index(fallback)].kind != model.kind:
                raise ConfigurationError(
                    f"Model catalog {source}: entry '{model.id}': field 'fallbacks' names "
                    f"'{fallback}', which is not a {model.kind} model."
                )
    return Catalog(models)


def load_catalog(path: str | None) -> Catalog:
    file = Path(path) if path else DEFAULT_CATALOG
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"Model catalog {file}: cannot be read ({exc.strerror}).") from None
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml  # only YAML catalogs pay for the import

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        raise ConfigurationError(
            f"Model catalog {file}: not valid {file.suffix.lstrip('.') or 'JSON'}: {exc}"
        ) from None
    except Exception as exc:
        raise ConfigurationError(f"Model catalog {file}: cannot be parsed: {exc}") from None
    return parse_catalog(document, str(file))


@cache
def catalog() -> Catalog:
    """The catalog of this deployment, loaded once per cold start."""
    return load_catalog(settings().models_file)
