"""The built-in plugins and the example package pass the whole contract kit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

from stylebox.testing import PluginContract

ROOT = Path(__file__).resolve().parents[1]


class TestGatysContract(PluginContract):
    plugin = "gatys"
    params: ClassVar[dict[str, Any]] = {
        "style": ["starry_night"],
        "size": 48,
        "style_scale": 0.5,
        "steps": 3,
        "snapshot_every": 1,
    }
    long_params: ClassVar[dict[str, Any]] = {**params, "steps": 100_000}
    invalid_params: ClassVar[list[dict[str, Any]]] = [
        {**params, "style_layers": {"relu9_9": 1.0}},
        {**params, "scales": [96]},
        {**params, "precision": "fp8"},
    ]


class TestFastContract(PluginContract):
    plugin = "fast"
    params: ClassVar[dict[str, Any]] = {"model": "starry_night_small"}
    invalid_params: ClassVar[list[dict[str, Any]]] = [
        {"model": "no_such_model"},
        {"model": "starry_night_small", "strength": 1.5},
        {"model": "starry_night_small", "tile_size": 8},
    ]


def test_example_package_passes_its_own_tests() -> None:
    """stylebox-posterize is installed beside stylebox (make setup) and runs the kit in its
    own test suite, as an outside author would."""
    package = ROOT / "examples" / "stylebox-posterize"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package)],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "passed" in completed.stdout
    assert "test_contract[writes_only_where_given] PASSED" in completed.stdout or "failed" not in (
        completed.stdout
    )
