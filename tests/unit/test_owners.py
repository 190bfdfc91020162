"""What one module owns: the billing table's keys (conduix.store.schema), and the environment
(conduix.core.config). And no import hides in a function without saying why (a cold start it
keeps small): the import contracts count them, but only a comment says what they are for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conduix.store import schema

PACKAGE = Path(__file__).resolve().parents[2] / "layers" / "shared" / "conduix"
MODULES = sorted(PACKAGE.rglob("*.py"))  # every module of every subpackage
PREFIX = re.compile(r"(?<![A-Za-z_])[A-Z][A-Z_]{2,}#")


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _prefixes_spelled(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    return sorted(
        f"{path.name}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and PREFIX.search(node.value)
    )


@pytest.mark.parametrize("path", [p for p in MODULES if p != PACKAGE / "store" / "schema.py"], ids=str)
def test_no_module_but_schema_spells_a_key_prefix(path: Path) -> None:
    assert _prefixes_spelled(path) == []


def test_the_check_finds_a_spelled_prefix(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""HOLD#<id> in a docstring is fine."""\nKEY = f"HOLD#{1}"\nOTHER = "LEDGER#"\n')
    assert [line.split(": ")[0] for line in _prefixes_spelled(module)] == ["m.py:2", "m.py:3"]


def test_keys_round_trip() -> None:
    assert schema.org_of(schema.org_pk("org_1")) == "org_1"
    assert schema.org_key("org_1", schema.WALLET) == {"pk": {"S": "ORG#org_1"}, "sk": {"S": "WALLET"}}
    prefixes = [v for k, v in vars(schema).items() if k.isupper() and v.endswith("#")]
    assert len(prefixes) == len(set(prefixes))  # no two kinds of item share a prefix
    assert not any(a != b and b.startswith(a) for a in prefixes for b in prefixes)  # nor nest


# ------------------------------------------------------------------ the environment, read in config alone


def _environment_reads(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    return sorted(
        f"{path.name}:{node.lineno}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        and node.attr in ("environ", "getenv", "environb")
        # the one variable the package writes: the X-Ray trace id of the invocation
        and "_X_AMZN_TRACE_ID" not in lines[node.lineno - 1]
    )


@pytest.mark.parametrize("path", [p for p in MODULES if p != PACKAGE / "core" / "config.py"], ids=str)
def test_no_module_but_config_reads_the_environment(path: Path) -> None:
    assert _environment_reads(path) == []


def test_the_check_finds_an_environment_read(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        'import os\nA = os.environ.get("A")\nB = os.getenv("B")\nos.environ["_X_AMZN_TRACE_ID"] = "t"\n'
    )
    assert _environment_reads(module) == ["m.py:2", "m.py:3"]


# ------------------------------------------------------------------ function-level imports say why


def _unexplained_lazy_imports(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import | ast.ImportFrom):
                here, above = lines[inner.lineno - 1], lines[inner.lineno - 2].strip()
                if "#" not in here and not above.startswith("#"):
                    found.append(f"{path.name}:{inner.lineno}")
    return sorted(set(found))


@pytest.mark.parametrize("path", MODULES, ids=str)
def test_a_function_level_import_says_why(path: Path) -> None:
    assert _unexplained_lazy_imports(path) == []


def test_the_check_finds_an_unexplained_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    import json\n\n\ndef g():\n    import csv  # only g's callers pay for it\n\n\n"
        "def h():\n    # rare path\n    import zlib\n"
    )
    assert _unexplained_lazy_imports(module) == ["m.py:2"]
