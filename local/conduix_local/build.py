"""Builds what deploys, as `sam build` builds it, so the local stack runs that and nothing else.

Each function's deployment package is three folders, put on PYTHONPATH in Lambda's order:
  - its CodeUri folder (Lambda's /var/task), with its requirements.txt installed into it if any;
  - each of its layers' `python/` folder (/opt/python): `pip install -r requirements.txt
    --target python/` plus a copy of the layer's source (SAM's `BuildMethod: python3.x`);
  - the runtime's boto3 (LAMBDA_RUNTIME_BOTO3), alone in a folder of its own.
Workers run with `python -S -s -P`, so the development virtualenv is never on sys.path: a module
importing a package its layer lacks fails here as it would in AWS.

Builds live under .aws-sam/conduix-local/ (ignored by git). Each artifact is stamped with a hash
of what it is built from (sources, requirements, interpreter), and rebuilt only when that
changes. pip downloads are kept in pip's cache, so a rebuild works offline once a version has
been installed. A file lock lets two stacks (or a stack and the tests) build at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conduix_local.template import ROOT, resources_of_type

BUILD_ROOT = ROOT / ".aws-sam" / "conduix-local"
# The SDK the Lambda Python runtime ships (it varies by region and date; this is a recent one).
# A function that needs a newer boto3 must vendor it, as in AWS.
LAMBDA_RUNTIME_BOTO3 = os.environ.get("CONDUIX_LOCAL_RUNTIME_BOTO3", "boto3==1.40.4")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache")


class BuildError(Exception):
    """A build step failed; the message names the artifact and pip's complaint."""


@dataclass(frozen=True)
class Package:
    """One function's deployment package, in sys.path order."""

    code_dir: Path
    layer_dirs: tuple[Path, ...]
    runtime_dir: Path

    @property
    def path(self) -> list[Path]:
        return [self.code_dir, *self.layer_dirs, self.runtime_dir]


def _interpreter_tag() -> str:
    return f"{sys.implementation.cache_tag}-{sys.platform}-{os.uname().machine}"


def _hash_tree(root: Path, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextmanager
def _locked(name: str) -> Iterator[None]:
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pip_install(args: list[str], target: Path, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", "--target", str(target), *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"building {what}: pip install failed:\n{proc.stderr.strip()[-2000:]}")


def _build_once(kind: str, name: str, stamp: str, fill: Any) -> Path:
    """BUILD_ROOT/kind/name, rebuilt by `fill(tmp_dir)` unless its stamp already matches."""
    final = BUILD_ROOT / kind / name
    with _locked(f"{kind}-{name}"):
        stamp_file = final / ".conduix-build-stamp"
        if stamp_file.exists() and stamp_file.read_text() == stamp:
            return final
        tmp = final.with_name(f".{name}.{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
            fill(tmp)
            (tmp / ".conduix-build-stamp").write_text(stamp)
            if final.exists():
                old = final.with_name(f".{name}.old.{uuid.uuid4().hex[:8]}")
                final.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_runtime() -> Path:
    """The runtime's boto3, in a folder of its own."""

    def fill(tmp: Path) -> None:
        _pip_install([LAMBDA_RUNTIME_BOTO3], tmp, f"the runtime's {LAMBDA_RUNTIME_BOTO3}")

    return _build_once("runtime", "boto3", f"{LAMBDA_RUNTIME_BOTO3}|{_interpreter_tag()}", fill)


def build_layer(logical_id: str, content_dir: Path) -> Path:
    """A layer's `python/` folder: its requirements, then its source, as SAM's python builder."""
    requirements = content_dir / "requirements.txt"
    req_text = requirements.read_text() if requirements.exists() else ""
    deps_stamp = hashlib.sha256(f"{req_text}|{_interpreter_tag()}".encode()).hexdigest()[:16]

    def fill_deps(tmp: Path) -> None:
        if req_text.strip():
            _pip_install(["-r", str(requirements)], tmp, f"layer {logical_id}")

    # The requirements change rarely; installing them is the slow part, so it is cached apart
    # from the source and linked (not copied) into the layer.
    deps = _build_once("deps", deps_stamp, deps_stamp, fill_deps)

    def fill_layer(tmp: Path) -> None:
        python = tmp / "python"
        shutil.copytree(deps, python, copy_function=os.link, ignore=shutil.ignore_patterns(".conduix-*"))
        shutil.copytree(content_dir, python, dirs_exist_ok=True, ignore=_IGNORED)

    stamp = _hash_tree(content_dir, deps_stamp)
    return _build_once("layers", logical_id, stamp, fill_layer) / "python"


def build_function(logical_id: str, code_dir: Path) -> Path:
    """The function's folder as deployed: its source, plus its own requirements if it has any."""
    requirements = code_dir / "requirements.txt"

    def fill(tmp: Path) -> None:
        shutil.copytree(code_dir, tmp, dirs_exist_ok=True, ignore=_IGNORED)
        if requirements.exists() and requirements.read_text().strip():
            _pip_install(["-r", str(requirements)], tmp, f"function {logical_id}")

    return _build_once("functions", logical_id, _hash_tree(code_dir, _interpreter_tag()), fill)


def _layer_refs(value: Any) -> list[str]:
    refs = []
    for item in value or []:
        if isinstance(item, dict) and "Ref" in item:
            refs.append(str(item["Ref"]))
        else:
            raise BuildError(f"only layers of this template (!Ref) can be built locally, not {item!r}")
    return refs


def build_all(template: dict[str, Any], base_dir: Path = ROOT) -> dict[str, Package]:
    """Every function of the template, built; logical id -> its package."""
    runtime = build_runtime()
    layers: dict[str, Path] = {}
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::LayerVersion").items():
        props = resource.get("Properties") or {}
        method = str((resource.get("Metadata") or {}).get("BuildMethod", ""))
        if not method.startswith("python"):
            raise BuildError(f"{logical_id}: BuildMethod {method!r} cannot be built locally")
        layers[logical_id] = build_layer(logical_id, (base_dir / str(props["ContentUri"])).resolve())
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    packages = {}
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        props = resource.get("Properties") or {}
        code_uri = props.get("CodeUri", globals_fn.get("CodeUri"))
        wanted = _layer_refs(globals_fn.get("Layers")) + _layer_refs(props.get("Layers"))
        missing = [name for name in wanted if name not in layers]
        if missing:
            raise BuildError(f"{logical_id}: unknown layer {missing[0]}")
        packages[logical_id] = Package(
            build_function(logical_id, (base_dir / str(code_uri)).resolve()),
            tuple(layers[name] for name in wanted),
            runtime,
        )
    return packages
