"""stylebox's pytest plugin: fixtures for testing plugins, loaded automatically through the
``pytest11`` entry point (or with ``pytest -p stylebox.testing.pytest_plugin`` where plugin
autoloading is off)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from PIL import Image

from stylebox.plugins.api import Runtime
from stylebox.plugins.registry import GROUP
from stylebox.testing.checks import sample_image
from stylebox.testing.context import RecordingContext


def pytest_report_header() -> str:
    names = sorted(ep.name for ep in entry_points(group=GROUP))
    return f"stylebox plugins installed: {', '.join(names) or 'none'}"


@pytest.fixture
def stylebox_runtime(tmp_path: Path) -> Runtime:
    """A CPU runtime whose state (caches) lives in the test's temporary folder."""
    return Runtime(device="cpu", state_dir=tmp_path / "stylebox-state")


@pytest.fixture
def stylebox_context(tmp_path: Path) -> RecordingContext:
    """A job context that records progress, snapshots and notes."""
    return RecordingContext(tmp_path / "stylebox-checkpoint")


@pytest.fixture
def stylebox_image() -> Callable[..., Image.Image]:
    """``stylebox_image((w, h), kind="gradient", seed=0)``: a reproducible RGB picture."""
    return sample_image
