"""Testing plugins: the contract kit, a recording job context and sample images.

``PluginContract`` (the pytest base class) is imported lazily so that this package works
without pytest installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stylebox.testing.checks import (
    CHECKS,
    SAMPLE_KINDS,
    Check,
    CheckResult,
    ContractCase,
    ContractFailure,
    ContractReport,
    ContractWarning,
    check_plugin,
    sample_image,
)
from stylebox.testing.context import RecordingContext

if TYPE_CHECKING:
    from stylebox.testing.contract import PluginContract

__all__ = [
    "CHECKS",
    "SAMPLE_KINDS",
    "Check",
    "CheckResult",
    "ContractCase",
    "ContractFailure",
    "ContractReport",
    "ContractWarning",
    "PluginContract",
    "RecordingContext",
    "check_plugin",
    "sample_image",
]


def __getattr__(name: str) -> Any:
    if name == "PluginContract":
        from stylebox.testing.contract import PluginContract

        return PluginContract
    raise AttributeError(f"module 'stylebox.testing' has no attribute {name!r}")
