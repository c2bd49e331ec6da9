"""The stylebox contract kit, run against this plugin."""

from typing import Any, ClassVar

from stylebox.testing import PluginContract


class TestPosterizeContract(PluginContract):
    plugin = "posterize"
    params: ClassVar[dict[str, Any]] = {"bits": 2}
    invalid_params: ClassVar[list[dict[str, Any]]] = [{"bits": 0}, {"bits": 9}]
    effective_params: ClassVar[list[dict[str, Any]]] = [{"bits": 4}]
