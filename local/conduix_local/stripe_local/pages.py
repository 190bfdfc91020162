"""What a browser sees: the local stand-in of Stripe Checkout's hosted page, hosted invoice
pages with their PDFs, and the local test hooks (/_local/...)."""

from __future__ import annotations

import html
import zlib
from datetime import UTC, datetime

from aiohttp import web

from . import api, billing, checkout, clock
from .core import StripeError, bad, money, now
from .payments import Failure, PaymentMethod, luhn_ok

_STYLE = """
:root { color-scheme: light dark; --accent: #635bff; --error: #b3261e; }
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; background: Canvas; color: CanvasText; }
main { max-width: 32rem; margin: 2rem auto; padding: 0 1rem; }
.note { border-left: 4px solid var(--accent); padding: .5rem .75rem; }
table { width: 100%; border-collapse: collapse; margin: 1rem 0; }
caption { text-align: left; }
th, td { text-align: left; padding: .4rem 0; border-bottom: 1px solid GrayText; }
.amount { text-align: right; font-variant-numeric: tabular-nums; }
label { display: block; font-weight: 600; margin-top: 1rem; }
input { font: inherit; width: 100%; box-sizing: border-box; padding: .6rem; margin-top: .25rem;
        border: 1px solid; border-radius: 6px; }
input[aria-invalid="true"] { border: 2px solid var(--error); }
button { font: inherit; font-weight: 600; margin-top: 1rem; width: 100%; padding: .75rem; border: 0;
         border-radius: 6px; background: var(--accent); color: #fff; cursor: pointer; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.error { color: var(--error); font-weight: 600; }
.hint { font-size: .875rem; }
.status { padding: .1rem .5rem; border-radius: 1rem; border: 1px solid; font-size: .875rem; }
"""

_TEST_CARDS_HINT = (
    "Test cards: 4242 4242 4242 4242 pays; 4000 0000 0000 0002 is declined; 4000 0000 0000 9995 has "
    "insufficient funds; 4000 0000 0000 0341 pays here but fails later off-session charges; "
    "4000 0025 0000 3155 asks for 3D Secure (taken as passed here). Type async_success or async_failure "
    "for a delayed bank payment."
)
_CHECKOUT_NOTE = (
    '<p class="note" role="note">This is the <strong>local stand-in of Stripe Checkout</strong>: '
    "no real card is charged and no data leaves this machine.</p>"
)
_INVOICE_NOTE = (
    '<p class="note" role="note">This is the <strong>local stand-in of a Stripe hosted invoice</strong>.</p>'
)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"""
    return web.Response(text=text, status=status, content_type="text/html")


def _error_page(status: int, message: str) -> web.Response:
    body = f"""{_CHECKOUT_NOTE}
<h1>Cannot take this payment</h1>
<p class="error" role="alert">{html.escape(message)}</p>"""
    return _page("Payment unavailable", body, status)


def _card_form(
    action: str, button: str, hint: str, error: str | None, card: str | None, extra: str = ""
) -> str:
    """The card number form, with the error (if any) announced and tied to the field."""
    alert = f'<p id="card-error" class="error" role="alert">{html.escape(error)}</p>\n' if error else ""
    describedby = "card-error card-hint" if error else "card-hint"
    invalid = ' aria-invalid="true"' if error else ""
    value = html.escape(card or "4242424242424242")
    return f"""{alert}<form method="post" action="{html.escape(action)}">
{extra}<label for="card">Card number</label>
<input id="card" name="card" inputmode="numeric" autocomplete="cc-number" required
       value="{value}" aria-describedby="{describedby}"{invalid}>
<p id="card-hint" class="hint">{html.escape(hint)}</p>
<button type="submit">{html.escape(button)}</button>
</form>"""


def _rows(cells: list[tuple[str, str]], header: str = "td", value_class: str = "amount") -> str:
    scope = ' scope="row"' if header == "th" else ""
    return "\n".join(
        f"<tr><{header}{scope}>{html.escape(a)}</{header}>"
        f'<td class="{value_class}">{html.escape(b)}</td></tr>'
        for a, b in cells
    )


# ------------------------------------------------------------------ Checkout


def _checkout_page(cs: checkout.CheckoutSession, error: str | None = None, card: str | None = None) -> str:
    items = []
    for p, quantity in cs._prices():
        interval = (p.recurring or {}).get("interval")
        name = billing.product_name(p.product) + (
            f" \N{MULTIPLICATION SIGN} {quantity}" if quantity > 1 else ""
        )
        items.append(
            (name, money(p.unit_amount * quantity, p.currency) + (f" / {interval}" if interval else ""))
        )
    total = money(cs.amount_total, cs.currency)
    verb = "Subscribe" if cs.mode == "subscription" else "Pay"
    email = ""
    if not cs.customer and not cs.customer_email:
        email = (
            '<label for="email">Email</label>\n'
            '<input id="email" name="email" type="email" autocomplete="email" value="customer@example.com">\n'
        )
    form = _card_form(f"/pay/{cs.id}", f"{verb} {total}", _TEST_CARDS_HINT, error, card, email)
    cancel = (
        f'\n<p><a href="{html.escape(cs.cancel_url)}">Cancel and go back</a></p>' if cs.cancel_url else ""
    )
    return f"""{_CHECKOUT_NOTE}
