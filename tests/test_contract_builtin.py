"""The built-in plugins and the example package pass the whole contract kit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

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
    effective_params: ClassVar[list[dict[str, Any]]] = [{"style_weight": 1e4}, {"size": 64}]


class TestFastContract(PluginContract):
    plugin = "fast"
    params: ClassVar[dict[str, Any]] = {"model": "starry_night_small"}
    invalid_params: ClassVar[list[dict[str, Any]]] = [
        {"model": "no_such_model"},
        {"model": "starry_night_small", "strength": 1.5},
        {"model": "starry_night_small", "tile_size": 8},
    ]
    effective_params: ClassVar[list[dict[str, Any]]] = [{"strength": 0.5}]


@pytest.mark.parametrize(
    ("autoload", "extra"),
    [("", []), ("1", ["-p", "stylebox.testing.pytest_plugin"])],
    ids=["pytest11-entry-point", "plugin-autoload-off"],
)
def test_example_package_passes_its_own_tests(autoload: str, extra: list[str]) -> None:
    """stylebox-posterize is installed beside stylebox (make setup) and runs the kit in its
    own test suite, as an outside author would; its own tests use stylebox's pytest
    fixtures, found through the pytest11 entry point or, with autoloading off, ``-p``."""
    package = ROOT / "examples" / "stylebox-posterize"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": autoload}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *extra],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert (
        "PASSED tests/test_contract.py::TestPosterizeContract::test_contract[cancellation]" in out
    )
    assert "PASSED tests/test_posterize.py::test_two_bits_leave_four_levels_per_channel" in out
