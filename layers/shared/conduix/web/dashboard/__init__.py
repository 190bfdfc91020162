"""The dashboard pages (/dashboard/billing, /dashboard/usage, /dashboard/settings, /pricing)
and their static assets: plain HTML, one CSS file and a few small scripts, no build step.

The pages hold no data and no secret: the scripts read the JSON API with the org key the user
signs in with (kept in sessionStorage, sent as `Authorization: Bearer`, never in a URL). They
use no inline script, style or event handler, so a strict CSP (`default-src 'self'`) holds.
"""

from __future__ import annotations

import hashlib
import html
from functools import cache
from importlib import resources

# name -> (title, what the page is for, script)
_PAGES: dict[str, tuple[str, str, str]] = {
    "billing": ("Billing", "Balance, top-ups, auto-reload, invoices and the credit ledger.", "billing.js"),
    "usage": ("Usage", "Credits burned per model and per day.", "usage.js"),
    "settings": ("Settings", "Monthly spend cap and API keys.", "settings.js"),
    "pricing": ("Pricing", "Plans, credit top-ups and model prices.", "pricing.js"),
}
# name in the nav -> path from the API's root. Every URL in the pages is relative, so they work
# at the root of a custom domain and under API Gateway's stage URL (…/api/dashboard/billing).
_NAV: tuple[tuple[str, str, str], ...] = (
    ("billing", "Billing", "dashboard/billing"),
    ("usage", "Usage", "dashboard/usage"),
    ("settings", "Settings", "dashboard/settings"),
    ("pricing", "Pricing", "pricing"),
)
# How each page reaches the API's root: /dashboard/<name> is one level down, /pricing is not.
_ROOT = {"billing": "../", "usage": "../", "settings": "../", "pricing": "./"}
_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ASSETS = ("dashboard.css", "common.js", "chart.js", "favicon.svg", *(s for _, _, s in _PAGES.values()))

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# What the routes should send with every page and asset.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def _version(name: str) -> str:
    """A short content hash, so an asset URL changes whenever its file does."""
    return hashlib.sha256(_read(name).encode()).hexdigest()[:10]


def _asset_url(name: str, root: str) -> str:
    return f"{root}dashboard/assets/{name}?v={_version(name)}"


@cache
def page(name: str) -> str | None:
    """The HTML of a dashboard page by name, or None for an unknown name."""
    if name not in _PAGES:
        return None
    title, description, script = _PAGES[name]
    root = _ROOT[name]
    current = ' aria-current="page"'
    nav = "\n".join(
        f'<li><a href="{root}{path}"{current if key == name else ""}>{label}</a></li>'
        for key, label, path in _NAV
    )
    scripts = [_asset_url("common.js", root)]
    if name == "usage":
        scripts.append(_asset_url("chart.js", root))
    scripts.append(_asset_url(script, root))
    replacements = {
        "{{title}}": html.escape(title),
        "{{description}}": html.escape(description),
        "{{page}}": name,
        "{{nav}}": nav,
        "{{css}}": _asset_url("dashboard.css", root),
        "{{icon}}": _asset_url("favicon.svg", root),
        "{{scripts}}": "\n".join(f'<script src="{src}" defer></script>' for src in scripts),
        "{{signin}}": _read("signin.html"),
        "{{content}}": _read(f"{name}.html"),
    }
    text = _read("layout.html")
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text.replace("{{root}}", root)  # last: the page's content uses it too


@cache
def asset(name: str) -> tuple[str, str] | None:
    """(content type, text) of /dashboard/assets/<name>, or None for an unknown name."""
    if name not in _ASSETS:
        return None
    suffix = name[name.rfind(".") :]
    return _TYPES[suffix], _read(name)
