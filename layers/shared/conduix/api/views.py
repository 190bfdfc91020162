"""The answers of BillingApi and Admin, as pydantic models: /openapi.json shows these shapes
(routes name them with `api.answers`), and the tests validate real answers against the
document, so a view and its model cannot drift apart. The views themselves stay plain
dicts built by the domain modules: validating every answer again would only cost time.

Amounts are exact decimal strings of credits, as everywhere in the API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Amount = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]{1,9})?$", examples=["12.5"], description="Credits")]
Day = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", examples=["2026-11-28"])]
Month = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}$", examples=["2026-11"])]
Time = Annotated[str, Field(description="ISO 8601, UTC")]


class View(BaseModel):
    """An answer's shape: every field listed, nothing else (additionalProperties: false)."""

    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ wallet and billing


class MonthView(View):
    period: Month
    spent: Amount


class SpendCapView(View):
    monthly_limit: Amount
    period: Month
    used: Amount
    remaining: Amount


class ReloadResult(View):
    status: str
    message: str
    at: Time | None


class AutoReloadView(View):
    enabled: bool
    threshold: Amount | None
    amount: Amount | None
    consecutive_failures: int
    last_result: ReloadResult | None


class SubscriptionView(View):
    status: str
    current_period_end: int | str | None
    last_payment_failed: bool


class PlanView(View):
    id: str
    name: str
    included_credits: Amount
    subscription: SubscriptionView | None


class ExpiringGrant(View):
    grant: str
    granted: Amount
    remaining: Amount
    granted_at: Time
    expires_at: Time


class CardView(View):
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class WalletView(View):
    balance: Amount
    held: Amount = Field(description="Reserved by requests in flight")
    available: Amount
    open_holds: int
    billing_mode: Literal["prepaid", "invoice"]
    month: MonthView
    spend_cap: SpendCapView | None
    unit: Literal["credits"]


class BillingView(WalletView):
    org_id: str
    org_name: str
    account_state: Literal["active", "paused"]
    auto_reload: AutoReloadView
    plan: PlanView
    expiring_credits: list[ExpiringGrant] = Field(description="Soonest first; spent before other credits")
    saved_card: CardView | None


class FiredAlert(View):
    kind: Literal["balance_below", "cap_used_percent"]
    fired_at: Time
    threshold: Amount | int


class AlertsView(View):
    balance_below: list[Amount]
    cap_used_percent: list[int]
    fired: list[FiredAlert]


class Notice(View):
    type: str
    sent_at: Time
    recipient: str
    subject: str
    delivered: bool


class NoticeList(View):
    object: Literal["list"]
    data: list[Notice] = Field(description="Newest first")


# ------------------------------------------------------------------ statements


class LedgerEntry(View):
    id: str
    type: str
    amount: Amount
    balance_after: Amount
    description: str
    reference: str
    created_at: Time
    model: str | None = None
    invoiced: Amount | None = Field(default=None, description="Invoice mode: the part the invoice bills")


class LedgerPage(View):
    object: Literal["list"]
    data: list[LedgerEntry] = Field(description="Newest first")
    has_more: bool
    next_cursor: str | None


class UsageCounts(View):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    credits: Amount
    saved_credits: Amount


class UsageRow(UsageCounts):
    model: str | None = None
    day: Day | None = None
    key_id: str | None = None


class UsageReport(View):
    from_: Day = Field(alias="from")
    to: Day
    group_by: list[Literal["model", "day", "key"]]
    data: list[UsageRow]
    totals: UsageCounts
    unit: Literal["credits"]


def with_csv(model: type[BaseModel]) -> dict[int, Any]:
    """JSON by default; CSV with format=csv."""
    return {
        200: {
            "description": "JSON, or CSV with format=csv",
            "content": {"application/json": {"model": model}, "text/csv": {"schema": {"type": "string"}}},
        }
    }


# ------------------------------------------------------------------ keys


class KeyLimitView(View):
    amount: Amount
    period: Literal["day", "week", "month", "total"]
    spent: Amount
    in_flight: Amount
    remaining: Amount
    resets_at: Time | None


