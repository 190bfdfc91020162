"""docs/benchmarks.md is written by several benchmarks, each owning sections of its own:
`bench.run` writes the report and keeps the others' sections (`KEPT`), which `make load`,
`bench.ttft` and `bench.hot_org` replace in place."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks.md"
LOAD_SECTION = "## The local stack as its books grow"
HOT_ORG_SECTION = "## One hot org at 2,000 billed requests a second (simulated)"
KEPT = (HOT_ORG_SECTION, LOAD_SECTION)  # sections bench.run leaves to their own benchmark


def keep_section(text: str, title: str) -> str:
    """The section `title` of a report, up to the next section ("" if it has none)."""
    if title not in text:
        return ""
    after = text.partition(title)[2]
    rest = after.split("\n## ", 1)
    return title + rest[0] + ("\n" if len(rest) > 1 else "")


def write_section(out: Path, section: str, title: str) -> None:
    """Replace the section `title` of the report (or append it), leaving the others alone."""
    text = out.read_text(encoding="utf-8") if out.exists() else "# Benchmarks\n\n"
    kept = keep_section(text, title)
    if kept:
        before, _, after = text.partition(kept)
        text = before + section.rstrip("\n") + ("\n\n" + after if after else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.write_text(text, encoding="utf-8")
