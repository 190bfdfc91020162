"""The dashboard package without a browser: every page and asset resolves, and nothing in them
needs a CSP exception (no inline script, style or event handler) or writes HTML from data."""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from conduix.web import dashboard

PAGES = ("billing", "usage", "settings", "pricing")


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.inline_script = True


def _parse(name: str) -> _Collect:
    text = dashboard.page(name)
    assert text is not None
    parser = _Collect()
    parser.feed(text)
    return parser


@pytest.mark.parametrize("name", PAGES)
def test_a_page_needs_no_csp_exception(name: str) -> None:
    parsed = _parse(name)
    assert not parsed.inline_script
    for tag, attrs in parsed.tags:
        assert tag != "style", "inline <style>"
        assert "style" not in attrs, f"style attribute on <{tag}>"
        assert not [a for a in attrs if a.startswith("on")], f"inline handler on <{tag}>"
        if tag == "script":
            assert attrs.get("src"), "a script without src"


# The pages are served at the root of a custom domain and under API Gateway's stage URL.
ROOTS = ("https://billing.example.com/", "https://abc123.execute-api.us-east-1.amazonaws.com/api/")


def _page_url(root: str, name: str) -> str:
    return root + ("pricing" if name == "pricing" else f"dashboard/{name}")


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("name", PAGES)
def test_every_asset_and_link_of_a_page_resolves_under_its_root(name: str, root: str) -> None:
    parsed = _parse(name)
    urls = [a.get("src") or a.get("href") for t, a in parsed.tags if t in ("script", "link")]
    assert len(urls) >= 3
    for url in urls:
        assert url
        parts = urlsplit(urljoin(_page_url(root, name), url))
        assert parts.geturl().startswith(root + "dashboard/assets/") and parts.query.startswith("v=")
        found = dashboard.asset(parts.path.rsplit("/", 1)[1])
        assert found is not None, url
    links = [a["href"] for t, a in parsed.tags if t == "a" and a.get("href", "").startswith(("/", "."))]
    pages = {_page_url(root, n) for n in PAGES}
    assert links and all(urljoin(_page_url(root, name), link) in pages for link in links), links


def test_no_dashboard_file_uses_an_absolute_path() -> None:
    """Absolute paths miss the stage prefix: /dashboard/... under …/api/ would 404."""
    folder = Path(dashboard.__file__).parent
    absolute = re.compile(
        r"""(?:href|src|action)\s*=\s*["']/[^/]|["'`]/(?:v1|dashboard|pricing|admin|webhooks)\b"""
    )
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(folder.iterdir())
        if path.suffix in (".html", ".js", ".css", ".py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if absolute.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize("name", PAGES)
def test_ids_are_unique_and_every_field_has_a_label(name: str) -> None:
    parsed = _parse(name)
    ids = Counter(a["id"] for _, a in parsed.tags if a.get("id"))
    assert [i for i, n in ids.items() if n > 1] == []
    labelled = {a.get("for") for t, a in parsed.tags if t == "label"}
    for tag, attrs in parsed.tags:
        if tag == "input" and attrs.get("type") != "checkbox":
            assert attrs.get("id") in labelled or attrs.get("aria-label"), f"unlabelled input {attrs}"
    nav = [a for t, a in parsed.tags if t == "a" and a.get("aria-current") == "page"]
    assert len(nav) == 1


def test_unknown_pages_and_assets_are_none() -> None:
    assert dashboard.page("admin") is None
    assert dashboard.page("../billing") is None
    assert dashboard.asset("__init__.py") is None
    assert dashboard.asset("../models.default.json") is None
    assert dashboard.asset("layout.html") is None  # a template, not an asset


def test_assets_have_their_content_types() -> None:
    types = {
        name: (dashboard.asset(name) or ("missing", ""))[0]
        for name in ("dashboard.css", "common.js", "favicon.svg")
    }
    assert types == {
        "dashboard.css": "text/css; charset=utf-8",
        "common.js": "text/javascript; charset=utf-8",
        "favicon.svg": "image/svg+xml",
    }


@pytest.mark.parametrize(
    "script", ["common.js", "chart.js", "billing.js", "usage.js", "settings.js", "pricing.js"]
)
def test_scripts_build_the_dom_from_text_and_log_nothing(script: str) -> None:
    found = dashboard.asset(script)
    assert found is not None
    text = found[1]
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "console."):
        assert banned not in text, f"{script} uses {banned}"
    assert not re.search(r"parseFloat|Number\(\s*[a-z.]*(balance|amount|credits)", text), "money as a float"
    assert "localStorage" not in text  # the key lives for the tab only (sessionStorage)