<h1>{verb} {html.escape(total)}</h1>
<table>
<caption class="hint">Order summary</caption>
<thead><tr><th scope="col">Item</th><th scope="col" class="amount">Price</th></tr></thead>
<tbody>{_rows(items)}</tbody>
<tfoot>{_rows([("Total due today", total)], "th")}</tfoot>
</table>
{form}{cancel}"""


async def checkout_get(request: web.Request) -> web.Response:
    try:
        cs = checkout.session(request.match_info["id"])
    except StripeError:
        return _error_page(404, "There is no such Checkout Session.")
    if cs.status == "complete":
        body = f"{_CHECKOUT_NOTE}\n<h1>Payment complete</h1>\n<p>This Checkout Session is already paid.</p>"
        return _page("Payment complete", body)
    if cs.status == "expired":
        return _error_page(410, "This Checkout Session has expired.")
    return _page(f"Pay {money(cs.amount_total, cs.currency)}", _checkout_page(cs))


async def checkout_post(request: web.Request) -> web.StreamResponse:
    try:
        cs = checkout.session(request.match_info["id"])
    except StripeError:
        return _error_page(404, "There is no such Checkout Session.")
    form = await request.post()
    card, email = str(form.get("card", "")), str(form.get("email", "")) or None
    try:
        failure = checkout.pay(cs, card, email)
    except checkout.PageError as exc:
        return _error_page(exc.status, str(exc))
    if failure is not None:
        return _page("Payment declined", _checkout_page(cs, failure.message, card), 402)
    if cs.success_url:
        raise web.HTTPSeeOther(cs.success_url.replace("{CHECKOUT_SESSION_ID}", cs.id))
    body = f"{_CHECKOUT_NOTE}\n<h1>Payment complete</h1>\n<p>Thank you! You can close this page.</p>"
    return _page("Payment complete", body)


# ------------------------------------------------------------------ invoices


def _date(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%B %d, %Y") if ts else "—"


def _invoice_facts(inv: billing.Invoice) -> list[tuple[str, str]]:
    facts = [
        ("Invoice number", inv.number or "draft"),
        ("Status", inv.status),
        ("Date of issue", _date(inv.status_transitions["finalized_at"] or inv.created)),
    ]
    if inv.due_date:
        facts.append(("Date due", _date(inv.due_date)))
    facts.append(
        ("Billed to", " ".join(x for x in (inv.customer_name, inv.customer_email) if x) or inv.customer)
    )
    facts += [(f["name"], f["value"]) for f in inv.custom_fields or ()]
    return facts


def _invoice_html(inv: billing.Invoice, error: str | None = None) -> str:
    facts = _rows(_invoice_facts(inv), "th", "fact")
    lines = "\n".join(
        f"<tr><td>{html.escape(str(line['description'] or ''))}</td>"
        f'<td class="amount">{line["quantity"]}</td>'
        f'<td class="amount">{html.escape(money(line["amount"], inv.currency))}</td></tr>'
        for line in inv.lines["data"]
    )
    totals = _rows(
        [
            ("Total", money(inv.total, inv.currency)),
            ("Amount paid", money(inv.amount_paid, inv.currency)),
            ("Amount remaining", money(inv.amount_remaining, inv.currency)),
        ],
        "th",
    ).replace('scope="row"', 'scope="row" colspan="2"')
    description = f"<p>{html.escape(inv.description)}</p>\n" if inv.description else ""
    pay = ""
    if inv.status == "open":
        due = money(inv.amount_remaining, inv.currency)
        form = _card_form(f"/invoices/{inv.id}", f"Pay {due}", "Any Stripe test card number.", error, None)
        pay = f"\n<h2>Pay this invoice</h2>\n{form}"
    return f"""{_INVOICE_NOTE}
