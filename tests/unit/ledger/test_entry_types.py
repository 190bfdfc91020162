"""The ledger's type filter knows every kind of entry the product writes."""

from __future__ import annotations

import re
from pathlib import Path

from conduix.ledger import statements

PACKAGE = Path(statements.__file__).parents[1]


def test_every_kind_written_to_the_ledger_is_a_listed_entry_type() -> None:
    written = set()
    for module in PACKAGE.rglob("*.py"):
        written |= set(re.findall(r'kind="([a-z_]+)"', module.read_text()))
    written |= {"refund", "dispute"}  # passed as values of `kind` in payments._reverse
    assert written, "no ledger kinds found: the pattern is stale"
    assert written <= set(statements.ENTRY_TYPES), written - set(statements.ENTRY_TYPES)


def test_the_billing_page_offers_every_entry_type_as_a_filter() -> None:
    page = (PACKAGE / "web" / "dashboard" / "billing.html").read_text()
    select = page[page.index('<select id="ledger-type"') : page.index("</select>")]
    offered = re.findall(r'<option value="([a-z_]*)"', select)
    assert offered == ["", *statements.ENTRY_TYPES]
