"""What deploys is what runs: every function built as `sam build` builds it, and every module of
the project's own layer packages imported from the built artifacts alone (no virtualenv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conduix_local.build import Package, build_all
from conduix_local.functions import load_functions
from conduix_local.template import ROOT, load_template, resources_of_type

# Imports every module of the layers' own packages (those with source in the repository), then
# the handler, and reports where each top-level package came from.
_PROBE = r"""
import importlib, json, pkgutil, sys
own, handler = json.loads(sys.argv[1]), sys.argv[2]
imported = []
for name in own:
    pkg = importlib.import_module(name)
    imported.append(name)
    for info in pkgutil.walk_packages(pkg.__path__, name + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
importlib.import_module(handler)
origins = {n: getattr(sys.modules.get(n), "__file__", None) for n in [*own, "boto3", "botocore"]}
print(json.dumps({"imported": imported, "origins": origins, "path": sys.path}))
"""

REFS = {
    "BillingTable": "BillingTable",
    "CacheTable": "CacheTable",
    "OperatorKeySha256": "0" * 64,
    "ScheduledJobFailures.Arn": "arn:aws:sqs:us-east-1:123456789012:ScheduledJobFailures",
    "ProviderKeysSecret": "local:ProviderKeysSecret",
    "StripeApiKeySecret": "local:StripeApiKeySecret",
    "StripeWebhookSigningSecret": "local:StripeWebhookSigningSecret",
    "CursorSigningKey": "k" * 32,
}


@pytest.fixture(scope="module")
def packages() -> dict[str, Package]:
    return build_all(load_template())


def _run_in(
    package: Package, code: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(str(p) for p in package.path),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-S", "-s", "-P", "-c", code, *args],
        cwd=package.code_dir, env=clean, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _own_packages(template: dict[str, Any]) -> list[str]:
    """The packages whose source is in the repository, in the template's layers."""
    names = set()
    for layer in resources_of_type(template, "AWS::Serverless::LayerVersion").values():
        source = ROOT / layer["Properties"]["ContentUri"]
        names |= {p.name for p in source.iterdir() if (p / "__init__.py").exists()}
    assert names
    return sorted(names)


def test_every_function_imports_from_its_built_package_alone(packages: dict[str, Package]) -> None:
    template = load_template()
    specs = {s.logical_id: s for s in load_functions(template, REFS)}
    own = _own_packages(template)
    assert set(packages) == set(specs)
    for logical_id, package in packages.items():
        assert package.layer_dirs, logical_id
        module = specs[logical_id].handler.rpartition(".")[0]
        proc = _run_in(package, _PROBE, json.dumps(own), module, env=specs[logical_id].env)
        assert proc.returncode == 0, f"{logical_id} cannot import from its built package:\n{proc.stderr}"
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert "conduix.payments.stripe_gateway" in report["imported"]
        assert report["origins"]["conduix"].startswith(str(package.layer_dirs[0]))
        assert report["origins"]["boto3"].startswith(str(package.runtime_dir))
        assert not [p for p in report["path"] if "site-packages" in p or ".venv" in p], report["path"]


def test_a_package_the_layer_lacks_is_missing_as_in_aws(packages: dict[str, Package]) -> None:
    package = packages["CompletionFunction"]
    for module in ("moto", "pytest", "conduix_local"):  # all in the development virtualenv
        proc = _run_in(package, f"import {module}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, module


def test_builds_are_cached_and_follow_the_sources(
    packages: dict[str, Package], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conduix_local import build

    monkeypatch.setattr(build, "BUILD_ROOT", tmp_path / "build")
    source = tmp_path / "fn"
    source.mkdir()
    (source / "app.py").write_text("X = 1\n")
    first = build.build_function("Fn", source)
    stamp = (first / ".conduix-build-stamp").stat().st_mtime_ns
    assert build.build_function("Fn", source) == first
    assert (first / ".conduix-build-stamp").stat().st_mtime_ns == stamp  # unchanged: not rebuilt
    (source / "app.py").write_text("X = 2\n")
    assert (build.build_function("Fn", source) / "app.py").read_text() == "X = 2\n"
