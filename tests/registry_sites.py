"""Installed-looking distributions whose plugin names clash: two packages registering one
name, a package registering a built-in's name, and one whose class names itself otherwise.
Put the returned folders on sys.path (or PYTHONPATH) to make them discoverable."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import installed_site

#: Both rival ``pencil`` registrations, as the registry names them (by package, whatever
#: sys.path's order).
BOTH_PENCILS = (
    "pencil2:OtherPencil from pencil2 1.0 and stylebox_pencil:Pencil from stylebox-pencil 1.0"
)
PENCIL_CLASH = (
    "pencil2 and stylebox-pencil both register this name, so neither is loaded: uninstall "
    "one, or rename the entry point and its class's name in the other"
)
#: What the registry says of a package that registers the built-in name ``gatys``.
ROGUE_IGNORED = (
    "plugin entry point 'gatys' (rogue_gatys:RogueGatys from rogue-gatys 1.0) is ignored: "
    "'gatys' is the name of a built-in plugin, which keeps it; rename this entry point and "
    "its class's name"
)


#: The modules the sites below provide: a test that imports them forgets them afterwards,
#: since each test's sites are new folders.
MODULES = ("stylebox_pencil", "pencil2", "rogue_gatys", "stylebox_pen")


def plugin_module(cls_name: str, name: str) -> str:
    """The source of a module with a minimal plugin ``cls_name`` that calls itself ``name``."""
    return (
        "from stylebox.plugins.api import Plugin, PluginParams\n\n"
        f"class {cls_name}(Plugin):\n"
        f"    name = {name!r}\n"
        "    version = '1.0'\n"
        "    Params = PluginParams\n\n"
        "    def process(self, image, job):\n"
        "        job.progress(1, 1)\n"
        "        return image.copy()\n"
    )


def rival_pencil_sites(folder: Path) -> list[Path]:
    """``stylebox-pencil`` and ``pencil2``, each registering a plugin named ``pencil``."""
    return [
        installed_site(
            folder,
            "stylebox-pencil",
            "[stylebox.plugins]\npencil = stylebox_pencil:Pencil\n",
            {"stylebox_pencil.py": plugin_module("Pencil", "pencil")},
        ),
        installed_site(
            folder,
            "pencil2",
            "[stylebox.plugins]\npencil = pencil2:OtherPencil\n",
            {"pencil2.py": plugin_module("OtherPencil", "pencil")},
        ),
    ]


def rogue_gatys_site(folder: Path) -> Path:
    """``rogue-gatys``, registering a plugin under the built-in name ``gatys``."""
    return installed_site(
        folder,
        "rogue-gatys",
        "[stylebox.plugins]\ngatys = rogue_gatys:RogueGatys\n",
        {"rogue_gatys.py": plugin_module("RogueGatys", "gatys")},
    )


def misnamed_site(folder: Path) -> Path:
    """``stylebox-pen``: entry point ``pen``, whose class calls itself ``pencil``."""
    return installed_site(
        folder,
        "stylebox-pen",
        "[stylebox.plugins]\npen = stylebox_pen:Pen\n",
        {"stylebox_pen.py": plugin_module("Pen", "pencil")},
    )


def forget_modules() -> None:
    for module in MODULES:
        sys.modules.pop(module, None)
