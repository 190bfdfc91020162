"""`python -m conduix_local` (what `make run` runs): start the local stack, serve until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from conduix_local.reconcile import DEFAULT_STATE
from conduix_local.stack import Stack, StackConfig, StackError


def _banner(stack: Stack, generated_key: bool) -> str:
    state = stack.state()
    demo = state["demo"]
    lines = [
        "",
        f"Conduix local stack is up on {state['api']}",
        f"  stand-ins: DynamoDB/SES (moto) {state['moto']} · upstream models {state['upstream']}",
        f"  operator key: {state['operator_key']}"
        + ("  (generated; set CONDUIX_OPERATOR_KEY to choose)" if generated_key else ""),
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


def main() -> int:
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
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        # Where `make reconcile` (and the tests) find the running stack's parts.
        state_file = Path(os.environ.get("CONDUIX_LOCAL_STATE_FILE") or DEFAULT_STATE)
        state_file.write_text(json.dumps(stack.state()), encoding="utf-8")
        print(_banner(stack, generated), flush=True)
        stop.wait()
    finally:
        print("Stopping the local stack...", flush=True)
        stack.stop()
        state_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