class KeyView(View):
    key_id: str
    name: str
    scopes: list[Literal["inference", "billing"]]
    created_at: Time
    revoked: bool
    spend_limit: KeyLimitView | None


class CreatedKey(KeyView):
    api_key: str = Field(description="The secret, shown this once")
    org_id: str


class KeyList(View):
    object: Literal["list"]
    data: list[KeyView]


# ------------------------------------------------------------------ money in


class CheckoutSession(View):
    checkout_url: str
    session_id: str
    amount: Amount


class SubscriptionChange(View):
    plan: str
    status: Literal["checkout", "changed", "unchanged", "canceled"]
    checkout_url: str | None = None
    session_id: str | None = None


class Invoice(View):
    id: str | None
    number: str | None
    status: str | None
    description: str | None
    currency: str | None
    total: str = Field(description="USD")
    amount_paid: str = Field(description="USD")
    created: int | None
    due_date: int | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None


class InvoiceList(View):
    object: Literal["list"]
    data: list[Invoice]


class PlanFeatures(View):
    cache_ttl_seconds: int
    requests_per_minute_per_key: int
    max_api_keys: int


class PlanOffer(View):
    id: str
    name: str
    monthly_price: Amount
    included_credits: Amount
    features: PlanFeatures
    highlights: list[str]


class ModelPrice(View):
    id: str
    input_per_million: Amount
    output_per_million: Amount


class Pricing(View):
    unit: Literal["credits"]
    credit_value: str
    plans: list[PlanOffer]
    top_up_tiers: list[Amount]
    models: list[ModelPrice]
    cache: str


# ------------------------------------------------------------------ Admin


class Invoicing(View):
    po_number: str | None
    net_terms_days: int | None


class OrgView(View):
    org_id: str
    name: str
    email: str
    created_at: Time
    wallet: WalletView
    invoicing: Invoicing
    api_keys: list[KeyView]


class BillingModeChange(OrgView):
    auto_reload_turned_off: bool


class OrgSummary(View):
    org_id: str
    name: str
    email: str
    created_at: Time


class OrgList(View):
    object: Literal["list"]
    data: list[OrgSummary] = Field(description="In email order")
    has_more: bool
    next_cursor: str | None


class Hold(View):
    request_id: str
    amount: Amount
    model: str
    key_id: str | None
    placed_at: Time
    expires_at: Time
    age_seconds: int
    expired: bool


class OpenLease(View):
    """An escrow lease of a hot org's environment: its slice counts in the wallet's held until
    it is folded (by its environment, or by HoldSweeper once it expired)."""

    lease_id: str
    key_id: str = Field(description="The key whose spend limit it also holds; empty: any of the org's keys")
    slice: Amount
    spent: Amount = Field(description="Billed under it and not folded yet")
    requests: int
    billed_requests: int
    expires_at: Time
    expired: bool


class HoldList(View):
    object: Literal["list"]
    data: list[Hold] = Field(description="Oldest first")
    leases: list[OpenLease] = Field(description="Open escrow leases, the soonest to expire first")
    unit: Literal["credits"]


class ReleaseEntry(View):
    id: str
    type: str
    amount: Amount
    description: str
    created_at: Time


class HoldOutcome(View):
    """Released (nothing billed, an audit entry written), or settled when its request was
    served and its usage waits: billed, as HoldSweeper would."""

    request_id: str
    action: Literal["released", "settled"]
    released: Amount | None = None
    ledger_entry: ReleaseEntry | None = None
    outcome: str | None = None
    cost: Amount | None = None
    wallet: WalletView


class Discrepancy(View):
    org_id: str
    check: str
    expected: str
    found: str
    request_ids: list[str]


class ReconcileReport(View):
    org_id: str
    ok: bool
    discrepancies: list[Discrepancy]


class Grant(View):
    entry_id: str
    type: Literal["grant"]
    amount: Amount
    description: str
    created_at: Time
    idempotency_key: str
    expires_at: Time | None