<h1>Invoice {html.escape(inv.number or "")} <span class="status">{html.escape(inv.status)}</span></h1>
{description}<table>
<caption class="hint">Details</caption>
<tbody>{facts}</tbody>
</table>
<table>
<caption class="hint">Items</caption>
<thead><tr><th scope="col">Description</th><th scope="col" class="amount">Qty</th>
<th scope="col" class="amount">Amount</th></tr></thead>
<tbody>{lines}</tbody>
<tfoot>{totals}</tfoot>
</table>
<p><a href="/invoices/{html.escape(inv.id)}.pdf">Download the invoice (PDF)</a></p>{pay}"""


def _pdf(lines: list[str]) -> bytes:
    """A one-page PDF of text lines (Helvetica, WinAnsi): small, but valid and viewable."""

    def escape(text: str) -> str:
        text = text.encode("cp1252", "replace").decode("cp1252")
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 18 Tf", "56 786 Td", f"({escape(lines[0])}) Tj", "/F1 11 Tf", "16 TL", "T*", "T*"]
    ops += [f"({escape(line)}) '" for line in lines[1:]]
    ops.append("ET")
    stream = zlib.compress("\n".join(ops).encode("cp1252"))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def invoice_pdf(inv: billing.Invoice) -> bytes:
    text = [f"Invoice {inv.number}", "Conduix (local Stripe stand-in - not a real invoice)", ""]
    text += [f"{k}: {v}" for k, v in _invoice_facts(inv)]
    if inv.description:
        text += ["", inv.description]
    text.append("")
    for line in inv.lines["data"]:
        text.append(f"{line['description']}   x{line['quantity']}   {money(line['amount'], inv.currency)}")
    text += [
        "",
        f"Total: {money(inv.total, inv.currency)}",
        f"Amount paid: {money(inv.amount_paid, inv.currency)}",
        f"Amount remaining: {money(inv.amount_remaining, inv.currency)}",
    ]
    return _pdf(text)


def _published_invoice(raw_id: str) -> billing.Invoice | None:
    """Only finalized invoices have hosted pages, as in Stripe."""
    try:
        inv = billing.invoice(raw_id)
    except StripeError:
        return None
    return None if inv.status == "draft" else inv


async def invoice_get(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    inv = _published_invoice(raw.removesuffix(".pdf"))
    if inv is None:
        return _page("Invoice not found", "<h1>Invoice not found</h1>", 404)
    if raw.endswith(".pdf"):
        filename = f"Invoice-{inv.number}.pdf"
        return web.Response(
            body=invoice_pdf(inv),
            content_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{filename}"'},
        )
    return _page(f"Invoice {inv.number}", _invoice_html(inv))


async def invoice_post(request: web.Request) -> web.StreamResponse:
    """Pay an open invoice on its hosted page (what a NET-30 customer does)."""
    inv = _published_invoice(request.match_info["id"])
    if inv is None:
        return _page("Invoice not found", "<h1>Invoice not found</h1>", 404)
    if inv.status != "open":
        return _page(f"Invoice {inv.number}", _invoice_html(inv, f"This invoice is {inv.status}."), 409)
    card = "".join(str((await request.post()).get("card", "")).split())
    failure: Failure | None
    if not luhn_ok(card):
        failure = Failure("incorrect_number", None, "Your card number is incorrect.")
    else:
        pm = PaymentMethod(card, billing_details={"email": inv.customer_email, "name": inv.customer_name})
        failure = billing.pay(inv, pm, off_session=False, on_page=True)
    if failure is not None:
        return _page(f"Invoice {inv.number}", _invoice_html(inv, failure.message), 402)
    raise web.HTTPSeeOther(f"/invoices/{inv.id}")


# ------------------------------------------------------------------ local test hooks


async def local_dispute(request: web.Request) -> web.Response:
    params = await api.request_params(request)
    return api.json_response(api.local_dispute(params)._export())


async def local_cycle(request: web.Request) -> web.Response:
    sub = billing.subscription(request.match_info["id"], "subscription")
    inv = billing.cycle(sub)
    return api.json_response({"subscription": sub._export(), "invoice": inv._export() if inv else None})


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> int:
    """An ISO 8601 time with its zone (e.g. 2026-12-01T00:20:00Z) as epoch seconds."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise bad(
            f"Invalid time: {value!r}; use ISO 8601 with a zone, e.g. 2026-12-01T00:20:00Z", "now"
        ) from None
    if parsed.tzinfo is None:
        raise bad("The time needs a zone (Z or +00:00).", "now")
    return int(parsed.timestamp())


async def clock_get(request: web.Request) -> web.Response:
    return api.json_response({"now": _iso(now())})


async def clock_post(request: web.Request) -> web.Response:
    """POST /_local/clock {"now": ISO 8601}: advance the stand-in's time (409 if earlier)."""
    params = await api.request_params(request)
    when = parse_time(params.get("now"))
    if when < now():
        raise StripeError(409, f"The clock can only move forward; it is {_iso(now())}.", param="now")
    events = clock.advance_to(when)
    return api.json_response(
        {"now": _iso(now()), "events": [{"id": e["id"], "type": e["type"]} for e in events]}
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/_local/clock", clock_get)
    router.add_post("/_local/clock", clock_post)
    router.add_get("/pay/{id}", checkout_get)
    router.add_post("/pay/{id}", checkout_post)
    router.add_get("/invoices/{id}", invoice_get)
    router.add_post("/invoices/{id}", invoice_post)
    router.add_post("/_local/disputes", local_dispute)
    router.add_post("/_local/subscriptions/{id}/cycle", local_cycle)
