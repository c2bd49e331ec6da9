"""An example stylebox plugin, written against the public plugin API only."""

from __future__ import annotations

from PIL import Image, ImageOps
from pydantic import ConfigDict, Field

from stylebox.plugins.api import Capabilities, JobContext, Plugin, PluginParams


class PosterizeParams(PluginParams):
    model_config = ConfigDict(strict=True)  # bits = "3" in a config is refused, not converted

    bits: int = Field(3, ge=1, le=8, description="Bits kept per colour channel")
    autocontrast: bool = Field(True, description="Stretch the contrast first")


class Posterize(Plugin[PosterizeParams]):
    """Reduce each channel to 2**bits levels: a flat, screen-printed look."""

    name = "posterize"
    version = "1.0.0"
    description = "Posterize to a few levels per channel"
    Params = PosterizeParams
    capabilities = Capabilities(deterministic=True)

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        if self.params.autocontrast:
            image = ImageOps.autocontrast(image)
        result = ImageOps.posterize(image.convert("RGB"), self.params.bits)
        job.progress(1, 1)
        return result
