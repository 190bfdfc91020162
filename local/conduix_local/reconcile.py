"""`make reconcile`: run the reconciliation against the running local stack and its local
Stripe (or, with BILLING_TABLE and AWS credentials in the environment, against a deployed
table, and against Stripe itself when STRIPE_API_KEY is set)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from conduix_local.template import ROOT

DEFAULT_STATE = ROOT / ".local-stack.json"


def main() -> int:
    if not os.environ.get("BILLING_TABLE"):
        state_file = Path(os.environ.get("CONDUIX_LOCAL_STATE_FILE") or DEFAULT_STATE)
        if not state_file.exists():
            print(
                "make reconcile: no local stack is running (start it with make run), "
                "and BILLING_TABLE is not set to reconcile a deployed table.",
                file=sys.stderr,
            )
            return 2
        state = json.loads(state_file.read_text())
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
    from conduix import reconcile

    return reconcile.main()


if __name__ == "__main__":
    sys.exit(main())
