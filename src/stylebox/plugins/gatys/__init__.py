"""The ``gatys`` plugin: the iterative Gatys et al. optimiser."""

from stylebox.plugins.gatys.params import GatysParams
from stylebox.plugins.gatys.plugin import GatysPlugin

__all__ = ["GatysParams", "GatysPlugin"]
