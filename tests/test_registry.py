from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import broken_plugins_site, installed_site
from PIL import Image

from stylebox.config import parse_config
from stylebox.errors import ConfigError
from stylebox.plugins.api import JobContext, Plugin, PluginParams
from stylebox.plugins.gatys import GatysPlugin
from stylebox.plugins.registry import contract_problem, discover


class Good(Plugin):
    name = "good"

    class Params(PluginParams):
        level: int = 1

    def process(self, image: Image.Image, job: JobContext) -> Image.Image:
        return image


class Unfinished(Plugin):
    name = "unfinished"
    Params = Good.Params


def test_contract_shape_checks() -> None:
    assert contract_problem("good", Good) is None
    assert "declares name 'good'" in str(contract_problem("other", Good))
    assert "not a subclass" in str(contract_problem("x", object()))
    assert "does not implement process" in str(contract_problem("unfinished", Unfinished))


def test_builtin_gatys_is_discovered() -> None:
    registry = discover()
    assert registry.get("gatys") is GatysPlugin
    assert registry.plugins["gatys"].version


def test_broken_plugins_are_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(broken_plugins_site(tmp_path)))
    registry = discover()
    assert "gatys" in registry.plugins
    assert "no GPU driver here" in registry.failures["explodes"].reason
    assert "not a pydantic model" in registry.failures["notmodel"].reason
    with pytest.raises(ConfigError, match=r"plugin 'explodes'.*failed to load"):
        registry.get("explodes")
    assert "raises" in registry.plugins  # its fault shows only when it runs
    # An installed but broken plugin disables its inbox; a misspelt one refuses the config.
    data = {"inbox": [{"name": "a", "path": "in", "outbox": "out", "plugin": "explodes"}]}
    loaded = parse_config(data, registry=registry)
    assert "no GPU driver here" in loaded.unavailable[("inbox", "a")]
    with pytest.raises(ConfigError, match=r"\[\[inbox\]\] 'a' is disabled: plugin 'explodes'"):
        loaded.params_for("inbox", "a")
    data["inbox"][0]["plugin"] = "explode"
    with pytest.raises(ConfigError, match=r"\[\[inbox\]\] #1 \(a\)\.plugin: no plugin named"):
        parse_config(data, registry=registry)


def test_a_plugin_already_loaded_keeps_its_code_until_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the README says of SIGHUP: it loads a plugin that failed to import before,
    but one already imported keeps the code it was loaded with (Python caches modules)."""
    source = (
        "from stylebox.plugins.api import Plugin, PluginParams\n\n"
        "class Versioned(Plugin):\n"
        "    name = 'versioned'\n"
        "    version = '1'\n"
        "    Params = PluginParams\n\n"
        "    def process(self, image, job):\n"
        "        return image\n"
    )
    site = installed_site(
        tmp_path,
        "versioned",
        "[stylebox.plugins]\nversioned = versioned_plugin:Versioned\n",
        {"versioned_plugin.py": source},
    )
    monkeypatch.syspath_prepend(str(site))
    try:
        assert discover().plugins["versioned"].version == "1"
        (site / "versioned_plugin.py").write_text(source.replace("'1'", "'2'"))
        assert discover().plugins["versioned"].version == "1"  # as a reload would see it
    finally:
        sys.modules.pop("versioned_plugin", None)
