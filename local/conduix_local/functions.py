"""Reads the SAM functions out of template.yaml into plain specs the local front can run."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conduix_local.template import ROOT, resources_of_type

FUNCTION_TYPE = "AWS::Serverless::Function"


class TemplateError(ValueError):
    """The template asks for something the local stack cannot resolve."""


@dataclass(frozen=True)
class Route:
    method: str  # upper case; "ANY" matches every method
    path_template: str  # as in the template, e.g. "/v1/billing/{proxy+}"
    # SAM's ResponseTransferMode RESPONSE_STREAM (the integration's STREAM): the front sends
    # the function's response as it is written.
    stream: bool = False


@dataclass(frozen=True)
class ScheduleSpec:
    name: str  # the event's key under Events
    expression: str  # "rate(1 minute)" or "cron(15 0 1 * ? *)"
    input: dict[str, Any] | None = None  # the event's Input, parsed; None sends a Scheduled Event


@dataclass
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler: str
    timeout_s: int
    memory_mb: int
    env: dict[str, str]
    routes: list[Route] = field(default_factory=list)
    schedules: list[ScheduleSpec] = field(default_factory=list)
    # The built deployment package (conduix_local.build), in sys.path order; None runs the
    # source folder with the front's own interpreter and packages (front tests only).
    python_path: tuple[Path, ...] | None = None


def load_functions(
    template: dict[str, Any], refs: dict[str, str], base_dir: Path = ROOT
) -> list[FunctionSpec]:
    """One spec per AWS::Serverless::Function, in template order.

    `refs` maps a Ref target (resource logical id or parameter name) to its local value, and
    "Res.Attr" to a GetAtt's value. A Ref to a parameter missing from `refs` falls back to
    the parameter's Default, as CloudFormation would. CodeUri is relative to `base_dir`
    (the template's folder).
    """
    globals_fn: dict[str, Any] = (template.get("Globals") or {}).get("Function") or {}
    params: dict[str, Any] = template.get("Parameters") or {}
    # Pseudo parameters, and the REST API's id as the local front names it (events' apiId).
    apis = {name: "local" for name in resources_of_type(template, "AWS::Serverless::Api")}
    refs = {
        "AWS::Region": "us-east-1",
        "AWS::AccountId": "123456789012",
        "AWS::Partition": "aws",
        **apis,
        **refs,
    }
    conditions = {
        name: _condition(expr, refs, params, template.get("Conditions") or {})
        for name, expr in (template.get("Conditions") or {}).items()
    }
    refs = {**refs, **{f"Condition::{name}": "true" if value else "" for name, value in conditions.items()}}
    specs = []
    for logical_id, resource in resources_of_type(template, FUNCTION_TYPE).items():
        props: dict[str, Any] = resource.get("Properties") or {}
        env_raw: dict[str, Any] = {
            **((globals_fn.get("Environment") or {}).get("Variables") or {}),
            **((props.get("Environment") or {}).get("Variables") or {}),
        }
        env = {
            name: _resolve(value, refs, params, f"{logical_id}: environment variable {name}")
            for name, value in env_raw.items()
        }
        code_uri = props.get("CodeUri", globals_fn.get("CodeUri"))
        handler = props.get("Handler", globals_fn.get("Handler"))
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            raise TemplateError(f"{logical_id}: CodeUri and Handler must be plain strings locally")
        routes: list[Route] = []
        schedules: list[ScheduleSpec] = []
        for event_name, event in (props.get("Events") or {}).items():
            ev_props: dict[str, Any] = event.get("Properties") or {}
            if event["Type"] == "Api":
                routes.append(
                    Route(
                        str(ev_props.get("Method", "ANY")).upper(),
                        str(ev_props["Path"]),
                        stream=ev_props.get("ResponseTransferMode") == "RESPONSE_STREAM",
                    )
                )
            elif event["Type"] == "Schedule":
                if ev_props.get("Enabled") is False or ev_props.get("State") == "DISABLED":
                    continue
                raw_input = ev_props.get("Input")
                schedules.append(
                    ScheduleSpec(
                        event_name,
                        str(ev_props["Schedule"]),
                        json.loads(raw_input) if isinstance(raw_input, str) else raw_input,
                    )
                )
            else:
                raise TemplateError(f"{logical_id}: event {event_name} of type {event['Type']} unsupported")
        specs.append(
            FunctionSpec(
                logical_id=logical_id,
                code_dir=(base_dir / code_uri).resolve(),
                handler=handler,
                timeout_s=int(props.get("Timeout", globals_fn.get("Timeout", 3))),  # Lambda's default
                memory_mb=int(props.get("MemorySize", globals_fn.get("MemorySize", 128))),
                env=env,
                routes=routes,
                schedules=schedules,
            )
        )
    return specs


def _resolve(value: Any, refs: dict[str, str], params: dict[str, Any], where: str) -> str:
    if isinstance(value, bool):  # Lambda env values are strings; YAML true must read "true"
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref":
            return _lookup(str(arg), refs, params, where)
        if fn == "Fn::GetAtt":
            name = ".".join(arg) if isinstance(arg, list) else str(arg)
            return _lookup(name, refs, params, where)
        if fn == "Fn::If" and isinstance(arg, list) and len(arg) == 3:
            chosen = arg[1] if _lookup(f"Condition::{arg[0]}", refs, params, where) else arg[2]
            return _resolve(chosen, refs, params, where)
        if fn == "Fn::Sub" and isinstance(arg, str):
            return re.sub(r"\$\{([^}!]+)\}", lambda m: _lookup(m.group(1), refs, params, where), arg)
    raise TemplateError(f"{where}: cannot resolve {value!r} locally (pass its value in refs)")


def _condition(
    expr: Any, refs: dict[str, str], params: dict[str, Any], all_conditions: dict[str, Any]
) -> bool:
    """A template condition: Fn::Equals, Fn::Not, Fn::And, Fn::Or and Condition over parameters."""
    ((fn, arg),) = expr.items()
    if fn == "Fn::Equals":
        a, b = (_resolve(v, refs, params, "Conditions") for v in arg)
        return a == b
    if fn == "Fn::Not":
        return not _condition(arg[0], refs, params, all_conditions)
    if fn == "Fn::And":
        return all(_condition(c, refs, params, all_conditions) for c in arg)
    if fn == "Fn::Or":
        return any(_condition(c, refs, params, all_conditions) for c in arg)
    if fn == "Condition":
        return _condition(all_conditions[arg], refs, params, all_conditions)
    raise TemplateError(f"Conditions: {fn} is not supported locally")


def _lookup(name: str, refs: dict[str, str], params: dict[str, Any], where: str) -> str:
    if name in refs:
        return str(refs[name])
    if name in params and "Default" in params[name]:
        return str(params[name]["Default"])
    raise TemplateError(f"{where}: no local value for {name!r} (pass it in refs)")
