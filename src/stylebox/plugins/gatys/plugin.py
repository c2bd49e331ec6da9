"""The ``gatys`` plugin: iterative neural style transfer by optimising the pixels.

This module is what the registry imports to read the plugin's name, params and
capabilities, so it stays light: PyTorch and VGG19 load only when an instance is made
(``stylebox status`` and ``config check`` never pay for them). The optimiser itself is
:mod:`stylebox.plugins.gatys.engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from stylebox import __version__
from stylebox.digests import file_digest
from stylebox.images import fit_within
from stylebox.plugins.api import Capabilities, JobContext, Plugin, Runtime
from stylebox.plugins.gatys.params import GatysParams
from stylebox.plugins.gatys.style_files import read_style_files

if TYPE_CHECKING:
    from stylebox.plugins.gatys.engine import Engine


class GatysPlugin(Plugin[GatysParams]):
    """Gatys et al. style transfer: VGG19 content + Gram style + TV losses, L-BFGS or Adam."""

    name = "gatys"
    version = __version__
    description = "Iterative Gatys optimiser (VGG19, L-BFGS/Adam), with per-step snapshots"
    Params = GatysParams
    capabilities = Capabilities(deterministic=True, snapshots=True, batching=True)

    @classmethod
    def check(cls, params: Any, runtime: Runtime) -> None:
        """The style images, style masks and start image read and checked, as the plugin's
        start does, and the device: PyTorch is asked only where it can refuse it (a CUDA
        device named, or bf16)."""
        read_style_files(params)
        device = params.device or runtime.device
        if device.startswith("cuda") or params.precision == "bf16":
            from stylebox.plugins.gatys.engine import compute_device

            compute_device(params, runtime)

    def __init__(self, params: GatysParams, runtime: Runtime) -> None:
        super().__init__(params, runtime)
        from stylebox.plugins.gatys.engine import Engine

        self.engine: Engine = Engine(params, runtime)  # refuses missing or bad files first
        self._digests = _file_digests(params)
        self.device: Any = self.engine.device
        """The torch device jobs run on."""
        if self.device.type != "cuda":
            # On the CPU one image already fills the cores, so a batch is no faster, and
            # its jobs would all wait for the slowest: the daemon hands this instance one
            # job at a time (process_batch still works, batched, when called).
            self.capabilities = replace(type(self).capabilities, batching=False)

    @property
    def identity(self) -> str:
        """The style images', style masks' and VGG19 weights' digests: a painting replaced
        in place makes new jobs, not duplicates of results made with the old one."""
        facts = {**self._digests, "backbone": self.engine.backbone_id}
        return ";".join(f"{name}={digest}" for name, digest in sorted(facts.items()))

    def outdated(self) -> bool:
        try:
            return _file_digests(self.params) != self._digests
        except OSError:  # a file gone: a new instance says what is missing
            return True

    @property
    def device_kind(self) -> Literal["cpu", "cuda"]:
        return "cuda" if self.device.type == "cuda" else "cpu"

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return fit_within(size, self.params.size)

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        return self.engine.process(image, job)

    def process_batch(
        self, images: Sequence[Image.Image], jobs: Sequence[JobContext]
    ) -> list[Image.Image]:
        """Same-size photos optimised together (see ``Engine.process_many``); a job that
        is stopped or fails alone gets its error in its place in the list."""
        return self.engine.process_many(images, jobs)  # type: ignore[return-value]


def _file_digests(params: GatysParams) -> dict[str, str]:
    files = {f"style{index}": path for index, path in enumerate(params.style)}
    for index, mask in enumerate(params.style_mask or []):
        if mask is not None:
            files[f"style_mask{index}"] = mask
    if isinstance(params.init, Path):
        files["init"] = params.init
    return {name: file_digest(path) for name, path in files.items()}
