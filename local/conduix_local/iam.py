"""The template's IAM, enforced in front of moto: each function calls AWS with an access key of
its own, and every call is checked against that function's `Policies` in template.yaml.

What is modelled: identity-based Allow/Deny statements (inline, and SAM policy templates
expanded from aws-sam-translator's own definitions), actions and resources with IAM wildcards,
an explicit Deny beating any Allow, DynamoDB index ARNs for Query/Scan on an index, and each
action inside TransactWriteItems/TransactGetItems checked on its own (ConditionCheck, Put,
Update, Delete, Get need ConditionCheckItem, PutItem, UpdateItem, DeleteItem, GetItem).
A refused call gets AWS's AccessDenied error shape. Callers whose key names no function (the
stack itself, the tests) are not checked. Conditions, NotAction and NotResource are refused
at load time rather than ignored.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ACCOUNT_ID = "123456789012"
PARTITION = "aws"
KEY_PREFIX = "LOCALFN"  # access key ids of function principals: LOCALFN<LogicalId>

_TRANSACT_ACTIONS = {
    "ConditionCheck": "ConditionCheckItem",
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "Get": "GetItem",
}
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")


class PolicyError(ValueError):
    """A policy the local stack cannot evaluate faithfully."""


@dataclass(frozen=True)
class Statement:
    effect: str  # "Allow" | "Deny"
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def matches(self, action: str, resource: str) -> bool:
        action_ok = any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in self.actions)
        return action_ok and any(fnmatch.fnmatchcase(resource, r) for r in self.resources)


@dataclass(frozen=True)
class Principal:
    function: str
    statements: tuple[Statement, ...]

    @property
    def arn(self) -> str:
        return f"arn:{PARTITION}:sts::{ACCOUNT_ID}:assumed-role/{self.function}Role/{self.function}"

    def allows(self, action: str, resource: str) -> bool:
        hits = [s for s in self.statements if s.matches(action, resource)]
        return any(s.effect == "Allow" for s in hits) and not any(s.effect == "Deny" for s in hits)


def access_key_id(logical_id: str) -> str:
    return KEY_PREFIX + logical_id


# ------------------------------------------------------------------------------------------------ policies


@functools.cache
def _sam_policy_templates() -> dict[str, Any]:
    import samtranslator  # the same definitions `sam build`/CloudFormation expand

    path = Path(samtranslator.__file__).parent / "policy_templates_data" / "policy_templates.json"
    templates: dict[str, Any] = json.loads(path.read_text())["Templates"]
    return templates


def _resolve(value: Any, refs: dict[str, str]) -> Any:
    """Ref, GetAtt, Sub (both forms) and Join, with `refs` holding names and "Res.Attr"."""
    if isinstance(value, list):
        return [_resolve(v, refs) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or not next(iter(value)).startswith(("Ref", "Fn::")):
        return {k: _resolve(v, refs) for k, v in value.items()}
    ((fn, arg),) = value.items()
    if fn == "Ref":
        return _lookup(str(arg), refs)
    if fn == "Fn::GetAtt":
        return _lookup(".".join(arg) if isinstance(arg, list) else str(arg), refs)
    if fn == "Fn::Join":
        sep, parts = arg
        return str(sep).join(str(_resolve(p, refs)) for p in parts)
    if fn == "Fn::Sub":
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        scope = {**refs, **{k: str(_resolve(v, refs)) for k, v in local.items()}}
        return re.sub(r"\$\{([^}!]+)\}", lambda m: _lookup(m.group(1), scope), text)
    raise PolicyError(f"cannot evaluate {fn} in a policy locally")


def _lookup(name: str, refs: dict[str, str]) -> str:
    if name not in refs:
        raise PolicyError(f"no local value for {name!r} in a policy")
    return refs[name]


def _statements(document: dict[str, Any], refs: dict[str, str], where: str) -> list[Statement]:
    out = []
    raw = document.get("Statement") or []
    for st in raw if isinstance(raw, list) else [raw]:
        unsupported = {"Condition", "NotAction", "NotResource", "NotPrincipal"} & set(st)
        if unsupported:
            raise PolicyError(f"{where}: {sorted(unsupported)[0]} is not modelled by the local IAM")
        actions = st.get("Action")
        resources = _resolve(st.get("Resource"), refs)
        out.append(
            Statement(
                str(st["Effect"]),
                tuple(actions if isinstance(actions, list) else [actions]),
                tuple(str(r) for r in (resources if isinstance(resources, list) else [resources])),
            )
        )
    return out


def function_statements(policies: Any, refs: dict[str, str], where: str) -> list[Statement]:
    """A function's `Policies` property, expanded to statements."""
    items = policies if isinstance(policies, list) else [policies] if policies else []
    out: list[Statement] = []
    for item in items:
        if isinstance(item, dict) and "Statement" in item:
            out += _statements(item, refs, where)
        elif isinstance(item, dict) and len(item) == 1:
            ((name, params),) = item.items()
            template = _sam_policy_templates().get(name)
            if template is None:
                raise PolicyError(f"{where}: unknown SAM policy template {name}")
            args = {k: str(_resolve(v, refs)) for k, v in (params or {}).items()}
            out += _statements(template["Definition"], {**refs, **args}, f"{where}: {name}")
        else:  # a managed policy name or ARN: its document is not in the template
            raise PolicyError(f"{where}: policy {item!r} cannot be checked locally")
    return out


