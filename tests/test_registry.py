from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import broken_plugins_site, installed_site
from PIL import Image
from registry_sites import (
    BOTH_PENCILS,
    PENCIL_CLASH,
    ROGUE_IGNORED,
    forget_modules,
    rival_pencil_sites,
    rogue_gatys_site,
)

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
    assert str(contract_problem("other", Good)) == (
        "class Good declares name 'good' but is registered as 'other'; make Good.name and "
        "the entry point name the same"
    )
    assert "not a subclass" in str(contract_problem("x", object()))
    assert "does not implement process" in str(contract_problem("unfinished", Unfinished))


def test_builtin_gatys_is_discovered() -> None:
    registry = discover()
    assert registry.get("gatys") is GatysPlugin
    assert registry.plugins["gatys"].version


def test_a_misspelt_plugin_name_gets_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "no plugin named 'gatis' is installed (installed: fast, gatys)", and for a package
    # whose entry point sat in a misspelt group, the same line and no hint at all.
    site = installed_site(
        tmp_path,
        "stylebox-sepia",
        "[stylebox.plugin]\nsepia = stylebox_sepia:Sepia\n",
        {"stylebox_sepia.py": ""},
    )
    monkeypatch.syspath_prepend(str(site))
    registry = discover()
    with pytest.raises(ConfigError, match=r"installed: .*gatys.*\); did you mean gatys\?$"):
        registry.get("gatis")
    with pytest.raises(ConfigError) as refused:
        registry.get("sepia")
    assert str(refused.value).endswith(
        "; an entry point 'sepia' is registered by stylebox-sepia in the group "
        "'stylebox.plugin', not 'stylebox.plugins': fix the group's name in its "
        "pyproject.toml and reinstall it"
    )
    with pytest.raises(ConfigError, match=r"\(installed: [^)]*\)$"):
        registry.get("zzzz")  # nothing close: no hint
    # `stylebox plugins` did not mention it at all.
    env = {**os.environ, "PYTHONPATH": str(site)}
    listing = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "plugins"],
        capture_output=True, text=True, timeout=120, env=env,
    ).stdout  # fmt: skip
    assert (  # (as a line or wrapped, where COLUMNS is set)
        "not loaded: an entry point 'sepia' is registered by stylebox-sepia in the group "
        "'stylebox.plugin', not 'stylebox.plugins'"
    ) in " ".join(listing.split())


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


def test_a_plugin_without_a_version_of_its_own_has_its_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "from stylebox.plugins.api import Plugin, PluginParams\n"
        "class Unversioned(Plugin):\n"
        "    name = 'unversioned'\n"
        "    version = ''\n"
        "    Params = PluginParams\n"
        "    def process(self, image, job):\n"
        "        return image\n"
    )
    site = installed_site(tmp_path, "unversioned",
                          "[stylebox.plugins]\nunversioned = unversioned:Unversioned\n",
                          {"unversioned.py": source})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    assert discover().plugins["unversioned"].version == "1.0"  # its METADATA's


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


# -- one name, two packages ------------------------------------------------------------------


@pytest.fixture
def clashing_modules() -> Iterator[None]:
    yield
    forget_modules()


def test_a_name_two_packages_register_is_loaded_from_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clashing_modules: None
) -> None:
    # The last one found won, silently: which pencil an inbox ran hung on sys.path's order.
    for site in rival_pencil_sites(tmp_path):
        monkeypatch.syspath_prepend(str(site))
    registry = discover()
    assert "pencil" not in registry.plugins and "gatys" in registry.plugins
    failure = registry.failures["pencil"]
    assert (failure.source, failure.reason) == (BOTH_PENCILS, PENCIL_CLASH)
    assert not {"stylebox_pencil", "pencil2"} & set(sys.modules)  # neither even imported
    with pytest.raises(ConfigError) as refused:
        registry.get("pencil")
    assert str(refused.value) == f"plugin 'pencil' ({BOTH_PENCILS}) failed to load: {PENCIL_CLASH}"
    # Its inboxes are disabled with that line, as a broken plugin's are: not a typo.
    data = {"inbox": [{"name": "a", "path": "in", "outbox": "out", "plugin": "pencil"}]}
    assert parse_config(data, registry=registry).unavailable[("inbox", "a")] == str(refused.value)


def test_one_target_registered_by_two_packages_is_no_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clashing_modules: None
) -> None:
    # A package renamed, its old metadata left behind: both name the same class.
    pencil = rival_pencil_sites(tmp_path)[0]
    old = installed_site(
        tmp_path, "old-pencil", "[stylebox.plugins]\npencil = stylebox_pencil:Pencil\n", {}
    )
    for site in (pencil, old):
        monkeypatch.syspath_prepend(str(site))
    registry = discover()
    assert "pencil" in registry.plugins and "pencil" not in registry.failures


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_package_cannot_take_a_builtin_plugins_name(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
    clashing_modules: None,
) -> None:
    # Found after stylebox on sys.path, the rogue gatys replaced the built-in unsaid.
    site = str(rogue_gatys_site(tmp_path))
    if where == "before":
        monkeypatch.syspath_prepend(site)
    else:
        monkeypatch.setattr(sys, "path", [*sys.path, site])
    with caplog.at_level(logging.WARNING, logger="stylebox.plugins"):
        registry = discover()
    assert registry.get("gatys") is GatysPlugin
    assert "rogue_gatys" not in sys.modules
    assert [record.getMessage() for record in caplog.records] == [ROGUE_IGNORED]
    assert [(f.name, f.source) for f in registry.ignored] == [
        ("gatys", "rogue_gatys:RogueGatys from rogue-gatys 1.0")
    ]


def test_clashing_names_are_said_by_plugins_and_config_check(tmp_path: Path) -> None:
    sites = [*rival_pencil_sites(tmp_path), rogue_gatys_site(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, sites)), "COLUMNS": "400"}

    def stylebox(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "stylebox.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    listing = stylebox("plugins")
    assert listing.returncode == 0, listing.stderr
    assert f"pencil failed to load ({BOTH_PENCILS}): {PENCIL_CLASH}" in listing.stdout
    assert ROGUE_IGNORED in listing.stderr
    # Said in the listing too, not only in a log line on stderr.
    said = "gatys of rogue_gatys:RogueGatys from rogue-gatys 1.0 is ignored: 'gatys' is the "
    assert said in listing.stdout
    listed = json.loads(stylebox("plugins", "--json").stdout)
    assert [(i["name"], i["source"]) for i in listed["ignored"]] == [
        ("gatys", "rogue_gatys:RogueGatys from rogue-gatys 1.0")
    ]
    config = tmp_path / "pencil.toml"
    config.write_text('[[inbox]]\nname = "a"\npath = "in"\noutbox = "out"\nplugin = "pencil"\n')
    check = stylebox("config", "check", str(config))
    assert check.returncode == 1
    assert f"[[inbox]] a is disabled: plugin 'pencil' ({BOTH_PENCILS})" in check.stderr
