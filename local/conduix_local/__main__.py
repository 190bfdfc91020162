"""`python -m conduix_local` (what `make run` runs): start the local stack, serve until Ctrl-C
or SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from conduix_local.reconcile import STATE_NAME
from conduix_local.stack import Stack, StackConfig, StackError


def _banner(stack: Stack, generated_key: bool) -> str:
    state = stack.state()
    parts = state["map"]
    demo = state["demo"]
    lines = [
        "",
        f"Conduix local stack {state['stack']} is up on {parts['api']}",
        f"  dashboard:       {parts['dashboard']}",
        f"  DynamoDB/SES:    {parts['dynamodb']['endpoint']} (moto; the template's IAM enforced)",
        f"  Stripe:          {parts['stripe']['api_base']} (secret key {parts['stripe']['secret_key']})",
        f"  upstream models: {parts['upstream']['base_url']}",
        f"  operator key:    {state['operator_key']}"
        + ("  (generated; set CONDUIX_OPERATOR_KEY to choose)" if generated_key else ""),
        "  test clock:      GET/POST /_local/clock · this map: GET /_local/stack (operator key)",
    ]
    if demo:
        lines += [
            f"  demo org: {demo['org_id']} with 25 credits; its API key: {demo['api_key']}",
            "",
            "Try it:",
            f"  curl -s {state['api']}/v1/chat/completions \\",
            f"    -H 'Authorization: Bearer {demo['api_key']}' -H 'Content-Type: application/json' \\",
            "    -d '"
            + json.dumps({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]})
            + "'",
            f"  curl -s {state['api']}/v1/billing -H 'Authorization: Bearer {demo['api_key']}'",
        ]
    lines += ["", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def write_secret_file(path: Path, state: dict[str, Any]) -> None:
    """The state holds the operator key and the webhook secret: readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(state))
    os.chmod(tmp, 0o600)  # O_CREAT's mode is ignored for a file that already existed
    os.replace(tmp, path)  # readers never see half a file


def main() -> int:
    signalled: list[int] = []
    # Installed first, so a SIGTERM during the start also ends in a clean stop. The handler only
    # appends: it runs in the main thread between bytecodes, and an Event.set() there deadlocks
    # when the signal lands while the main thread holds that Event's lock inside wait().
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: signalled.append(number))
    try:
        config = StackConfig.from_env()
        generated = not os.environ.get("CONDUIX_OPERATOR_KEY")
        stack = Stack(config).start()
    except StackError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"make run: the local stack failed to start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    extra = os.environ.get("CONDUIX_LOCAL_STATE_FILE")
    files = [stack.state_dir / STATE_NAME, *([Path(extra)] if extra else [])]
    try:
        # Where `make reconcile` (and the tests) find the running stack's parts.
        for state_file in files:
            write_secret_file(state_file, stack.state())
        print(_banner(stack, generated), flush=True)
        while not signalled:
            time.sleep(0.1)
    finally:
        print("Stopping the local stack...", flush=True)
        for state_file in files:
            state_file.unlink(missing_ok=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
