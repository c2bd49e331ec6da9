"""stylebox's pytest plugin: fixtures for testing plugins, loaded automatically through the
``pytest11`` entry point (or with ``pytest -p stylebox.testing.pytest_plugin`` where plugin
autoloading is off)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from PIL import Image

from stylebox.plugins.api import Runtime
from stylebox.plugins.registry import GROUP
from stylebox.testing.checks import left_running, sample_image
from stylebox.testing.context import RecordingContext

_exit_status = 0


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After the summary: where a plugin under test left a non-daemon thread running
    (its threads_stopped check failed), exit without waiting for it, as the interpreter
    would for good."""
    stuck = [thread for thread in left_running if thread.is_alive()]
    if not stuck:
        return
    names = ", ".join(sorted({thread.name for thread in stuck}))
    sys.stdout.flush()
    sys.stderr.write(
        f"stylebox contract kit: exiting without waiting for {len(stuck)} thread(s) a plugin "
        f"left running ({names}; see its threads_stopped failure)\n"
    )
    sys.stderr.flush()
    os._exit(_exit_status)


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
