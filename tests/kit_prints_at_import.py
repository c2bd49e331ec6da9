"""A plugin module that prints when it is imported (for tests/test_contract_kit.py): what
``stylebox status --json`` would print before its JSON, had the CLI not guarded it."""

from __future__ import annotations

from PIL import Image, ImageOps

from stylebox.plugins.api import JobContext, Plugin, PluginParams

print("kit_prints_at_import: hello from the import")


class Params(PluginParams):
    pass


class PrintsAtImport(Plugin[Params]):
    name = "kit_prints_at_import"
    version = "1.0"
    Params = Params

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        return ImageOps.invert(image)