def load_principals(template: dict[str, Any], refs: dict[str, str], region: str) -> dict[str, Principal]:
    """Access key id -> principal, for every function of the template.

    `refs` maps resource names and "Res.Arn"-style attributes to their local values.
    """
    scope = {"AWS::Partition": PARTITION, "AWS::Region": region, "AWS::AccountId": ACCOUNT_ID, **refs}
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    principals = {}
    for logical_id, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        policies = (resource.get("Properties") or {}).get("Policies", globals_fn.get("Policies"))
        statements = function_statements(policies, scope, logical_id)
        principals[access_key_id(logical_id)] = Principal(logical_id, tuple(statements))
    return principals


# ------------------------------------------------------------------------------------------------ requests


def _table_arn(region: str, table: str) -> str:
    return f"arn:{PARTITION}:dynamodb:{region}:{ACCOUNT_ID}:table/{table}"


def dynamodb_actions(operation: str, body: dict[str, Any], region: str) -> list[tuple[str, str]]:
    """(action, resource) pairs one DynamoDB call needs."""
    if operation in ("TransactWriteItems", "TransactGetItems"):
        pairs = []
        for item in body.get("TransactItems") or []:
            for kind, spec in item.items():
                name = _TRANSACT_ACTIONS.get(kind, kind)
                pairs.append((f"dynamodb:{name}", _table_arn(region, str(spec.get("TableName")))))
        return pairs
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{operation}", _table_arn(region, t)) for t in body.get("RequestItems") or {}]
    table = body.get("TableName")
    if not table:
        return [(f"dynamodb:{operation}", "*")]
    resource = _table_arn(region, str(table))
    if body.get("IndexName"):
        resource += f"/index/{body['IndexName']}"
    return [(f"dynamodb:{operation}", resource)]


def ses_actions(path: str, body: bytes, region: str) -> list[tuple[str, str]]:
    identity = f"arn:{PARTITION}:ses:{region}:{ACCOUNT_ID}:identity/"
    if path.startswith("/v2/email/outbound-emails"):
        sender = json.loads(body or b"{}").get("FromEmailAddress", "*")
        return [("ses:SendEmail", identity + str(sender))]
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    action = form.get("Action", "Unknown")
    if action in ("SendEmail", "SendRawEmail", "SendTemplatedEmail", "SendBulkTemplatedEmail"):
        sender = form.get("Source") or form.get("FromArn") or "*"
        return [(f"ses:{action}", identity + sender)]
    return [(f"ses:{action}", "*")]


def denial(
    principals: dict[str, Principal], headers: dict[str, str], path: str, body: bytes
) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """None when the call may go on; otherwise the (status, headers, body) AWS would answer."""
    m = _CREDENTIAL_RE.search(headers.get("authorization", ""))
    principal = principals.get(m.group(1)) if m else None
    if principal is None or m is None:
        return None  # not a function: the stack's own set-up, or a test
    region, service = m.group(2), m.group(3)
    if service == "dynamodb":
        operation = headers.get("x-amz-target", "").rpartition(".")[2]
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            return None  # moto answers the malformed request itself
        pairs = dynamodb_actions(operation, parsed, region)
    elif service in ("ses", "email"):
        pairs = ses_actions(path, body, region)
    else:
        pairs = [(f"{service}:*", "*")]
    for action, resource in pairs:
        if principal.allows(action, resource):
            continue
        message = (
            f"User: {principal.arn} is not authorized to perform: {action} on resource: {resource} "
            f"because no identity-based policy allows the {action} action"
        )
        print(f"[iam] {principal.function} denied {action} on {resource}", file=sys.stderr, flush=True)
        if service == "dynamodb":
            payload = {"__type": "com.amazon.coral.service#AccessDeniedException", "message": message}
            return 400, [("Content-Type", "application/x-amz-json-1.0")], json.dumps(payload).encode()
        request_id = str(uuid.uuid4())
        xml = (
            '<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/"><Error><Type>Sender</Type>'
            f"<Code>AccessDenied</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        return 403, [("Content-Type", "text/xml")], xml.encode()
    return None
