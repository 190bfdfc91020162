"""`make reconcile`: run the reconciliation against a running local stack and its local
Stripe (or, with BILLING_TABLE and AWS credentials in the environment, against a deployed
table, and against Stripe itself when STRIPE_API_KEY is set).

Every running stack keeps its state in a folder of its own (.aws-sam/conduix-local/stacks/<id>/).
STACK=<id or API port> names one; otherwise the most recently started stack still running is
checked, and named, so nobody reconciles a stack they did not mean to."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from conduix_local.template import ROOT

STACKS_DIR = ROOT / ".aws-sam" / "conduix-local" / "stacks"
STATE_NAME = "state.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stacks(stacks_dir: Path = STACKS_DIR) -> list[dict[str, Any]]:
    """The state of every stack still running, the newest first."""
    found = []
    for state_file in stacks_dir.glob(f"*/{STATE_NAME}"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue  # being written, or being removed
        if _alive(int(state.get("pid", -1))):
            found.append((state_file.stat().st_mtime, state))
    return [state for _, state in sorted(found, key=lambda pair: pair[0], reverse=True)]


def pick_stack(wanted: str | None, stacks_dir: Path = STACKS_DIR) -> dict[str, Any] | str:
    """The state of the stack to check, or why there is none."""
    stacks = running_stacks(stacks_dir)
    if wanted:
        for state in stacks:
            if wanted in (str(state.get("stack")), str(state["api"]).rsplit(":", 1)[-1]):
                return state
        known = ", ".join(f"{s['stack']} ({s['api']})" for s in stacks) or "none"
        return f"no running local stack is {wanted!r}; running: {known}."
    if not stacks:
        return "no local stack is running (start it with make run), and BILLING_TABLE is not set."
    return stacks[0]


def main() -> int:
    if not os.environ.get("BILLING_TABLE"):
        state_file = os.environ.get("CONDUIX_LOCAL_STATE_FILE")
        if state_file and Path(state_file).exists():
            state: dict[str, Any] | str = json.loads(Path(state_file).read_text())
        else:
            state = pick_stack(os.environ.get("STACK") or None)
        if isinstance(state, str):
            print(f"make reconcile: {state}", file=sys.stderr)
            return 2
        print(f"make reconcile: checking local stack {state['stack']} on {state['api']}", file=sys.stderr)
        if not os.environ.get("STRIPE_API_KEY") and state.get("stripe", "").startswith("http://127.0.0.1"):
            from conduix_local.stripe_local import API_KEY

            os.environ.update(STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=state["stripe"])
        os.environ.update(
            AWS_ENDPOINT_URL=state["moto"],
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            BILLING_TABLE="BillingTable",
        )
    os.environ.setdefault("CACHE_TABLE", "unused-by-reconciliation")
    if os.environ.get("STRIPE_API_KEY"):
        # Functions read the key from Secrets Manager; this command, run by an operator, from
        # the environment (conduix.core.config.secret).
        os.environ.update(CONDUIX_SECRETS_FROM_ENV="1", STRIPE_API_KEY_SECRET_ID="STRIPE_API_KEY")
    from conduix.audit import reconcile

    return reconcile.main()


if __name__ == "__main__":
    sys.exit(main())
