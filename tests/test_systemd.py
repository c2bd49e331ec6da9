"""The unit files pass systemd's own checks: no warning at all, and a hardening gate.

`systemd-analyze security --threshold` counts on a 0-100 scale: 10 means an exposure
level of at most 1.0 ("SAFE").
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = ("stylebox.service", "stylebox-batch@.service", "stylebox-batch@.timer")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this checkout's stylebox, so verify can see it."""
    executable = Path(sys.executable).parent / "stylebox"
    assert executable.exists()
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text()
        (tmp_path / name).write_text(
            text.replace("/opt/stylebox/.venv/bin/stylebox", str(executable))
        )
    return tmp_path


def test_units_verify_without_any_output(units: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", "stylebox.service", "stylebox-batch@nightly.service",
         "stylebox-batch@nightly.timer"],
        cwd=units, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout + result.stderr == ""  # warnings exit 0 too: any output fails


def test_service_hardening_passes_the_gate(units: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=10", "stylebox.service"],
        cwd=units, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Overall exposure level" in result.stdout


def test_units_say_what_the_design_asks() -> None:
    service = (REPO / "systemd" / "stylebox.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=stylebox",
                 "ProtectSystem=strict", "ReadWritePaths=", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
                 "DeviceAllow=", "ExecReload="):  # fmt: skip
        assert line in service, line
    assert "PrivateDevices=yes" not in service
    timer = (REPO / "systemd" / "stylebox-batch@.timer").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer
    batch = (REPO / "systemd" / "stylebox-batch@.service").read_text()
    assert "stylebox batch %i" in batch and "SuccessExitStatus=130" in batch
