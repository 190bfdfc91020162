"""What an audit finds: one check an org's books fail (reconcile and reconcile_stripe)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Discrepancy:
    org_id: str
    check: str
    expected: str
    found: str
    request_ids: tuple[str, ...] = ()  # the requests at fault, when requests are

    def __str__(self) -> str:
        text = f"{self.org_id}: {self.check}: expected {self.expected}, found {self.found}"
        return text + (f" (requests: {', '.join(self.request_ids)})" if self.request_ids else "")
