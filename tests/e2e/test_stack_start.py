"""`make run` refuses to start on a bad setup, says why, and leaves nothing running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.stack import ROOT

pytestmark = pytest.mark.e2e


def run_stack(env: dict[str, str]) -> tuple[int, str]:
    process = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    output, _ = process.communicate(timeout=120)
    with pytest.raises(ProcessLookupError):  # nothing of its process group is left
        os.killpg(process.pid, 0)
    return process.returncode, output


def test_an_invalid_catalog_stops_the_start_naming_entry_and_field(tmp_path: Path) -> None:
    catalog = tmp_path / "models.json"
    catalog.write_text(
        json.dumps(
            [
                {
                    "id": "acme/fast",
                    "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": "fast-1"},
                    "pricing": {"input_per_million": "cheap", "output_per_million": "0.60"},
                }
            ]
        )
    )
    code, output = run_stack({"PORT": "0", "CONDUIX_MODELS_FILE": str(catalog)})
    assert code != 0
    assert "entry 'acme/fast': field 'pricing.input_per_million' is not a decimal number" in output


def test_a_port_in_use_stops_the_start_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_stack({"PORT": str(port)})
    assert code != 0
    assert f"Port {port} on 127.0.0.1 is in use" in output
