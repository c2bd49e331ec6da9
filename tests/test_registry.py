from __future__ import annotations

from pathlib import Path

import pytest
from conftest import broken_plugins_site
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
