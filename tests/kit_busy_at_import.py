"""A plugin module that, when imported with ``$KIT_BUSY_AT_IMPORT`` set to a folder, writes
a file there, reaches for the network, starts a program and changes the working directory
(for tests/test_contract_kit.py): the daemon imports every plugin, outside any job."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

from PIL import Image, ImageOps

from stylebox.plugins.api import JobContext, Plugin, PluginParams

if os.environ.get("KIT_BUSY_AT_IMPORT"):
    folder = Path(os.environ["KIT_BUSY_AT_IMPORT"])
    (folder / "imported.txt").write_text("imported")
    with contextlib.suppress(OSError):  # the discard port on this machine: refused
        socket.create_connection(("127.0.0.1", 9), timeout=0.2).close()
    subprocess.run(["true"], check=True)
    os.chdir(folder)


class Params(PluginParams):
    pass


class BusyAtImport(Plugin[Params]):
    name = "kit_busy_at_import"
    version = "1.0"
    Params = Params

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        job.progress(1, 1)
        return ImageOps.invert(image)
